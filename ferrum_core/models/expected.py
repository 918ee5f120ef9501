"""Which tensors a checkpoint of a model config holds, with their shapes (Hugging Face
names): what :meth:`~ferrum_core.models.weights.WeightSource.validate` checks a
folder against and what a GGUF import must produce."""

from __future__ import annotations

from ferrum_core.models.config import ModelConfig

__all__ = ["expected_tensors"]


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of ``config`` must hold, with its shape (HF names)."""
    hidden, inter, head_dim = config.hidden_size, config.intermediate_size, config.head_dim
    q_rows = config.num_attention_heads * head_dim
    kv_rows = config.num_key_value_heads * head_dim
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, hidden)}
    for i in range(config.num_hidden_layers):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        out[f"model.layers.{i}.input_layernorm.weight"] = (hidden,)
        out[f"{attn}.q_proj.weight"] = (q_rows, hidden)
        out[f"{attn}.k_proj.weight"] = (kv_rows, hidden)
        out[f"{attn}.v_proj.weight"] = (kv_rows, hidden)
        out[f"{attn}.o_proj.weight"] = (hidden, q_rows)
        if config.qkv_bias:
            out[f"{attn}.q_proj.bias"] = (q_rows,)
            out[f"{attn}.k_proj.bias"] = (kv_rows,)
            out[f"{attn}.v_proj.bias"] = (kv_rows,)
        if config.o_bias:
            out[f"{attn}.o_proj.bias"] = (hidden,)
        if config.qk_norm:
            out[f"{attn}.q_norm.weight"] = (head_dim,)
            out[f"{attn}.k_norm.weight"] = (head_dim,)
        out[f"model.layers.{i}.post_attention_layernorm.weight"] = (hidden,)
        out[f"{mlp}.gate_proj.weight"] = (inter, hidden)
        out[f"{mlp}.up_proj.weight"] = (inter, hidden)
        out[f"{mlp}.down_proj.weight"] = (hidden, inter)
        if config.mlp_bias:
            out[f"{mlp}.gate_proj.bias"] = (inter,)
            out[f"{mlp}.up_proj.bias"] = (inter,)
            out[f"{mlp}.down_proj.bias"] = (hidden,)
    out["model.norm.weight"] = (hidden,)
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = (config.vocab_size, hidden)
    return out
