"""Llama-family model configuration from a Hugging Face ``config.json``.

FIELDS ARE FIXED (backends code against them). Parsing lives in
:mod:`ferrum_core.models.config_parse`; this module only holds the records and
the file entry points.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ferrum_core.errors import ConfigError
from ferrum_core.models.config_parse import parse_config
from ferrum_core.models.config_rope import RopeScaling

__all__ = ["RopeScaling", "ModelConfig", "int_tuple", "read_json_object"]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model_type: str  # "llama", "mistral", "qwen2", "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # bias on q/k/v projections (Qwen2, Llama attention_bias)
    o_bias: bool  # bias on o_proj (Llama attention_bias; not Qwen2)
    mlp_bias: bool
    qk_norm: bool  # per-head RMSNorm on q and k (Qwen3)
    sliding_window: int | None
    hidden_act: str
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    torch_dtype: str | None
    max_model_len: int  # == max_position_embeddings unless overridden

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, max_model_len: int | None = None) -> ModelConfig:
        """Parse a ``config.json`` object; unknown keys are ignored.

        Raises :class:`ConfigError` naming the key when a required key is
        missing, mistyped or contradicts another one.
        """
        return parse_config(cls, data, max_model_len=max_model_len)

    @classmethod
    def from_file(
        cls, path: str | Path, *, max_model_len: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> ModelConfig:
        """Parse one ``config.json`` file (``data``: its object, already read)."""
        file = Path(path)
        if data is None:
            data = read_json_object(file)
        try:
            return cls.from_dict(data, max_model_len=max_model_len)
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from None

    @classmethod
    def from_dir(
        cls, path: str | Path, *, max_model_len: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> ModelConfig:
        """Parse ``config.json`` of a model directory (``data``: its object, already read).

        EOS ids listed in ``generation_config.json`` are appended to the ones of
        ``config.json``: generation stops on either (as ``transformers`` does).
        """
        directory = Path(path)
        config = cls.from_file(directory / "config.json", max_model_len=max_model_len, data=data)
        gen_file = directory / "generation_config.json"
        if not gen_file.is_file():
            return config
        extra = int_tuple(read_json_object(gen_file).get("eos_token_id"))
        merged = tuple(dict.fromkeys(config.eos_token_ids + extra))
        return replace(config, eos_token_ids=merged)


def int_tuple(value: Any) -> tuple[int, ...]:
    """The ints of a JSON value that is an int or a list (bools and the rest dropped)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    return ()


def read_json_object(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``; any failure is a :class:`ConfigError` naming the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
