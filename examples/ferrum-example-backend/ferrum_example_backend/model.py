"""`NumpyLlama`: a Llama-family `DecoderOnlyLLM` in plain numpy.

Honest, slow and correct: every forward is float32 numpy on the CPU, one
sequence at a time, with contiguous per-sequence KV. It has no ragged
``unified_forward``, so the core's ``LlmExecutor`` serves ``unified_decode``
through its fallback path. Covers Llama (incl. llama3 rope scaling and
attention/MLP biases), Mistral (sliding window), Qwen2 (q/k/v bias) and Qwen3
(q/k norm); GQA, MQA and tied embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ferrum_core.errors import InvalidInputError, UnsupportedError
from ferrum_core.plugin import (
    ActiveLoraAdapter,
    DataType,
    DecodeItem,
    LlmRuntimeConfig,
    ModelConfig,
    UnifiedItem,
    rope_inv_freq,
)
from ferrum_example_backend.kv import SequenceKv
from ferrum_example_backend.ops import activation, apply_rope, attention, rms_norm, rope_tables
from ferrum_example_backend.weights import LayerWeights, ModelWeights, WeightSource, load_weights

__all__ = ["NumpyLlama"]


class NumpyLlama:
    """Model math over per-sequence KV keyed by cache id (see ``DecoderOnlyLLM``)."""

    def __init__(
        self, config: ModelConfig, weights: ModelWeights, *, max_batch_size: int = 256
    ) -> None:
        self.model_config = config
        self.weights = weights
        self._act = activation(config.hidden_act)
        self._inv_freq = np.asarray(rope_inv_freq(config), dtype=np.float32)
        self._caches: dict[str, SequenceKv] = {}
        self._runtime = LlmRuntimeConfig(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            vocab_size=config.vocab_size,
            max_seq_len=config.max_model_len,
            intermediate_size=config.intermediate_size,
            num_parameters=weights.num_parameters,
            dtype=DataType.FP32,
            device="cpu",
            max_batch_size=max_batch_size,
            sliding_window=config.sliding_window,
            supported_dtypes=(DataType.FP32,),
            attention_mechanisms=(),  # the executor derives MHA / GQA / MQA from the shapes
        )

    @classmethod
    def from_weights(
        cls, config: ModelConfig, source: WeightSource, *, max_batch_size: int = 256
    ) -> NumpyLlama:
        return cls(config, load_weights(config, source), max_batch_size=max_batch_size)

    # -- DecoderOnlyLLM ---------------------------------------------------------------
    @property
    def config(self) -> LlmRuntimeConfig:
        return self._runtime

    @property
    def native_unified(self) -> bool:
        return False

    def prefill(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        return self._logits(self._run(cache_id, tokens, start_pos)[-1])

    def decode(self, cache_id: str, token: int, pos: int) -> np.ndarray:
        return self.prefill(cache_id, [token], pos)

    def decode_batch(
        self, items: Sequence[DecodeItem], force_full_logits: bool
    ) -> list[np.ndarray]:
        # One sequence at a time: simple beats fast here. A backend with batched
        # kernels would stack the items into one forward.
        return [self.decode(item.cache_id, item.token, item.pos) for item in items]

    def unified_forward(self, items: Sequence[UnifiedItem]) -> list[np.ndarray | None]:
        raise UnsupportedError("the example backend has no ragged unified forward")

    def forward_verify(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        return self._logits(self._run(cache_id, tokens, start_pos))

    def truncate_kv(self, cache_id: str, new_len: int) -> None:
        kv = self._caches.get(cache_id)
        if kv is not None:
            kv.length = min(kv.length, max(0, new_len))

    def release(self, cache_id: str) -> None:
        self._caches.pop(cache_id, None)

    def kv_capacity(self) -> int:
        return self.model_config.max_model_len

    def set_lora_adapter_for_cache(
        self, cache_id: str, adapter: ActiveLoraAdapter | None
    ) -> None:
        if adapter is not None:
            raise UnsupportedError("the example backend does not support LoRA adapters")

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        return {
            "active_sequences": len(self._caches),
            "kv_bytes_allocated": sum(kv.bytes_allocated() for kv in self._caches.values()),
        }

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        return None

    def memory_usage_bytes(self) -> tuple[int, int]:
        weights = self.weights.nbytes
        allocated = weights + sum(kv.bytes_allocated() for kv in self._caches.values())
        used = weights + sum(kv.bytes_used() for kv in self._caches.values())
        return allocated, used

    # -- the forward ------------------------------------------------------------------
    def _run(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        """Append ``tokens`` to the sequence; return the final hidden states ``[n, hidden]``."""
        cfg = self.model_config
        kv = self._caches.get(cache_id)
        if kv is None:
            kv = SequenceKv(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim)
        if start_pos != kv.length:
            raise InvalidInputError(
                f"{cache_id!r} holds {kv.length} positions, asked to write at {start_pos}"
            )
        ids = np.asarray(tokens, dtype=np.int64)
        positions = np.arange(start_pos, start_pos + len(ids))
        cos, sin = rope_tables(self._inv_freq, positions)
        kv.reserve(start_pos + len(ids))
        x = self.weights.embed[ids]
        for index, layer in enumerate(self.weights.layers):
            x = x + self._attention(layer, index, rms_norm(x, layer.input_norm, cfg.rms_norm_eps),
                                    kv, positions, cos, sin)
            x = x + self._mlp(layer, rms_norm(x, layer.post_norm, cfg.rms_norm_eps))
        # Commit only after the whole forward succeeded: a failure leaves the sequence as it was.
        kv.length = start_pos + len(ids)
        self._caches[cache_id] = kv
        return rms_norm(x, self.weights.final_norm, cfg.rms_norm_eps)

    def _attention(
        self,
        layer: LayerWeights,
        index: int,
        h: np.ndarray,
        kv: SequenceKv,
        positions: np.ndarray,
        cos: np.ndarray,
        sin: np.ndarray,
    ) -> np.ndarray:
        cfg = self.model_config
        n, hd = h.shape[0], cfg.head_dim
        q = _linear(h, layer.wq, layer.bq).reshape(n, cfg.num_attention_heads, hd)
        k = _linear(h, layer.wk, layer.bk).reshape(n, cfg.num_key_value_heads, hd)
        v = _linear(h, layer.wv, layer.bv).reshape(n, cfg.num_key_value_heads, hd)
        if layer.q_norm is not None and layer.k_norm is not None:
            q = rms_norm(q, layer.q_norm, cfg.rms_norm_eps)
            k = rms_norm(k, layer.k_norm, cfg.rms_norm_eps)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        kv.write(index, int(positions[0]), k, v)
        keys, values = kv.view(index, int(positions[-1]) + 1)
        out = attention(q, keys, values, positions, cfg.sliding_window)
        return _linear(out, layer.wo, layer.bo)

    def _mlp(self, layer: LayerWeights, h: np.ndarray) -> np.ndarray:
        gate = self._act(_linear(h, layer.w_gate, layer.b_gate))
        return _linear(gate * _linear(h, layer.w_up, layer.b_up), layer.w_down, layer.b_down)

    def _logits(self, hidden: np.ndarray) -> np.ndarray:
        return np.asarray(hidden @ self.weights.lm_head, dtype=np.float32)


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    y: np.ndarray = x @ weight
    return y if bias is None else y + bias
