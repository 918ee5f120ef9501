"""Run settings reach every executor; a golden the factory refuses up front is a skip.

The test backend is the example backend's numpy model behind a factory that reads
the executor option ``tensor_parallel`` and, like a real tensor-parallel backend,
refuses with ``UnsupportedError`` a model whose heads do not split that many ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from ferrum_core.cli.main import cli
from ferrum_core.errors import InvalidInputError, UnsupportedError
from ferrum_core.protocol import ExecutorConfig, ModelExecutor
from tests.test_conformance_support import LiarFactory, registered, run_report

pytest_plugins = ["pytester"]

ferrum_example_backend = pytest.importorskip("ferrum_example_backend")
from ferrum_example_backend.model import NumpyLlama  # noqa: E402


class SplitFactory(LiarFactory):
    """Records every config it builds from; refuses heads that do not split."""

    def __init__(self) -> None:
        super().__init__(NumpyLlama)
        self.seen: list[ExecutorConfig] = []

    def validate_config(self, config: ExecutorConfig) -> None:
        ways = config.executor_options.get("tensor_parallel", 1)
        if not isinstance(ways, int) or isinstance(ways, bool) or ways < 1:
            raise InvalidInputError(f"executor option tensor_parallel={ways!r}: expected an int")

    def create_executor(self, config: ExecutorConfig) -> ModelExecutor:
        from ferrum_core.models import load_model

        self.seen.append(config)
        ways = config.executor_options.get("tensor_parallel", 1)
        model = load_model(config.model_path).known_config
        heads, kv_heads = model.num_attention_heads, model.num_key_value_heads
        if heads % ways or kv_heads % ways:
            if config.executor_options.get("crash"):
                raise RuntimeError("index out of range")  # not a refusal: a failure
            raise UnsupportedError(
                f"{ways}-way tensor parallelism cannot split {heads} heads / {kv_heads} KV heads"
            )
        return super().create_executor(config)


@pytest.fixture
def split() -> Iterator[SplitFactory]:
    factory = SplitFactory()
    with registered({"split": (factory, {})}):
        yield factory


def _checks(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {check["id"]: check for check in report["checks"]}


def test_refused_golden_skips_with_the_reason(
    pytester: pytest.Pytester, split: SplitFactory
) -> None:
    report = run_report(pytester, "split", "--ferrum-option", "tensor_parallel=2")
    checks = _checks(report)
    assert report["summary"]["failed"] == 0, [c for c in report["checks"]
                                              if c["outcome"] == "failed"]
    assert report["executor_options"] == {"tensor_parallel": 2}
    for cid in ("numerics.decode_logits[llama_mqa_bias]", "attention.mechanism[multi_query]"):
        assert checks[cid]["outcome"] == "skipped", checks[cid]
        assert "refuses golden model llama_mqa_bias" in checks[cid]["reason"]
        assert "cannot split 3 heads" in checks[cid]["reason"]
    assert checks["numerics.decode_logits[llama_gqa]"]["outcome"] == "passed"
    assert checks["capabilities.dtype[fp32]"]["outcome"] == "passed"  # the others still count
    # every executor the suite built (behavioural, golden, spare ones) got the option
    assert len(split.seen) > 5
    assert all(c.executor_options.get("tensor_parallel") == 2 for c in split.seen)


def test_any_other_factory_exception_stays_a_failure(
    pytester: pytest.Pytester, split: SplitFactory
) -> None:
    report = run_report(pytester, "split", "--ferrum-option", "tensor_parallel=2",
                        "--ferrum-option", "crash=true", "-k", "numerics")
    checks = _checks(report)
    failed = checks["numerics.decode_logits[llama_mqa_bias]"]
    assert failed["outcome"] == "failed" and "index out of range" in failed["reason"]


@pytest.mark.usefixtures("split")
def test_option_refused_by_validate_config_is_exit_1() -> None:
    result = CliRunner().invoke(cli, ["conformance", "split", "--option", "tensor_parallel=two"])
    assert result.exit_code == 1, result.output
    assert "tensor_parallel='two': expected an int" in result.stderr
    assert "Traceback" not in result.output
