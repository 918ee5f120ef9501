"""PEFT LoRA adapters applied per row inside the batched forward.

An adapter (``adapter_config.json`` + ``adapter_model.safetensors``) is loaded
once and cached by name. In a forward, each adapter adds
``x[rows] @ A^T @ B^T * scale`` to the output columns of its target module for
the rows of the sequences that use it, so one batch can mix adapters (and
sequences without any).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ferrum_core.errors import ModelLoadError, UnsupportedError
from ferrum_core.plugin import ActiveLoraAdapter, ModelConfig

__all__ = [
    "LoraModule",
    "LoraAdapter",
    "load_peft_adapter",
    "LoraBatch",
    "LoraRegistry",
    "site_columns",
]

_TARGETS = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
}  # fmt: skip
_KEY = re.compile(
    r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])(?:\.[\w-]+)?\.weight$"
)


@dataclass(frozen=True, slots=True)
class LoraModule:
    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scale: float


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    name: str
    path: Path
    modules: dict[tuple[int, str], LoraModule]  # (layer, q|k|v|o|gate|up|down)


def site_columns(cfg: ModelConfig) -> dict[str, tuple[str, tuple[tuple[str, int, int], ...]]]:
    """Per module: the fused site it lives in and its output column range there."""
    nq = cfg.num_attention_heads * cfg.head_dim
    nkv = cfg.num_key_value_heads * cfg.head_dim
    inter = cfg.intermediate_size
    return {
        "qkv": ("qkv", (("q", 0, nq), ("k", nq, nq + nkv), ("v", nq + nkv, nq + 2 * nkv))),
        "o": ("o", (("o", 0, cfg.hidden_size),)),
        "gate_up": ("gate_up", (("gate", 0, inter), ("up", inter, 2 * inter))),
        "down": ("down", (("down", 0, cfg.hidden_size),)),
    }


def _pattern_value(patterns: dict[str, float], key: str, default: float) -> float:
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{pattern}", key):
            return float(value)
    return default


def load_peft_adapter(
    name: str, path: Path, cfg: ModelConfig, dtype: torch.dtype, device: torch.device
) -> LoraAdapter:
    from safetensors.torch import load_file

    config_path, weights_path = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise ModelLoadError(
            f"LoRA adapter {name!r}: {path} needs adapter_config.json and adapter_model.safetensors"
        )
    try:
        conf = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"LoRA adapter {name!r}: unreadable adapter_config.json: {exc}"
        ) from exc
    if not isinstance(conf, dict):
        raise ModelLoadError(
            f"LoRA adapter {name!r}: adapter_config.json must be a JSON object, "
            f"not {type(conf).__name__}"
        )
    if (
        conf.get("peft_type", "LORA") != "LORA"
        or conf.get("use_dora")
        or conf.get("fan_in_fan_out")
    ):
        raise UnsupportedError(f"LoRA adapter {name!r}: only plain LoRA adapters are supported")
    if conf.get("bias", "none") != "none" or conf.get("modules_to_save"):
        raise UnsupportedError(
            f"LoRA adapter {name!r}: trained biases / modules_to_save are not supported"
        )
    try:
        alpha, rank = float(conf.get("lora_alpha", 8)), int(conf.get("r", 8))
    except (TypeError, ValueError):
        raise ModelLoadError(
            f"LoRA adapter {name!r}: adapter_config.json 'r' and 'lora_alpha' must be numbers"
        ) from None
    if rank < 1 or not alpha > 0:
        raise ModelLoadError(f"LoRA adapter {name!r}: 'r' and 'lora_alpha' must be positive")
    rslora = bool(conf.get("use_rslora", False))
    tensors = load_file(str(weights_path))
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.search(key)
        if match is None:
            raise UnsupportedError(f"LoRA adapter {name!r}: unsupported weight {key!r}")
        layer, proj, which = int(match[1]), match[2], match[3]
        if proj not in _TARGETS or layer >= cfg.num_hidden_layers:
            raise UnsupportedError(f"LoRA adapter {name!r}: unsupported target {key!r}")
        pairs.setdefault((layer, proj), {})[which] = tensor
    modules: dict[tuple[int, str], LoraModule] = {}
    for (layer, proj), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ModelLoadError(f"LoRA adapter {name!r}: layer {layer} {proj} lacks A or B")
        a, b = ab["A"], ab["B"]
        r = a.shape[0]
        if b.shape[1] != r:
            raise ModelLoadError(f"LoRA adapter {name!r}: layer {layer} {proj} rank mismatch")
        key = f"layers.{layer}.{proj}"
        r_conf = int(_pattern_value(conf.get("rank_pattern") or {}, key, rank))
        if r_conf != r:
            raise ModelLoadError(f"LoRA adapter {name!r}: {key} has rank {r}, config says {r_conf}")
        a_conf = _pattern_value(conf.get("alpha_pattern") or {}, key, alpha)
        scale = a_conf / math.sqrt(r) if rslora else a_conf / r
        modules[(layer, _TARGETS[proj])] = LoraModule(
            a=a.to(device=device, dtype=dtype), b=b.to(device=device, dtype=dtype), scale=scale
        )
    if not modules:
        raise ModelLoadError(f"LoRA adapter {name!r}: no LoRA weights in {weights_path}")
    return LoraAdapter(name=name, path=path, modules=modules)


class LoraBatch:
    """The adapters of one forward and the rows each applies to (``None``: every row)."""

    def __init__(
        self,
        cfg: ModelConfig,
        groups: Sequence[tuple[LoraAdapter, torch.Tensor | None]],
    ) -> None:
        self._sites = site_columns(cfg)
        self._groups = list(groups)

    def apply(self, layer: int, site: str, x: torch.Tensor, out: torch.Tensor) -> None:
        _, columns = self._sites[site]
        for adapter, rows in self._groups:
            xs = x if rows is None else x.index_select(0, rows)
            for module_name, start, stop in columns:
                module = adapter.modules.get((layer, module_name))
                if module is None:
                    continue
                delta = F.linear(F.linear(xs, module.a), module.b) * module.scale
                target = out[:, start:stop]
                if rows is None:
                    target += delta
                else:
                    target.index_add_(0, rows, delta)


class LoraRegistry:
    """Adapters loaded once by name, and which sequence uses which."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        self._cfg, self._dtype, self._device = cfg, dtype, device
        self._adapters: dict[str, LoraAdapter] = {}
        self._of: dict[str, str] = {}
        self._rows = 0

    def assign(self, cache_id: str, adapter: ActiveLoraAdapter | None) -> None:
        """Select (loading it on first use) or clear the adapter of ``cache_id``."""
        if adapter is None:
            self._of.pop(cache_id, None)
            return
        if adapter.name not in self._adapters:
            self._adapters[adapter.name] = load_peft_adapter(
                adapter.name, adapter.path, self._cfg, self._dtype, self._device
            )
        self._of[cache_id] = adapter.name

    def adapter_of(self, cache_id: str) -> str | None:
        return self._of.get(cache_id)

    def batch(
        self, cache_ids: Sequence[str], first_row: Sequence[int], counts: Sequence[int]
    ) -> LoraBatch | None:
        """The adapters of one forward with their rows, or ``None`` when no row has one."""
        rows_of: dict[str, list[int]] = {}
        for cache_id, first, count in zip(cache_ids, first_row, counts, strict=True):
            name = self._of.get(cache_id)
            if name is not None and count:
                rows_of.setdefault(name, []).extend(range(first, first + count))
        if not rows_of:
            return None
        total = sum(counts)
        groups = []
        for name, rows in rows_of.items():
            self._rows += len(rows)
            index = None if len(rows) == total else torch.tensor(rows).to(self._device)
            groups.append((self._adapters[name], index))
        return LoraBatch(self._cfg, groups)

    def metrics(self) -> dict[str, Any]:
        return {
            "adapters_loaded": len(self._adapters),
            "adapters": sorted(self._adapters),
            "sequences_with_adapter": len(self._of),
            "lora_rows": self._rows,
        }
