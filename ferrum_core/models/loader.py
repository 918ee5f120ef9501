"""``load_model``: a model directory (or GGUF file, or nothing) to a :class:`LoadedModel`."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferrum_core.errors import ModelLoadError, UnsupportedError
from ferrum_core.models.config import ModelConfig, int_tuple, read_json_object
from ferrum_core.models.config_parse import KNOWN_MODEL_TYPES, raw_model_type
from ferrum_core.models.default_model import converted_gguf_dir, default_gguf_path
from ferrum_core.models.generation import GenerationDefaults
from ferrum_core.models.hub import hub_snapshot, looks_like_hub_id
from ferrum_core.models.mlx_quant import MlxQuantization
from ferrum_core.models.tokenizer import Tokenizer
from ferrum_core.models.weights import WeightSource

__all__ = ["LoadedModel", "load_model", "resolve_model_dir", "check_model_type"]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One model, ready for a backend.

    ``config`` is the parsed :class:`ModelConfig` for the families the core
    knows (``KNOWN_MODEL_TYPES``) and ``None`` for a family it handed through
    to a backend that accepts it; ``raw_config`` is always the ``config.json``
    object and ``model_type`` its family. ``gguf`` is the GGUF file the
    directory was converted from (its blocks: ``weights.stored(name)``).
    """

    path: Path  # the Hugging Face style directory
    config: ModelConfig | None
    weights: WeightSource
    tokenizer: Tokenizer
    generation: GenerationDefaults
    model_type: str = ""
    raw_config: dict[str, Any] = field(default_factory=dict)
    gguf: Path | None = None

    @property
    def known_config(self) -> ModelConfig:
        """``config``, or a typed error for a family only a backend understands."""
        if self.config is None:
            raise UnsupportedError(
                f"model type {self.model_type!r} has no core ModelConfig "
                f"(the core parses {', '.join(KNOWN_MODEL_TYPES)})"
            )
        return self.config


def _source(path: str | Path | None) -> tuple[Path, Path | None]:
    """``(Hugging Face directory, GGUF it came from or None)``."""
    if path is None:
        gguf = default_gguf_path()
        return converted_gguf_dir(gguf), gguf.resolve()
    candidate = Path(path).expanduser()
    if candidate.is_file():
        if candidate.suffix.lower() == ".gguf":
            return converted_gguf_dir(candidate), candidate.resolve()
        raise ModelLoadError(f"{candidate}: expected a model directory or a .gguf file")
    if candidate.is_dir():
        if (candidate / "config.json").is_file():
            return candidate, None
        ggufs = sorted(candidate.glob("*.gguf"))
        if len(ggufs) == 1:
            return converted_gguf_dir(ggufs[0]), ggufs[0].resolve()
        detail = f" and {len(ggufs)} .gguf files (pass one of them)" if ggufs else ""
        raise ModelLoadError(f"{candidate}: no config.json{detail}")
    if looks_like_hub_id(str(path)):
        return _source(hub_snapshot(str(path)))
    raise ModelLoadError(
        f"model path {candidate} does not exist (Ferrum loads local model directories, "
        ".gguf files and Hugging Face Hub ids such as Org/Name)"
    )


def resolve_model_dir(path: str | Path | None = None) -> Path:
    """The Hugging Face style directory for ``path``.

    ``None`` is the default model; a ``.gguf`` file (or a directory holding
    exactly one and no ``config.json``) is converted once into ``$FERRUM_HOME``;
    a directory with a ``config.json`` is used as is. A name that is no local
    path but looks like ``Org/Name[@revision]`` is a Hugging Face Hub id
    (:mod:`ferrum_core.models.hub`): a local path always wins.
    """
    return _source(path)[0]


def check_model_type(
    model_type: str, accepted: Collection[str] | None, runner: str = "this backend"
) -> None:
    """A typed one-line error when ``runner`` does not accept the ``model_type`` family."""
    if accepted is not None and model_type not in accepted:
        listed = ", ".join(sorted(accepted)) or "none"
        raise UnsupportedError(
            f"model type {model_type!r} is not supported by {runner} (supported: {listed})"
        )


def load_model(
    path: str | Path | None = None,
    *,
    max_model_len: int | None = None,
    model_types: Collection[str] | None = KNOWN_MODEL_TYPES,
) -> LoadedModel:
    """Config, validated weights, tokenizer and generation defaults of one model.

    ``model_types`` are the families the caller can run (``None``: any). A
    family outside it is an :class:`UnsupportedError`; a family inside it that
    the core does not parse is handed through with ``config=None`` (the raw
    ``config.json``, the weight source and the tokenizer are still there).
    """
    directory, gguf = _source(path)
    raw = read_json_object(directory / "config.json")
    try:
        model_type = raw_model_type(raw)
    except ModelLoadError as exc:
        raise type(exc)(f"{directory / 'config.json'}: {exc}") from None
    check_model_type(model_type, model_types)
    config: ModelConfig | None = None
    eos = tuple(i for i in int_tuple(raw.get("eos_token_id")) if i >= 0)
    if model_type in KNOWN_MODEL_TYPES:
        config = ModelConfig.from_dir(directory, max_model_len=max_model_len, data=raw)
        eos = config.eos_token_ids
    weights = WeightSource.from_dir(directory, gguf=gguf,
                                    mlx_quant=MlxQuantization.from_config(raw))
    try:
        if config is not None:
            weights.validate(config)
        tokenizer = Tokenizer.from_dir(directory, eos_token_ids=eos)
        generation = GenerationDefaults.from_dir(directory, eos_token_ids=tokenizer.eos_token_ids)
    except BaseException:
        weights.close()
        raise
    return LoadedModel(directory, config, weights, tokenizer, generation,
                       model_type=model_type, raw_config=raw, gguf=gguf)

