"""Small JSON side files of a model or adapter that are the wrong shape: typed errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferrum_core.errors import ConfigError, ModelLoadError
from ferrum_core.models.generation import GenerationDefaults


@pytest.mark.parametrize("data", [None, [], "x", 3])
def test_generation_config_must_be_an_object(data: object) -> None:
    with pytest.raises(ConfigError, match="generation_config must be a JSON object"):
        GenerationDefaults.from_dict(data)  # type: ignore[arg-type]


@pytest.mark.parametrize(("config", "message"), [
    ("[1, 2]", "must be a JSON object"),
    ('{"r": "eight"}', "must be numbers"),
    ('{"r": 0}', "must be positive"),
    ('{"lora_alpha": null}', "must be numbers"),
])  # fmt: skip
def test_peft_adapter_config_shape(tmp_path: Path, config: str, message: str) -> None:
    torch = pytest.importorskip("torch")
    from ferrum_cuda.lora import load_peft_adapter

    (tmp_path / "adapter_config.json").write_text(config)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=message):
        # the config is checked before the model's shapes are needed
        load_peft_adapter("bad", tmp_path, None, torch.float32, torch.device("cpu"))  # type: ignore[arg-type]
