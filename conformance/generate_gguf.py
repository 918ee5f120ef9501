"""Golden GGUF files: one golden model quantised the way llama.cpp stores it.

Used by :mod:`ferrum_core.conformance.generate_golden` (maintainers only; needs gguf, torch
and transformers). Every 2-D weight is quantised to one GGUF type (``Q8_0`` or
``Q4_1``), norms stay F32, and llama.cpp's q/k row permutation is applied as
``convert_hf_to_gguf.py`` does. The expected logits come from ``transformers``
running the SAME weights dequantised (``gguf.quants``' round trip, in Hugging
Face layout), so a backend that computes on the stored blocks is judged
against exactly what it was given, within its dtype's tolerance. The tokenizer
is a minimal GPT-2 byte-level vocabulary of the model's size (the suite feeds
token ids, never text).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["generate_gguf", "gguf_vocab", "round_trip"]

_SPECIALS = ["<pad>", "<s>", "</s>"]
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

Logits = Callable[[Any, list[int]], tuple[np.ndarray, np.ndarray]]


def gguf_vocab(size: int) -> tuple[list[str], list[int], list[str]]:
    """``(tokens, token types, merges)``: 3 specials, byte symbols, one merge; ``size`` entries."""
    from ferrum_core.models.gguf_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    merge = ("t", "h")
    byte_count = size - len(_SPECIALS) - 1
    tokens = list(_SPECIALS) + [spelling[b] for b in range(0x20, 0x20 + byte_count)]
    tokens.append("".join(merge))
    types = [3] * len(_SPECIALS) + [1] * (len(tokens) - len(_SPECIALS))
    assert len(tokens) == size and all(part in tokens for part in merge)
    return tokens, types, [" ".join(merge)]


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    parts = hf_name.split(".")  # model.layers.N.<module path>.weight|bias
    return f"blk.{parts[2]}.{_LAYER['.'.join(parts[3:-1])]}.{parts[-1]}"


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp ``convert_hf_to_gguf.py`` ``LlamaModel.permute`` (q and k rows)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def round_trip(array: np.ndarray, quant: str) -> np.ndarray:
    """``array`` quantised to ``quant`` and back: what a backend dequantising the GGUF sees.

    GGUF blocks run along rows, and the q/k permutation only reorders rows, so the round
    trip in Hugging Face layout equals the permuted round trip, un-permuted.
    """
    from gguf import GGMLQuantizationType, quants

    if array.ndim == 1:
        return array.astype(np.float32)
    qtype = GGMLQuantizationType[quant]
    return quants.dequantize(quants.quantize(array, qtype), qtype).astype(np.float32)


def _write(path: Path, config: dict[str, Any], state: dict[str, np.ndarray], quant: str) -> None:
    import gguf

    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    tokens, types, merges = gguf_vocab(config["vocab_size"])
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"ferrum conformance golden ({quant})")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(config.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(False)
    qtype = gguf.GGMLQuantizationType[quant]
    for hf_name, array in state.items():
        name = _gguf_name(hf_name)
        if ".attn_q." in name:
            array = _permute(array, heads)
        elif ".attn_k." in name:
            array = _permute(array, kv_heads)
        if array.ndim == 1:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def generate_gguf(
    base_dir: Path, target: Path, quant: str, prompt: list[int], logits: Logits
) -> None:
    """``target/model.gguf`` (``base_dir``'s weights in ``quant``) and its ``expected.npz``."""
    import torch
    from ferrum_core.conformance.generate_golden import _save_expected
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    config = json.loads((base_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ValueError("GGUF goldens are written for llama-family base models only")
    state = {k: v.astype(np.float32) for k, v in load_file(base_dir / "model.safetensors").items()}
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    _write(target / "model.gguf", config, state, quant)
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, attn_implementation="eager"
    )
    dequantised = {k: torch.from_numpy(round_trip(v, quant)) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(dequantised, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    if config.get("tie_word_embeddings"):
        model.tie_weights()
    model.eval()  # type: ignore[no-untyped-call]
    prefill, decode = logits(model, prompt)
    _save_expected(target, prompt, prefill, decode)
