"""Loading a model for `LLM`: family check against the backend, dtype resolution."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ferrum_core.dtype_choice import AUTO, resolve_dtype, stored_dtype, stored_elements
from ferrum_core.engine.config import EngineConfig
from ferrum_core.errors import InvalidInputError
from ferrum_core.types import DataType

if TYPE_CHECKING:
    from ferrum_core.backends import BackendDescriptor
    from ferrum_core.models import LoadedModel

__all__ = ["load_for", "choose_dtype", "check_draft_tokenizer"]


def load_for(model: str | Path | None, descriptor: BackendDescriptor,
              max_model_len: int | None) -> LoadedModel:
    """Load ``model`` if the backend runs its family. The weights stay open for the
    factory (:func:`ferrum_core.backends.create_executor` with ``model=``), which
    owns them from then on."""
    from ferrum_core.models import load_model
    from ferrum_core.models.loader import check_model_type

    caps = descriptor.capabilities
    accepted = caps.supported_model_types if caps is not None else None
    loaded = load_model(model, max_model_len=max_model_len, model_types=None)
    try:
        check_model_type(loaded.model_type, accepted, f"backend {descriptor.name!r}")
    except BaseException:
        loaded.weights.close()
        raise
    return loaded


def choose_dtype(config: EngineConfig, loaded: LoadedModel,
                  descriptor: BackendDescriptor) -> DataType:
    caps = descriptor.capabilities
    supported = caps.supported_dtypes if caps is not None else (DataType.FP32,)
    if config.dtype == AUTO:
        return resolve_dtype(AUTO, stored_dtype(stored_elements(loaded)), supported)
    return DataType(config.dtype)


def check_draft_tokenizer(target_vocab: int, draft_vocab: int) -> None:
    if draft_vocab != target_vocab:
        raise InvalidInputError(
            f"speculative_model's tokenizer has {draft_vocab} tokens, the model's"
            f" {target_vocab}: draft and target must share a tokenizer"
        )
