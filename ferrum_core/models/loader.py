"""``load_model``: a model directory (or GGUF file, or nothing) to a :class:`LoadedModel`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ferrum_core.errors import ModelLoadError
from ferrum_core.models.config import ModelConfig
from ferrum_core.models.default_model import converted_gguf_dir, default_model_dir
from ferrum_core.models.generation import GenerationDefaults
from ferrum_core.models.tokenizer import Tokenizer
from ferrum_core.models.weights import WeightSource

__all__ = ["LoadedModel", "load_model", "resolve_model_dir"]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    path: Path  # the Hugging Face style directory
    config: ModelConfig
    weights: WeightSource
    tokenizer: Tokenizer
    generation: GenerationDefaults


def resolve_model_dir(path: str | Path | None = None) -> Path:
    """The Hugging Face style directory for ``path``.

    ``None`` is the default model; a ``.gguf`` file (or a directory holding
    exactly one and no ``config.json``) is converted once into ``$FERRUM_HOME``;
    a directory with a ``config.json`` is used as is. Nothing is downloaded.
    """
    if path is None:
        return default_model_dir()
    candidate = Path(path).expanduser()
    if candidate.is_file():
        if candidate.suffix.lower() == ".gguf":
            return converted_gguf_dir(candidate)
        raise ModelLoadError(f"{candidate}: expected a model directory or a .gguf file")
    if candidate.is_dir():
        if (candidate / "config.json").is_file():
            return candidate
        ggufs = sorted(candidate.glob("*.gguf"))
        if len(ggufs) == 1:
            return converted_gguf_dir(ggufs[0])
        detail = f" and {len(ggufs)} .gguf files (pass one of them)" if ggufs else ""
        raise ModelLoadError(f"{candidate}: no config.json{detail}")
    raise ModelLoadError(
        f"model path {candidate} does not exist (Ferrum loads local model directories "
        "and .gguf files; it downloads nothing)"
    )


def load_model(path: str | Path | None = None, *, max_model_len: int | None = None) -> LoadedModel:
    """Config, validated weights, tokenizer and generation defaults of one model."""
    directory = resolve_model_dir(path)
    config = ModelConfig.from_dir(directory, max_model_len=max_model_len)
    weights = WeightSource.from_dir(directory)
    try:
        weights.validate(config)
        tokenizer = Tokenizer.from_dir(directory, eos_token_ids=config.eos_token_ids)
        generation = GenerationDefaults.from_dir(directory, eos_token_ids=tokenizer.eos_token_ids)
    except BaseException:
        weights.close()
        raise
    return LoadedModel(directory, config, weights, tokenizer, generation)
