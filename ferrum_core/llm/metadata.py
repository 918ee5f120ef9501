"""Request metadata keys the executor understands, and the profiling switches."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferrum_core.errors import InvalidInputError
from ferrum_core.llm.decoder import ActiveLoraAdapter

__all__ = [
    "LORA_ADAPTER_KEY",
    "LORA_PATH_KEY",
    "REQUIRE_FULL_LOGITS_KEY",
    "active_lora_from_metadata",
    "requires_full_logits",
    "ProfileFlags",
]

LORA_ADAPTER_KEY = "ferrum_lora_adapter"
LORA_PATH_KEY = "ferrum_lora_path"
REQUIRE_FULL_LOGITS_KEY = "ferrum_require_full_logits"


def active_lora_from_metadata(metadata: Mapping[str, Any]) -> ActiveLoraAdapter | None:
    """The adapter named by the metadata; both keys or neither, else an error."""
    name = metadata.get(LORA_ADAPTER_KEY)
    path = metadata.get(LORA_PATH_KEY)
    if name is None and path is None:
        return None
    if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
        raise InvalidInputError(
            f"incomplete LoRA metadata: expected both {LORA_ADAPTER_KEY} and {LORA_PATH_KEY}"
            " as non-empty strings"
        )
    return ActiveLoraAdapter(name=name, path=Path(path))


def requires_full_logits(metadata: Mapping[str, Any]) -> bool:
    return metadata.get(REQUIRE_FULL_LOGITS_KEY) is True


@dataclass(frozen=True, slots=True)
class ProfileFlags:
    """Profiling switched on by the presence of the reference's environment variables."""

    batch_prefill: bool = False
    batch_decode: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProfileFlags:
        env = os.environ if environ is None else environ
        return cls(
            batch_prefill="FERRUM_BATCH_PREFILL_PROF" in env,
            batch_decode="FERRUM_BATCH_DECODE_PROF" in env,
        )

    @staticmethod
    def emit(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
