"""Convert a llama-architecture GGUF file into a Hugging Face style directory.

Tensors are dequantised to float32 (``gguf.quants``), llama.cpp's q/k row
permutation is undone and names are mapped to ``transformers``' so that
``AutoModelForCausalLM.from_pretrained(out_dir)`` loads the result as is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ferrum_core.errors import ConfigError, ModelLoadError
from ferrum_core.models.cache import IfExists, write_dir_atomically
from ferrum_core.models.config import ModelConfig
from ferrum_core.models.gguf_metadata import (
    generation_config,
    hf_config,
    read_metadata,
    tokenizer_config,
)
from ferrum_core.models.gguf_tokenizer import build_gguf_tokenizer
from ferrum_core.models.safetensors_io import write_safetensors
from ferrum_core.models.weights import expected_tensors

__all__ = ["convert_gguf", "dequantize", "hf_tensor_name", "unpermute_rows"]

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def hf_tensor_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_RE.match(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise ModelLoadError(f"GGUF tensor {gguf_name!r} has no Hugging Face llama equivalent")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"


def unpermute_rows(array: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's ``permute``: its rope pairs rows (2i, 2i+1) of a head,
    ``transformers`` pairs (i, i + head_dim/2)."""
    rows = array.shape[0]
    if rows % (2 * n_head):
        raise ModelLoadError(f"cannot un-permute {rows} rows into {n_head} heads")
    split = array.reshape(n_head, rows // n_head // 2, 2, *array.shape[1:])
    return split.swapaxes(1, 2).reshape(array.shape)


def dequantize(tensor: Any) -> np.ndarray:
    """A ``gguf.ReaderTensor`` as a float32 array in numpy (row-major, HF) order."""
    from gguf import GGMLQuantizationType, quants

    qtype = tensor.tensor_type
    shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists ne0 (columns) first
    if qtype == GGMLQuantizationType.F32:
        array = np.asarray(tensor.data, dtype=np.float32)
    elif qtype == GGMLQuantizationType.F16:
        array = np.asarray(tensor.data).astype(np.float32)
    else:
        try:
            array = quants.dequantize(tensor.data, qtype).astype(np.float32, copy=False)
        except NotImplementedError:
            raise ModelLoadError(
                f"GGUF tensor {tensor.name!r} uses {qtype.name}, which cannot be dequantised"
            ) from None
    return array.reshape(shape)


def _convert_tensor(tensor: Any, config: ModelConfig) -> np.ndarray:
    array = dequantize(tensor)
    if ".attn_q." in tensor.name:
        return unpermute_rows(array, config.num_attention_heads)
    if ".attn_k." in tensor.name:
        return unpermute_rows(array, config.num_key_value_heads)
    return array


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _build(src: Path, out: Path, progress: bool) -> None:
    from gguf import GGUFReader
    from tqdm import tqdm

    try:
        reader = GGUFReader(src)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{src}: not a readable GGUF file ({exc})") from None
    meta = read_metadata(reader)
    by_name = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in by_name:
        raise ModelLoadError(f"{src}: GGUF file has no 'token_embd.weight'")
    vocab_rows = int(by_name["token_embd.weight"].shape[-1])
    config_dict = hf_config(meta, by_name.keys(), vocab_rows)
    try:
        config = ModelConfig.from_dict(config_dict)
    except ConfigError as exc:
        raise ModelLoadError(f"{src}: inconsistent GGUF metadata ({exc})") from None
    renamed = {hf_tensor_name(name): tensor for name, tensor in by_name.items()}
    expected = expected_tensors(config)
    for name, shape in expected.items():
        tensor = renamed.get(name)
        if tensor is None:
            raise ModelLoadError(f"{src}: GGUF file lacks the tensor for {name!r}")
        got = tuple(int(d) for d in reversed(tensor.shape))
        if got != shape:
            raise ModelLoadError(
                f"{src}: GGUF tensor {tensor.name!r} has shape {list(got)}, expected {list(shape)}"
            )
    extra = sorted(set(renamed) - set(expected))
    if extra:
        raise ModelLoadError(f"{src}: unexpected GGUF tensors for this config: {extra[:5]}")

    tokenizer = build_gguf_tokenizer(meta)
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", tokenizer_config(meta))
    _write_json(out / "config.json", config_dict)
    _write_json(out / "generation_config.json", generation_config(meta))

    names = list(expected)
    bar = tqdm(names, desc=f"Converting {src.name}", unit="tensor", disable=not progress)

    def arrays() -> Iterator[np.ndarray]:
        for name in bar:
            yield _convert_tensor(renamed[name], config)

    specs = [(name, np.dtype(np.float32), expected[name]) for name in names]
    write_safetensors(out / "model.safetensors", specs, arrays(), metadata={"format": "pt"})
    bar.close()


def convert_gguf(
    src: str | Path,
    out_dir: str | Path,
    progress: bool = True,
    *,
    if_exists: IfExists = "error",
) -> Path:
    """Write ``out_dir`` (config.json, generation_config.json, model.safetensors in
    float32 with HF names, tokenizer.json, tokenizer_config.json) from ``src``.

    The directory appears atomically; ``if_exists`` says what to do when it is
    already there (``"error"``, ``"skip"`` or ``"replace"``).
    """
    source = Path(src).expanduser()
    if not source.is_file():
        raise ModelLoadError(f"{source}: GGUF file not found")
    target = Path(out_dir).expanduser().absolute()
    write_dir_atomically(target, lambda tmp: _build(source, tmp, progress), if_exists=if_exists)
    return target
