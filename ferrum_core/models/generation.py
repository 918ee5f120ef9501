"""Generation defaults a model ships in ``generation_config.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferrum_core.errors import ConfigError
from ferrum_core.models.config import read_json_object

__all__ = ["GenerationDefaults"]


def _number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class GenerationDefaults:
    """Stop ids and the sampling settings the model's authors recommend.

    ``None`` means the file does not say. As in vLLM, sampling values are
    reported even when ``do_sample`` is false; the engine decides.
    """

    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None
    do_sample: bool | None = None

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, eos_token_ids: tuple[int, ...] = ()
    ) -> GenerationDefaults:
        """``eos_token_ids`` (from config.json and the tokenizer) come first."""
        if not isinstance(data, dict):
            raise ConfigError(f"generation_config must be a JSON object, got {type(data).__name__}")
        eos = data.get("eos_token_id")
        listed = eos if isinstance(eos, list) else [] if eos is None else [eos]
        own = [i for i in listed if isinstance(i, int) and not isinstance(i, bool)]
        do_sample = data.get("do_sample")
        return cls(
            eos_token_ids=tuple(dict.fromkeys([*eos_token_ids, *own])),
            bos_token_id=_int(data, "bos_token_id"),
            pad_token_id=_int(data, "pad_token_id"),
            temperature=_number(data, "temperature"),
            top_p=_number(data, "top_p"),
            top_k=_int(data, "top_k"),
            repetition_penalty=_number(data, "repetition_penalty"),
            max_new_tokens=_int(data, "max_new_tokens"),
            do_sample=do_sample if isinstance(do_sample, bool) else None,
        )

    @classmethod
    def from_dir(
        cls, path: str | Path, *, eos_token_ids: tuple[int, ...] = ()
    ) -> GenerationDefaults:
        file = Path(path) / "generation_config.json"
        data = read_json_object(file) if file.is_file() else {}
        return cls.from_dict(data, eos_token_ids=eos_token_ids)
