"""The mlx-lm peer of bench_mlx.py, and the model folders it reads.

mlx-lm reads ``rope_theta`` / ``rope_scaling`` only at the top level of
config.json (a newer ``rope_parameters`` block is silently ignored: it would run
with its default theta), so both folders get the classic layout.

* fp32: the folder Ferrum converted from the GGUF, config rewritten, weights
  linked (not copied).
* 4-bit: the GGUF's own blocks written as MLX affine quantised weights, with no
  re-quantisation: Q4_1 (``d * q + m``, 32 per block) is MLX's 4-bit affine form
  with group size 32 (scale ``d``, bias ``m``); Q8_0 (``d * q``, q signed) is
  8-bit affine with ``q + 128`` and bias ``-128 d`` (the tied embedding). So both
  sides compute with the same numbers. The writer checks one tensor of each type
  against the GGUF's dequantisation before the folder is renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from _peers_common import Clock, log, rates

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                   "special_tokens_map.json", "chat_template.jinja")


def classic_config(model_dir: Path) -> dict[str, Any]:
    """config.json with ``rope_theta`` (and ``rope_scaling``) at the top level."""
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    rope = config.pop("rope_parameters", None)
    if isinstance(rope, dict):
        config.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default" and "rope_scaling" not in config:
            config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "rope_theta" not in config:
        raise SystemExit(f"{model_dir}/config.json names no rope_theta")
    return config


def _start(target: Path, model_dir: Path, config: dict[str, Any]) -> Path:
    temp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, temp / name)
    (temp / "config.json").write_text(json.dumps(config, indent=2))
    return temp


def fp32_folder(model_dir: Path, cache: Path) -> Path:
    target = cache / f"mlx-lm-fp32-{model_dir.name}"
    if (target / "config.json").is_file():
        return target
    temp = _start(target, model_dir, classic_config(model_dir))
    for weights in model_dir.glob("model*.safetensors*"):
        (temp / weights.name).symlink_to(weights.resolve())
    os.replace(temp, target)
    return target


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """``(rows, cols)`` codes < 2**bits -> MLX's ``(rows, cols * bits // 32)`` uint32,
    element j of a word in bits ``[bits * j, bits * (j + 1))``."""
    per = 32 // bits
    lanes = codes.astype(np.uint32).reshape(codes.shape[0], -1, per)
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, None, :]
    return np.bitwise_or.reduce(lanes << shifts, axis=-1)


def _mlx_arrays(stored: Any) -> tuple[dict[str, np.ndarray], int | None]:
    """MLX tensors for one stored GGUF tensor, and the bits (None: kept as float)."""
    from ferrum_core.plugin import split_blocks

    prefix = stored.name.removesuffix(".weight")
    if not stored.quantized:
        return {stored.name: np.asarray(stored.data, dtype=np.float32)}, None
    if stored.type not in ("Q4_1", "Q4_0", "Q8_0"):
        raise SystemExit(f"{stored.name}: {stored.type} has no exact MLX affine form here")
    blocks = split_blocks(stored)
    rows = int(np.prod(stored.shape[:-1]))
    codes = blocks.codes.reshape(rows, -1)
    scales = blocks.scales.reshape(rows, -1).astype(np.float32)
    biases = blocks.mins.reshape(rows, -1).astype(np.float32)
    bits = 4
    if stored.type == "Q8_0":
        bits = 8
        codes = (codes.astype(np.int16) + 128).astype(np.uint8)
        biases = biases - np.float32(128) * scales
    return {f"{prefix}.weight": _pack(codes, bits), f"{prefix}.scales": scales,
            f"{prefix}.biases": biases}, bits


def q4_folder(model_dir: Path, gguf: Path, cache: Path) -> Path:
    """The GGUF's own blocks as an mlx-lm quantised folder (see the module docstring)."""
    import mlx.core as mx

    from ferrum_core.plugin import GgufTensors

    target = cache / f"mlx-lm-gguf4-{model_dir.name}"
    if (target / "config.json").is_file():
        return target
    config = classic_config(model_dir)
    quant: dict[str, Any] = {"group_size": 32, "bits": 4, "mode": "affine"}
    weights: dict[str, np.ndarray] = {}
    checked: set[str] = set()
    with GgufTensors(gguf) as tensors:
        for name in tensors.names():
            stored = tensors.stored(name)
            arrays, bits = _mlx_arrays(stored)
            weights.update(arrays)
            if bits is None:
                continue
            prefix = name.removesuffix(".weight")
            quant[prefix] = {"group_size": 32, "bits": bits, "mode": "affine"}
            if stored.type not in checked:  # exact against the GGUF's own dequantisation
                got = mx.dequantize(mx.array(arrays[f"{prefix}.weight"]),
                                    mx.array(arrays[f"{prefix}.scales"]),
                                    mx.array(arrays[f"{prefix}.biases"]), group_size=32, bits=bits)
                err = float(np.max(np.abs(np.array(got) - tensors.get(name))))
                log(f"  mlx-lm 4-bit folder: {name} ({stored.type} -> {bits}-bit affine), "
                    f"max |diff| vs GGUF dequantised {err:.2e}")
                if err > 1e-6:
                    raise SystemExit(f"{name}: MLX affine form differs from the GGUF by {err}")
                checked.add(stored.type)
    config["quantization"] = quant
    config["quantization_config"] = quant
    temp = _start(target, model_dir, config)
    mx.save_safetensors(str(temp / "model.safetensors"),
                        {k: mx.array(v) for k, v in weights.items()}, metadata={"format": "mlx"})
    os.replace(temp, target)
    return target


class MlxLm:
    """mlx-lm on the MLX default device: ``generate_step`` at batch 1 (greedy, it
    never stops at EOS by itself), ``BatchGenerator`` without stop tokens for N
    concurrent requests."""

    def __init__(self, folder: Path) -> None:
        from mlx_lm import load

        self.model, self.tokenizer = load(str(folder))

    def _run(self, prompt: list[int], n: int) -> Clock:
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        clock = Clock()
        clock.start()
        for _token, _logprobs in generate_step(mx.array(prompt), self.model, max_tokens=n):
            clock.tick()
        return clock

    def decode(self, prompt: list[int], n: int) -> float:
        clock = self._run(prompt, n)
        return rates(clock.times, clock.t0, len(prompt))[0]

    def prefill(self, prompt: list[int]) -> float:
        clock = self._run(prompt, 1)
        return rates(clock.times, clock.t0, len(prompt))[1]

    def concurrent(self, prompts: list[list[int]], output_len: int) -> float:
        import time

        from mlx_lm.generate import BatchGenerator

        generator = BatchGenerator(self.model, max_tokens=output_len, stop_tokens=None,
                                   completion_batch_size=len(prompts),
                                   prefill_batch_size=len(prompts))
        start = time.perf_counter()
        generator.insert(prompts, [output_len] * len(prompts))
        generated = 0
        while responses := generator.next_generated():
            generated += len(responses)
        wall = time.perf_counter() - start
        generator.close()
        return generated / wall
