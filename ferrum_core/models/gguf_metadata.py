"""Hugging Face ``config.json`` / ``generation_config.json`` /
``tokenizer_config.json`` contents from GGUF metadata (llama architecture)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from ferrum_core.errors import ModelLoadError

__all__ = ["read_metadata", "hf_config", "generation_config", "tokenizer_config"]


def read_metadata(reader: Any) -> dict[str, Any]:
    """All key/value fields of a ``gguf.GGUFReader`` as Python values."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = field.contents()
    return out


def _short(value: float) -> float:
    """GGUF stores float32; use the shortest decimal that rounds to it (1e-05, not 9.99e-06)."""
    return float(str(np.float32(value)))


def _need(meta: dict[str, Any], key: str) -> Any:
    if meta.get(key) is None:
        raise ModelLoadError(f"GGUF file lacks required metadata key {key!r}")
    return meta[key]


def hf_config(
    meta: dict[str, Any], tensor_names: Collection[str], vocab_rows: int
) -> dict[str, Any]:
    """``config.json`` for ``LlamaForCausalLM`` (``model_type`` llama)."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(
            f"GGUF architecture {arch!r} (key 'general.architecture') is not supported; "
            "only 'llama' is"
        )
    if "rope_freqs.weight" in tensor_names:
        raise ModelLoadError(
            "GGUF file carries 'rope_freqs.weight' (Llama 3.1 rope scaling as a tensor), "
            "which cannot be expressed as a config; convert the original safetensors model instead"
        )
    hidden = int(_need(meta, "llama.embedding_length"))
    heads = int(_need(meta, "llama.attention.head_count"))
    kv_heads = int(meta.get("llama.attention.head_count_kv") or heads)
    head_dim = int(meta.get("llama.attention.key_length") or hidden // heads)
    rotary = int(meta.get("llama.rope.dimension_count") or head_dim)
    if rotary != head_dim:
        raise ModelLoadError(
            f"GGUF rope.dimension_count {rotary} differs from head_dim {head_dim}: "
            "partial rotary embeddings are not supported"
        )
    vocab = int(meta.get("llama.vocab_size") or vocab_rows)
    if vocab != vocab_rows:
        raise ModelLoadError(f"GGUF vocab_size {vocab} != token_embd.weight rows {vocab_rows}")
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(_need(meta, "llama.feed_forward_length")),
        "num_hidden_layers": int(_need(meta, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(meta.get("llama.context_length") or 2048),
        "rms_norm_eps": _short(meta.get("llama.attention.layer_norm_rms_epsilon") or 1e-5),
        "rope_theta": _short(meta.get("llama.rope.freq_base") or 10000.0),
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": "float32",
    }
    scaling = meta.get("llama.rope.scaling.type")
    if scaling == "linear":
        factor = _short(_need(meta, "llama.rope.scaling.factor"))
        config["rope_scaling"] = {"rope_type": "linear", "factor": factor}
    elif scaling not in (None, "none"):
        raise ModelLoadError(f"GGUF rope scaling {scaling!r} is not supported")
    for name in ("bos", "eos", "padding"):
        token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            config[f"{'pad' if name == 'padding' else name}_token_id"] = int(token_id)
    return config


def _eos_ids(meta: dict[str, Any]) -> list[int]:
    keys = ("eos", "eot", "eom")  # end of sequence / turn / message all stop generation
    ids = [meta.get(f"tokenizer.ggml.{k}_token_id") for k in keys]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def generation_config(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("bos", "padding"):
        token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            out[f"{'pad' if name == 'padding' else name}_token_id"] = int(token_id)
    eos = _eos_ids(meta)
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    sampling = {
        "temp": "temperature",
        "top_p": "top_p",
        "top_k": "top_k",
        "penalty_repeat": "repetition_penalty",
    }
    for key, name in sampling.items():
        value = meta.get(f"general.sampling.{key}")
        if value is not None:
            out[name] = int(value) if name == "top_k" else _short(value)
            out["do_sample"] = True
    return out


def tokenizer_config(meta: dict[str, Any]) -> dict[str, Any]:
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    out: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    names = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}
    for name, key in names.items():
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and 0 <= int(token_id) < len(tokens):
            out[f"{name}_token"] = tokens[int(token_id)]
    out["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    out["add_eos_token"] = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    out["clean_up_tokenization_spaces"] = False
    context = meta.get("llama.context_length")
    if context is not None:
        out["model_max_length"] = int(context)
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        out["chat_template"] = template
    return out
