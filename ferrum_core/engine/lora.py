"""`LoRARequest`: a PEFT adapter chosen per request, carried as executor metadata.

The engine does no LoRA math: it tags every forward of the request with the
reference's metadata keys (``ferrum_lora_adapter`` + ``ferrum_lora_path``) and
the backend applies the adapter, so one batch may mix several adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ferrum_core.errors import InvalidInputError
from ferrum_core.llm.metadata import LORA_ADAPTER_KEY, LORA_PATH_KEY

__all__ = ["LoRARequest"]


@dataclass(frozen=True, slots=True)
class LoRARequest:
    """``name`` identifies the adapter (requests sharing it share its weights)."""

    name: str
    path: str | Path

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError("LoRARequest needs a non-empty adapter name")
        path = Path(self.path)
        if not (path / "adapter_config.json").is_file():
            raise InvalidInputError(
                f"LoRA adapter {self.name!r}: {path} is not a PEFT adapter directory"
                " (no adapter_config.json)"
            )
        object.__setattr__(self, "path", path.resolve())

    def metadata(self) -> MappingProxyType[str, Any]:
        return MappingProxyType({LORA_ADAPTER_KEY: self.name, LORA_PATH_KEY: str(self.path)})
