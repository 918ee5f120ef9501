"""`TorchDecoderLLM`: the `DecoderOnlyLLM` of the `cuda` and `torch` backends.

Every entry point (prefill, decode, batched decode, unified, verify) becomes a
list of work items run by one ragged forward: the block manager reserves
slots for the whole batch first (so pool exhaustion mutates nothing), prefix
hits shorten the rows to compute, shared blocks are copied before they are
written, and a failing forward rolls the sequences back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ferrum_core.errors import InvalidInputError, UnsupportedError
from ferrum_core.plugin import (
    ActiveLoraAdapter,
    AppendRequest,
    AppendResult,
    DataType,
    DecodeItem,
    KvBlockManager,
    LlmRuntimeConfig,
    ModelConfig,
    UnifiedItem,
)
from ferrum_cuda.attention import build_metadata
from ferrum_cuda.batch import StepBatch, Work
from ferrum_cuda.cpu_native.settings import NativeOptions, NativeUse, choose_native
from ferrum_cuda.cuda_graphs import DecodeGraphs
from ferrum_cuda.describe import runtime_config
from ferrum_cuda.layers import RopeTables
from ferrum_cuda.linear import use_panel_kernels
from ferrum_cuda.lora import LoraBatch, LoraRegistry
from ferrum_cuda.paged_cache import PagedKvPool
from ferrum_cuda.transformer import Transformer
from ferrum_cuda.weights import ModelWeights, WeightReader, load_weights
from ferrum_cuda.workspace import DecodeWorkspace

if TYPE_CHECKING:
    from ferrum_cuda.tp.protocol import TpLink

__all__ = ["TORCH_DTYPES", "TorchDecoderLLM"]

DEFAULT_WORKSPACE_BYTES = 1 << 30

TORCH_DTYPES = {DataType.FP32: torch.float32, DataType.FP16: torch.float16,
                DataType.BF16: torch.bfloat16}  # fmt: skip


class TorchDecoderLLM:
    native_unified = True

    def __init__(
        self,
        cfg: ModelConfig,
        weights: ModelWeights,
        inv_freq: np.ndarray,
        *,
        dtype: DataType,
        device: torch.device,
        num_blocks: int,
        block_size: int = 16,
        enable_prefix_caching: bool = True,
        max_batch_size: int = 256,
        cuda_graphs: bool = True,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        fused_kernels: bool = True,
        kv_cache_dtype: DataType | None = None,
        native: NativeUse | None = None,
        tp: TpLink | None = None,
    ) -> None:
        """``kv_cache_dtype``: the paged pool's dtype (``None``: ``dtype``). ``native``: the
        CPU kernels to use (default: those ``fused_kernels`` asks for). ``tp``: ``cfg`` and
        ``weights`` are this rank's shard; no workspace, CUDA graphs or LoRA."""
        self.tp = tp
        self.model_config = cfg
        self.dtype = dtype
        self.kv_dtype = kv_cache_dtype or dtype
        self.device = device
        self.weights = weights
        self.native = native or choose_native(
            NativeOptions(kernels=fused_kernels), device.type, dtype, self.kv_dtype
        )
        self.manager = KvBlockManager(
            num_blocks, block_size, enable_prefix_caching=enable_prefix_caching
        )
        self.pool = PagedKvPool(
            num_layers=cfg.num_hidden_layers,
            num_blocks=num_blocks,
            block_size=block_size,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            dtype=TORCH_DTYPES[self.kv_dtype],
            device=device,
        )
        positions = min(cfg.max_model_len, self.manager.max_tokens_per_sequence)
        rope = RopeTables(inv_freq, positions, TORCH_DTYPES[dtype], device)
        self.kernels = self.native.kernels
        self.transformer = Transformer(
            cfg, weights, rope, self.pool, self.kernels, kv_fused=self.native.kv_fused,
            tp=tp.ops if tp is not None else None,
        )  # fmt: skip
        self._group = cfg.num_attention_heads // cfg.num_key_value_heads
        self.lora = LoraRegistry(cfg, TORCH_DTYPES[dtype], device)
        self.workspace = None
        if device.type == "cpu" and workspace_bytes > 0 and tp is None:
            self.workspace = DecodeWorkspace(
                num_layers=cfg.num_hidden_layers,
                kv_heads=cfg.num_key_value_heads,
                head_dim=cfg.head_dim,
                dtype=TORCH_DTYPES[dtype],
                device=device,
                max_bytes=workspace_bytes,
            )
        self._graphs = (
            DecodeGraphs(self.transformer, max_batch_size=min(max_batch_size, 256))
            if cuda_graphs and device.type == "cuda" and tp is None
            else None
        )
        self._runtime = runtime_config(
            cfg if tp is None else tp.full_config,
            weights.num_parameters if tp is None else tp.num_parameters, dtype=dtype,
            device=device, max_batch_size=max_batch_size, prefix_caching=enable_prefix_caching,
            extra={"block_size": block_size, "num_kv_blocks": num_blocks,
                   "tensor_parallel_size": 1 if tp is None else tp.size},
        )  # fmt: skip
        if tp is not None:
            self._runtime = dataclasses.replace(self._runtime, supports_lora=False)

    @classmethod
    def from_source(
        cls,
        cfg: ModelConfig,
        source: WeightReader,
        inv_freq: np.ndarray,
        *,
        dtype: DataType,
        device: torch.device,
        **kwargs: Any,
    ) -> TorchDecoderLLM:
        prepack = bool(kwargs.pop("prepack", True))
        options = NativeOptions(
            kernels=bool(kwargs.pop("fused_kernels", True)),
            gemm=bool(kwargs.pop("cpu_gemm", True)),
            isa=str(kwargs.pop("cpu_isa", "auto")),
        )
        native = choose_native(options, device.type, dtype, kwargs.get("kv_cache_dtype") or dtype)
        weights = cls.load_weights(cfg, source, dtype, device, prepack=prepack, native=native)
        return cls(cfg, weights, inv_freq, dtype=dtype, device=device, native=native, **kwargs)

    @staticmethod
    def load_weights(
        cfg: ModelConfig,
        source: WeightReader,
        dtype: DataType,
        device: torch.device,
        *,
        prepack: bool = True,
        native: NativeUse | None = None,
    ) -> ModelWeights:
        """``native``: where it has the panel GEMM on, fp32 CPU linears use it."""
        panels = native.kernels if native is not None and native.gemm and prepack else None
        with use_panel_kernels(panels):
            return load_weights(cfg, source, TORCH_DTYPES[dtype], device, prepack=prepack)

    # -- DecoderOnlyLLM --------------------------------------------------------------------

    @property
    def config(self) -> LlmRuntimeConfig:
        return self._runtime

    def prefill(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        return self._run([Work(cache_id, tokens, start_pos, "last")])[0]  # type: ignore[return-value]

    def decode(self, cache_id: str, token: int, pos: int) -> np.ndarray:
        return self._run([Work(cache_id, (token,), pos, "last")])[0]  # type: ignore[return-value]

    def decode_batch(
        self, items: Sequence[DecodeItem], force_full_logits: bool = False
    ) -> list[np.ndarray]:
        works = [Work(cache_id, (token,), pos, "last") for cache_id, token, pos in items]
        return self._run(works)  # type: ignore[return-value]

    def unified_forward(self, items: Sequence[UnifiedItem]) -> list[np.ndarray | None]:
        works = [
            Work(cache_id, tokens, pos, "last" if final else "none")
            for cache_id, tokens, pos, final in items
        ]
        return self._run(works)

    def forward_verify(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        return self._run([Work(cache_id, tokens, start_pos, "all")])[0]  # type: ignore[return-value]

    def truncate_kv(self, cache_id: str, new_len: int) -> None:
        if self.manager.has(cache_id):
            self.manager.truncate(cache_id, new_len)
            self._forget_workspace()

    def release(self, cache_id: str) -> None:
        self.manager.release(cache_id)
        self.lora.assign(cache_id, None)
        self._forget_workspace()

    def kv_capacity(self) -> int:
        return min(self.model_config.max_model_len, self.manager.max_tokens_per_sequence)

    def set_lora_adapter_for_cache(self, cache_id: str, adapter: ActiveLoraAdapter | None) -> None:
        if adapter is not None and self.tp is not None:
            raise UnsupportedError(
                f"LoRA adapter {adapter.name!r}: adapters are not supported under tensor "
                f"parallelism (tensor_parallel_size={self.tp.size})"
            )
        self.lora.assign(cache_id, adapter)

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        metrics: dict[str, Any] = dict(self.manager.metrics())
        metrics["kv_bytes_per_block"] = self.pool.bytes_per_block()
        metrics["kv_cache_dtype"] = self.kv_dtype.value
        metrics["tensor_parallel_size"] = 1 if self.tp is None else self.tp.size
        metrics["cpu_kernels"] = self.native.report()
        if self.workspace is not None:
            metrics["decode_workspace_reuses"] = self.workspace.reuses
            metrics["decode_workspace_rebuilds"] = self.workspace.rebuilds
        if self.transformer.fused_step is not None:
            metrics["fused_decode_steps"] = self.transformer.fused_step.steps
        if self._graphs is not None:
            metrics.update(self._graphs.metrics())
        return metrics

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        return self.lora.metrics()

    def memory_usage_bytes(self) -> tuple[int, int]:
        weights = self.weights.num_bytes
        used_blocks = self.manager.num_blocks - self.manager.num_free_blocks
        extra = self.workspace.num_bytes() if self.workspace is not None else 0
        return (
            weights + extra + self.pool.num_bytes(),
            weights + extra + used_blocks * self.pool.bytes_per_block(),
        )

    # -- the one forward ---------------------------------------------------------------

    def _run(self, works: Sequence[Work]) -> list[np.ndarray | None]:
        for work in works:
            if not work.tokens and work.want != "none":
                raise InvalidInputError(f"no tokens to run for {work.cache_id!r}")
        # KV computed under an adapter differs: its prefixes are cached apart.
        requests = [
            AppendRequest(
                w.cache_id, w.start_pos, w.tokens, w.max_cached, self.lora.adapter_of(w.cache_id)
            )
            for w in works
        ]
        results = self.manager.append(requests)  # raises before mutating anything
        try:
            with torch.inference_mode():
                return self._forward(works, results)
        except BaseException:
            # Truncating (rather than releasing) drops the hashes of blocks this step
            # filled, so no half-written block stays behind in the prefix cache.
            for work in works:
                self.manager.truncate(work.cache_id, work.start_pos)
                if work.start_pos == 0:
                    self.manager.release(work.cache_id)
            self._forget_workspace()
            raise

    def _forget_workspace(self) -> None:
        if self.workspace is not None:
            self.workspace.reset()

    def _forward(
        self, works: Sequence[Work], results: Sequence[AppendResult]
    ) -> list[np.ndarray | None]:
        step = StepBatch.build(works, results)
        if self.tp is not None:
            try:  # the workers run the same step on their shards
                self.tp.share(step)
                rows = self.run_shard(step)
            except BaseException as exc:  # the ranks may be out of step: the group is done
                error = self.tp.failure(exc)
                if isinstance(exc, RuntimeError):  # a collective failed: a worker died or stalled
                    raise error from exc
                raise
            return [None] * len(works) if rows is None else step.split(works, rows)
        self.pool.copy_blocks(step.copies)
        if not step.ids:
            return [None] * len(works)
        lora = self.lora.batch([w.cache_id for w in works], step.first_row, step.counts)
        logits = None
        if self._graphs is not None and lora is None and self._graphs.accepts(works, step.counts):
            logits = self._graphs.run(step)
        if logits is None:
            logits = self._eager(step, lora)
        return step.split(works, logits.cpu().numpy())

    def run_shard(self, step: StepBatch) -> np.ndarray | None:
        """One step on this rank's shard (tensor parallelism; every rank runs it)."""
        self.pool.copy_blocks(step.copies)
        if not step.ids:
            return None
        with torch.inference_mode():
            logits: np.ndarray = self._eager(step, None).cpu().numpy()
            return logits

    def _eager(self, step: StepBatch, lora: LoraBatch | None) -> torch.Tensor:
        device = self.device
        meta = build_metadata(
            step.spans,
            step.slots,
            block_size=self.manager.block_size,
            group=self._group,
            sliding_window=self.model_config.sliding_window,
            device=device,
            workspace=self.workspace,
            kernels=self.kernels if self.native.kv_fused else None,
        )
        rows = None
        if step.logit_rows != list(range(len(step.ids))):
            rows = torch.tensor(step.logit_rows, dtype=torch.long).to(device)
        return self.transformer.forward(
            torch.tensor(step.ids, dtype=torch.long).to(device),
            torch.tensor(step.positions, dtype=torch.long).to(device),
            meta,
            rows,
            lora,
        )
