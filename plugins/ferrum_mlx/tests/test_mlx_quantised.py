"""Quantised weights kept as stored: GGUF blocks and mlx-community folders as MLX affine weights.

The reference for a quantised model is the same model run in fp32 on the weights the
model layer dequantises (GGUF: the converter's floats; MLX folder: ``WeightSource.get``),
so int4/int8 must match it within float rounding (1e-4 relative), not a loose tolerance.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from ferrum_mlx.quant import pack_codes
from mlx_tiny import DECODE, PROMPT, build, hf_logits, relative, run_sequence

from ferrum_core.dtype_choice import stored_dtype, stored_elements
from ferrum_core.errors import ConfigError, UnsupportedError
from ferrum_core.models import load_model
from ferrum_core.types import DataType
from tests.models.gguf_builder import build_tiny_llama_and_gguf, mixed_quants
from tests.tiny_models import build_tiny_model

EXACT = 1e-4


def _k_quants(name: str, array: np.ndarray) -> Any:
    """Norms F32; matrices cycling through the 4- and 5-bit types MLX expresses."""
    from gguf import GGMLQuantizationType as Q

    if array.ndim == 1:
        return Q.F32
    return [Q.Q4_K, Q.Q5_K, Q.Q5_0, Q.Q5_1, Q.Q8_0][sum(map(ord, name)) % 5]


def _with_q6_k(name: str, array: np.ndarray) -> Any:
    from gguf import GGMLQuantizationType as Q

    return Q.F32 if array.ndim == 1 else (Q.Q6_K if "ffn_down" in name else Q.Q4_1)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_codes_is_mlx_layout(bits: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 2**bits, size=(3, 64), dtype=np.uint8)
    scales = mx.ones((3, 2))
    biases = mx.zeros((3, 2))
    unpacked = mx.dequantize(mx.array(pack_codes(codes, bits)), scales, biases,
                             group_size=32, bits=bits)
    assert np.array_equal(np.array(unpacked), codes.astype(np.float32))


@pytest.mark.parametrize(("chooser", "types"), [
    (mixed_quants, {"Q4_1", "Q8_0", "Q4_0"}),
    (_k_quants, {"Q4_K", "Q5_K", "Q5_0", "Q5_1", "Q8_0"}),
])  # fmt: skip
def test_gguf_int4_equals_fp32_on_dequantised_weights(
    tmp_path: Path, chooser: Any, types: set[str]
) -> None:
    _, gguf = build_tiny_llama_and_gguf(tmp_path, quant=chooser, hidden_size=256,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=256)  # fmt: skip
    quantised = build(gguf, "int4")
    storage = quantised.config.extra["weight_storage"]
    assert types <= set(storage), storage  # every matrix kept its own GGUF type
    assert "mx.quantize" not in storage
    want = run_sequence(build(gguf, "fp32"), "a")
    assert relative(run_sequence(quantised, "a"), want) < EXACT


def test_gguf_type_without_mlx_form_is_a_typed_error(tmp_path: Path) -> None:
    _, gguf = build_tiny_llama_and_gguf(tmp_path, quant=_with_q6_k, hidden_size=256,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=256)  # fmt: skip
    with pytest.raises(UnsupportedError, match=r"GGUF type Q6_K of tensor .*down_proj"):
        build(gguf, "int4")
    build(gguf, "fp32")  # dequantised floats run


def _mlx_folder(tmp_path: Path, quantization: dict[str, Any]) -> tuple[Path, Path]:
    """(float model, its mlx-community style copy): linears and the embedding quantised
    with mx.quantize, scales and biases stored in float16, config.json's quantization."""
    from safetensors.numpy import load_file

    source = build_tiny_model(tmp_path, "llama3")
    out = tmp_path / "mlx-4bit"
    shutil.copytree(source, out)
    (out / "model.safetensors").unlink()
    tensors: dict[str, mx.array] = {}
    for name, array in load_file(source / "model.safetensors").items():
        module = name.removesuffix(".weight")
        spec = quantization.get(module, quantization)
        if array.ndim != 2 or spec is False:
            tensors[name] = mx.array(array)
            continue
        weight, scales, biases = mx.quantize(mx.array(array), group_size=spec["group_size"],
                                             bits=spec["bits"])
        tensors.update({name: weight, f"{module}.scales": scales.astype(mx.float16),
                        f"{module}.biases": biases.astype(mx.float16)})
    mx.save_safetensors(str(out / "model.safetensors"), tensors)
    config = json.loads((out / "config.json").read_text())
    config["quantization"] = quantization
    (out / "config.json").write_text(json.dumps(config))
    return source, out


def test_mlx_community_folder_loads_as_stored_and_matches(tmp_path: Path) -> None:
    quantization = {"group_size": 64, "bits": 4,
                    "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8},
                    "model.layers.1.self_attn.o_proj": False}
    source, folder = _mlx_folder(tmp_path, quantization)
    loaded = load_model(folder)
    weights = loaded.weights
    assert weights.dtype("model.layers.1.mlp.up_proj.weight") == "Q4_MLX"
    assert weights.dtype("model.layers.0.mlp.down_proj.weight") == "Q8_MLX"
    assert weights.dtype("model.layers.1.self_attn.o_proj.weight") == "F32"
    assert weights.shape("model.embed_tokens.weight") == (256, 64)  # logical, not packed
    tensor = weights.mlx_quantized("model.layers.0.self_attn.q_proj.weight")
    assert tensor is not None and (tensor.bits, tensor.group_size) == (4, 64)
    assert stored_dtype(stored_elements(loaded)) == DataType.INT4  # --dtype auto
    loaded.weights.close()

    quantised = build(folder, "int4")
    storage = quantised.config.extra["weight_storage"]
    assert storage["Q8_MLX"] == 1 and storage["Q4_MLX"] > 10 and "mx.quantize" not in storage
    got = run_sequence(quantised, "a")
    assert relative(got, run_sequence(build(folder, "fp32"), "a")) < EXACT
    assert relative(got, hf_logits(source, PROMPT + DECODE)) < 0.3  # the int4 tolerance


def test_mlx_folder_with_another_mode_is_refused(tmp_path: Path) -> None:
    _, folder = _mlx_folder(tmp_path, {"group_size": 32, "bits": 4})
    config = json.loads((folder / "config.json").read_text())
    config["quantization"]["mode"] = "mxfp4"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError, match="mode 'mxfp4'"):
        load_model(folder)
    config["quantization"] = {"group_size": 48, "bits": 4}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="group_size"):
        load_model(folder)
