"""Backends declare the model families they run; the core hands unknown ones through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ferrum_core.backends import get_registry
from ferrum_core.errors import ConfigError, UnsupportedError
from ferrum_core.models import load_model
from tests import transformers_backend
from tests.tiny_models import build_tiny_gpt2, build_tiny_model

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture
def families_backend() -> Iterator[str]:
    registry = get_registry()
    record = registry.add(transformers_backend.descriptor())
    try:
        yield record.name
    finally:
        registry.records.remove(record)


def test_known_families_only_by_default(gpt2_dir: Path) -> None:
    with pytest.raises(UnsupportedError, match=r"'gpt2'.*supported: llama, mistral, qwen2, qwen3"):
        load_model(gpt2_dir)


def test_unknown_family_handed_through(gpt2_dir: Path) -> None:
    loaded = load_model(gpt2_dir, model_types=("gpt2",))
    with loaded.weights:
        assert loaded.config is None
        assert loaded.model_type == "gpt2"
        assert loaded.raw_config["n_embd"] == 32
        assert loaded.weights.get("transformer.wte.weight").shape == (256, 32)
        assert loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], add_generation_prompt=True
        ).endswith("<|im_start|>assistant\n")
        with pytest.raises(UnsupportedError, match="no core ModelConfig"):
            _ = loaded.known_config


def test_any_family_is_none(gpt2_dir: Path, tmp_path: Path) -> None:
    assert load_model(gpt2_dir, model_types=None).config is None
    llama = load_model(build_tiny_model(tmp_path, "llama"), model_types=None)
    assert llama.config is not None and llama.config.model_type == "llama"


def test_config_without_model_type_is_a_config_error(tmp_path: Path, gpt2_dir: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"n_embd": 4}')
    with pytest.raises(ConfigError, match=r"config\.json.*model_type"):
        load_model(broken, model_types=None)


def test_backend_refuses_a_family_it_does_not_declare(gpt2_dir: Path) -> None:
    from ferrum_core.engine import LLM

    with pytest.raises(UnsupportedError) as err:
        LLM(str(gpt2_dir), backend="example")
    message = str(err.value)
    assert "'gpt2'" in message and "'example'" in message and "llama" in message
    assert "\n" not in message


def test_cli_names_family_and_backend(gpt2_dir: Path) -> None:
    from click.testing import CliRunner

    from ferrum_core.cli.main import cli

    result = CliRunner().invoke(cli, ["generate", "-m", str(gpt2_dir), "-b", "torch", "hi"])
    assert result.exit_code == 1
    assert "'gpt2'" in result.output and "'torch'" in result.output
    assert "Traceback" not in result.output


def test_backend_that_accepts_the_family_runs_it(gpt2_dir: Path, families_backend: str) -> None:
    import torch
    import transformers

    from ferrum_core.engine import LLM, SamplingParams

    prompt = [5, 17, 42, 9]
    with LLM(str(gpt2_dir), backend=families_backend) as llm:
        out = llm.generate([{"prompt_token_ids": prompt}],
                           SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True),
                           use_tqdm=False)[0]
    oracle = transformers.AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(np.argmax(oracle(torch.tensor([ids])).logits[0, -1].numpy())))
    assert list(out.outputs[0].token_ids) == ids[len(prompt):]


def test_instance_capabilities_name_the_loaded_family(gpt2_dir: Path,
                                                      families_backend: str) -> None:
    from ferrum_core.backends import create_executor
    from ferrum_core.protocol import ExecutorConfig

    executor = create_executor(ExecutorConfig(model_path=str(gpt2_dir)), families_backend)
    try:
        assert executor.capabilities().supported_model_types == ("gpt2",)
        assert executor.info().model_type == "gpt2"
    finally:
        executor.shutdown()
