"""Turn a ``config.json`` object into a :class:`~ferrum_core.models.config.ModelConfig`.

Defaults follow the ``transformers`` config class of each family, so a config
that ``transformers`` accepts means the same model here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeVar

from ferrum_core.errors import ConfigError
from ferrum_core.models.config_rope import parse_rope

if TYPE_CHECKING:
    from ferrum_core.models.config import ModelConfig

__all__ = [
    "KNOWN_MODEL_TYPES",
    "SUPPORTED_MODEL_TYPES",
    "parse_config",
    "raw_model_type",
    "get_int",
    "get_float",
]

KNOWN_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""Families :class:`ModelConfig` parses; backends may accept more (``supported_model_types``)."""
SUPPORTED_MODEL_TYPES = KNOWN_MODEL_TYPES  # the name before API version 1 settled

_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 131072, "qwen2": 32768, "qwen3": 32768}
_MISSING: Any = object()
C = TypeVar("C", bound="ModelConfig")


def get_int(data: dict[str, Any], key: str, default: Any = _MISSING, *, minimum: int = 1) -> Any:
    """``data[key]`` as an int >= ``minimum``; ``default`` when absent or null."""
    value = data.get(key)
    if value is None:
        if default is _MISSING:
            raise ConfigError(f"missing required key {key!r}")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"key {key!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"key {key!r} must be >= {minimum}, got {value}")
    return value


def get_float(data: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    value = data.get(key)
    if value is None:
        if default is _MISSING:
            raise ConfigError(f"missing required key {key!r}")
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"key {key!r} must be a finite number, got {value!r}")
    return float(value)


def _get_bool(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"key {key!r} must be true or false, got {value!r}")
    return value


def _token_ids(data: dict[str, Any], key: str) -> tuple[int, ...]:
    value = data.get(key)
    items = value if isinstance(value, list) else [] if value is None else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ConfigError(f"key {key!r} must be a token id or a list of them, got {value!r}")
    return tuple(dict.fromkeys(items))


def raw_model_type(data: dict[str, Any]) -> str:
    """``model_type`` of a ``config.json`` object (or the one its ``architectures`` imply)."""
    model_type = data.get("model_type")
    if model_type is None:
        archs = data.get("architectures") or []
        if not isinstance(archs, list):
            raise ConfigError(f"key 'architectures' must be a list of names, got {archs!r}")
        known = [_ARCHITECTURES[a] for a in archs if isinstance(a, str) and a in _ARCHITECTURES]
        if not known:
            raise ConfigError("missing required key 'model_type'")
        model_type = known[0]
    if not isinstance(model_type, str) or not model_type:
        raise ConfigError(f"key 'model_type' must be a non-empty string, got {model_type!r}")
    return model_type


def _model_type(data: dict[str, Any]) -> str:
    model_type = raw_model_type(data)
    if model_type not in KNOWN_MODEL_TYPES:
        raise ConfigError(
            f"key 'model_type' is {model_type!r}; supported: {', '.join(KNOWN_MODEL_TYPES)}"
        )
    return str(model_type)


def _head_dim(data: dict[str, Any], model_type: str, hidden: int, heads: int) -> int:
    given = get_int(data, "head_dim", None)
    if given is None and model_type == "qwen3":
        given = 128  # Qwen3Config's default, not hidden_size // heads
    if given is None:
        if hidden % heads:
            raise ConfigError(
                f"key 'hidden_size' ({hidden}) is not divisible by 'num_attention_heads' "
                f"({heads}) and no 'head_dim' is given"
            )
        given = hidden // heads
    if given % 2:
        raise ConfigError(f"key 'head_dim' must be even for rotary embeddings, got {given}")
    return int(given)


def _layer_types(data: dict[str, Any], layers: int, default_sliding: list[bool]) -> list[bool]:
    """Per layer: does it use sliding-window attention?"""
    types = data.get("layer_types")
    if types is None:
        return default_sliding
    if not isinstance(types, list) or len(types) != layers:
        raise ConfigError(
            f"key 'layer_types' must list one type per layer ({layers}), got {types!r}"
        )
    return [t == "sliding_attention" for t in types]


def _sliding_window(data: dict[str, Any], model_type: str, layers: int) -> int | None:
    if model_type == "llama":
        return None
    if model_type in ("qwen2", "qwen3") and not _get_bool(data, "use_sliding_window", False):
        return None  # Qwen configs carry a window they do not use
    window: int | None = get_int(data, "sliding_window", None)
    if window is None:
        if model_type != "mistral":
            raise ConfigError("key 'use_sliding_window' is true but 'sliding_window' is not set")
        return None
    if model_type == "mistral":
        sliding = _layer_types(data, layers, [True] * layers)
    else:
        first = get_int(data, "max_window_layers", 28, minimum=0)
        sliding = _layer_types(data, layers, [i >= first for i in range(layers)])
    if not any(sliding):
        return None
    if not all(sliding):
        raise ConfigError(
            "keys 'layer_types' / 'max_window_layers' mix sliding-window and full-attention "
            "layers, which is not supported"
        )
    return window


def parse_config(cls: type[C], data: dict[str, Any], *, max_model_len: int | None) -> C:
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
    model_type = _model_type(data)
    vocab = get_int(data, "vocab_size")
    hidden = get_int(data, "hidden_size")
    layers = get_int(data, "num_hidden_layers")
    heads = get_int(data, "num_attention_heads")
    kv_heads = get_int(data, "num_key_value_heads", heads)
    if kv_heads > heads or heads % kv_heads:
        raise ConfigError(
            f"key 'num_attention_heads' ({heads}) must be a multiple of "
            f"'num_key_value_heads' ({kv_heads})"
        )
    head_dim = _head_dim(data, model_type, hidden, heads)
    max_pos = get_int(data, "max_position_embeddings", _DEFAULT_MAX_POSITIONS[model_type])
    theta, scaling = parse_rope(data)
    attention_bias = _get_bool(data, "attention_bias", False)
    qkv_bias = {"qwen2": True, "mistral": False}.get(model_type, attention_bias)
    o_bias = attention_bias if model_type in ("llama", "qwen3") else False
    if max_model_len is None:
        max_model_len = max_pos
    elif isinstance(max_model_len, bool) or not isinstance(max_model_len, int):
        raise ConfigError(f"max_model_len must be an integer, got {max_model_len!r}")
    elif not 0 < max_model_len <= max_pos:
        raise ConfigError(
            f"max_model_len {max_model_len} must be between 1 and the model's "
            f"'max_position_embeddings' ({max_pos})"
        )
    dtype = data.get("torch_dtype", data.get("dtype"))
    bos = _token_ids(data, "bos_token_id")
    pad = _token_ids(data, "pad_token_id")
    hidden_act = data.get("hidden_act", "silu")
    if not isinstance(hidden_act, str):
        raise ConfigError(f"key 'hidden_act' must be a string, got {hidden_act!r}")
    return cls(
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=get_int(data, "intermediate_size"),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=get_float(data, "rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=max_pos,
        tie_word_embeddings=_get_bool(data, "tie_word_embeddings", False),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=_get_bool(data, "mlp_bias", False) if model_type == "llama" else False,
        qk_norm=model_type == "qwen3",
        sliding_window=_sliding_window(data, model_type, layers),
        hidden_act=hidden_act,
        bos_token_id=bos[0] if bos else None,
        eos_token_ids=_token_ids(data, "eos_token_id"),
        pad_token_id=pad[0] if pad else None,
        torch_dtype=dtype if isinstance(dtype, str) else None,
        max_model_len=max_model_len,
    )
