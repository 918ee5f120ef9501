"""Write small llama-architecture GGUF files the way llama.cpp's converter does.

A tiny random ``transformers`` model is exported with llama.cpp's q/k row
permutation, chosen quantisation types (``gguf.quants.quantize``; types gguf-py
cannot quantise, the K-quants, get random blocks) and a GPT-2 style byte-level
tokenizer, so the importer can be checked against the original weights and
against ``transformers``' own GGUF loader.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from ferrum_core.models.gguf_tokenizer import bytes_to_unicode
from tests.tiny_models import build_tiny_model

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGE_WORDS = [
    " the",
    "the",
    "hello",
    " world",
    "\u00e9t\u00e9",
    "\u65e5\u672c",
    "\U0001f916",
    "123",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_PARTS = {
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


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """GPT-2 BPE: repeatedly merge the best-ranked adjacent pair everywhere."""
    while len(symbols) > 1:
        pairs = set(itertools.pairwise(symbols))
        best = min(pairs, key=lambda pair: ranks.get(pair, len(ranks) + 1))
        if best not in ranks:
            break
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def byte_level_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): specials, the 256 byte symbols, then BPE merges
    that build a few words, including tokens that end inside a UTF-8 character.
    Every token is reachable by the merges, as in a trained vocabulary."""
    spelling = bytes_to_unicode()
    tokens = list(SPECIALS) + [spelling[b] for b in range(256)]
    types = [3] * len(SPECIALS) + [1] * 256
    ranks: dict[tuple[str, str], int] = {}
    for word in MERGE_WORDS:
        start = [spelling[b] for b in word.encode("utf-8")]
        while len(symbols := _apply_merges(start, ranks)) > 1:
            ranks[(symbols[0], symbols[1])] = len(ranks)
            if symbols[0] + symbols[1] not in tokens:
                tokens.append(symbols[0] + symbols[1])
                types.append(1)
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda item: item[1])]
    return tokens, types, merges


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py ``LlamaModel.permute``."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_name(hf_name: str) -> str:
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    parts = hf_name.split(".")
    layer, rest, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
    return f"blk.{layer}.{LAYER_PARTS[rest]}.{kind}"


QuantChooser = Callable[[str, np.ndarray], Any]

# Byte offsets of the float16 fields (d, dmin/m) inside one block of each type.
F16_FIELDS = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}


def random_blocks(qtype: str, rows: int, nblocks: int, seed: int) -> np.ndarray:
    """``(rows, nblocks * type_size)`` random bytes of ``qtype`` blocks whose float16
    fields are finite and of realistic size (every code pattern occurs)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    _, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(rows, nblocks, type_size), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        values = (rng.standard_normal((rows, nblocks)) * 0.05).astype(np.float16)
        data[:, :, offset : offset + 2] = values.view(np.uint8).reshape(rows, nblocks, 2)
    return data.reshape(rows, nblocks * type_size)


def encode(array: np.ndarray, qtype: Any) -> np.ndarray:
    """``array`` (2-D) as ``qtype`` blocks: ``gguf.quants.quantize`` where gguf-py
    implements it, else random blocks (seeded by the array's size)."""
    import gguf

    try:
        return gguf.quants.quantize(array, qtype)
    except NotImplementedError:
        block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = array.shape
        return random_blocks(qtype.name, rows, cols // block_size, seed=array.size)


def all_f32(name: str, array: np.ndarray) -> Any:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType.F32


def mixed_quants(name: str, array: np.ndarray) -> Any:
    """Norms F32, everything else cycling through F16, Q8_0, Q4_0, Q4_1."""
    from gguf import GGMLQuantizationType as Q

    if array.ndim == 1:
        return Q.F32
    cycle = [Q.Q4_1, Q.Q8_0, Q.Q4_0, Q.F16, Q.Q4_1, Q.Q4_0]
    return cycle[sum(map(ord, name)) % len(cycle)]


def k_and_5bit_quants(name: str, array: np.ndarray) -> Any:
    """Norms F32, matrices cycling through the K-quants, Q5_0, Q5_1 and BF16
    (K-quants need 256-element rows: use with ``hidden_size=256``)."""
    from gguf import GGMLQuantizationType as Q

    if array.ndim == 1:
        return Q.F32
    cycle = [Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q5_0, Q.Q5_1, Q.BF16]
    return cycle[sum(map(ord, name)) % len(cycle)]


def build_tiny_llama_and_gguf(
    tmp_path: Path,
    *,
    quant: QuantChooser = all_f32,
    tie_word_embeddings: bool = False,
    hidden_size: int = 96,
    num_attention_heads: int = 3,
    num_key_value_heads: int = 1,
    intermediate_size: int = 160,
    attention_bias: bool = False,
    pre: str = "gpt-2",
    architecture: str = "llama",
    tokenizer_model: str = "gpt2",
    drop: Sequence[str] = (),
    extra_tensors: dict[str, np.ndarray] | None = None,
    sampling: dict[str, float] | None = None,
) -> tuple[Path, Path]:
    """Return ``(hf_dir, gguf_path)``: the original tiny model and its GGUF export."""
    import gguf

    tokens, types, merges = byte_level_vocab()
    hf_dir = build_tiny_model(
        tmp_path,
        "llama",
        tie_word_embeddings=tie_word_embeddings,
        vocab_size=len(tokens),
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        attention_bias=attention_bias,
        rope_theta=50000.0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = json.loads((hf_dir / "config.json").read_text())
    head_dim = hidden_size // num_attention_heads
    path = tmp_path / f"tiny-{len(list(tmp_path.glob('*.gguf')))}.gguf"
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden_size)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(intermediate_size)
    writer.add_head_count(num_attention_heads)
    writer.add_head_count_kv(num_key_value_heads)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for key, value in (sampling or {}).items():
        getattr(writer, f"add_sampling_{key}")(value)
    state = load_file(hf_dir / "model.safetensors")
    for hf_name, array in {**state, **(extra_tensors or {})}.items():
        name = gguf_name(hf_name) if hf_name.startswith(("model.", "lm_head")) else hf_name
        if name in drop:
            continue
        if ".attn_q." in name:
            array = llama_cpp_permute(array, num_attention_heads)
        elif ".attn_k." in name:
            array = llama_cpp_permute(array, num_key_value_heads)
        qtype = quant(name, array)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, encode(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf_dir, path
