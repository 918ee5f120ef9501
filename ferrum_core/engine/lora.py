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

from ferrum_core.errors import ConfigError, InvalidInputError
from ferrum_core.llm.metadata import LORA_ADAPTER_KEY, LORA_PATH_KEY
from ferrum_core.models.config import read_json_object

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
        _check_adapter(self.name, path)
        object.__setattr__(self, "path", path.resolve())

    def metadata(self) -> MappingProxyType[str, Any]:
        return MappingProxyType({LORA_ADAPTER_KEY: self.name, LORA_PATH_KEY: str(self.path)})


def _check_adapter(name: str, path: Path) -> None:
    """The adapter's files and metadata, checked when the request is made (not in the
    middle of a batch, where a failure would hit every request in flight)."""
    where = f"LoRA adapter {name!r}: {path}"
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise InvalidInputError(f"{where} is not a PEFT adapter directory (no adapter_config.json)")
    try:
        config = read_json_object(config_file)
    except ConfigError as exc:
        raise InvalidInputError(f"LoRA adapter {name!r}: {exc}") from None
    for key, kind in (("r", int), ("lora_alpha", int | float)):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)
                                  or value <= 0):
            raise InvalidInputError(
                f"{where}: adapter_config.json key {key!r} must be a positive number,"
                f" got {value!r}"
            )
