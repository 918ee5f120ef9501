"""The conformance suite against every in-tree backend available here, and the example backend.

On a CPU-only machine that is ferrum-cuda's ``torch`` backend and the example
third-party backend; ``cuda`` runs too where a GPU is present. Known gaps of a
backend live in its xfail file (``conformance/xfail/NAME.toml``), never here.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from ferrum_core.conformance import CHECKS_DIR

from ferrum_core.backends import BackendState, get_registry
from ferrum_core.cli.main import cli
from ferrum_core.errors import UnknownBackendError

pytest_plugins = ["pytester"]

BACKENDS = ("example", "torch", "cuda")
REQUIRED = {"example", "torch"}  # the test set-up installs both; only `cuda` needs a GPU


def _availability(name: str) -> str | None:
    """None when the backend can run here, else the reason it cannot."""
    try:
        record = get_registry().get(name)
    except UnknownBackendError as exc:
        return str(exc)
    if record.state != BackendState.AVAILABLE:
        return f"{name}: {record.state.value}: {record.reason}"
    return None


@pytest.mark.parametrize("backend", BACKENDS)
def test_suite_passes(backend: str) -> None:
    reason = _availability(backend)
    if reason is not None:
        if backend in REQUIRED:
            pytest.fail(f"{backend} must be available in the test environment: {reason}")
        pytest.skip(reason)
    result = CliRunner().invoke(cli, ["conformance", backend, "--json"])
    report = json.loads(result.stdout)
    failed = {c["id"]: c["reason"] for c in report["checks"] if c["outcome"] == "failed"}
    assert not failed, failed
    assert result.exit_code == 0, result.stderr[-2000:]
    assert report["backend"] == backend
    assert report["summary"]["failed"] == 0
    assert report["summary"]["passed"] >= 60
    assert report["dtype"] == "fp32" and report["tolerance"] == 2e-3
    passed = {c["id"] for c in report["checks"] if c["outcome"] == "passed"}
    for kind in ("multi_head", "multi_query", "grouped_query", "sliding_window"):
        assert f"attention.mechanism[{kind}]" in passed, "every in-tree backend declares it"
    ids = {c["id"] for c in report["checks"]}
    for group in ("protocol", "numerics", "batch", "unified", "verify", "truncate", "cache",
                  "status", "metrics", "concurrency", "errors", "capabilities", "attention",
                  "rollback"):
        assert any(cid.startswith(group + ".") for cid in ids), f"no {group}.* checks ran"


def test_cli_table_and_unknown_backend() -> None:
    result = CliRunner().invoke(cli, ["conformance", "example"])
    assert result.exit_code == 0, result.stderr[-2000:]
    assert "numerics.decode_logits[qwen3_qknorm]" in result.stdout
    assert "0 failed" in result.stdout
    missing = CliRunner().invoke(cli, ["conformance", "no-such-backend"])
    assert missing.exit_code == 1
    assert "unknown backend 'no-such-backend'" in missing.stderr


def test_plugin_is_inert_without_a_backend(pytester: pytest.Pytester) -> None:
    """The pytest11 plugin loads in every run: without --ferrum-backend it collects nothing."""
    result = pytester.runpytest_inprocess(str(CHECKS_DIR), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert "--ferrum-backend" in "\n".join(pytester.runpytest_inprocess("--help").outlines)


def test_backend_option_alone_runs_the_suite(pytester: pytest.Pytester) -> None:
    """``pytest --ferrum-backend NAME`` with no paths runs the suite, not the local tests."""
    pytester.makepyfile(test_local="def test_local():\n    raise AssertionError('collected')\n")
    report = pytester.path / "report.json"
    result = pytester.runpytest_inprocess(
        "--ferrum-backend", "example", "--ferrum-json", str(report), "-k", "protocol",
        "-p", "no:cacheprovider",
    )
    assert result.ret == pytest.ExitCode.OK, result.outlines[-20:]
    data = json.loads(report.read_text())
    assert data["summary"]["failed"] == 0
    assert data["summary"]["passed"] >= 5
    assert all(c["id"].startswith("protocol.") for c in data["checks"])
