"""What ``ferrum info`` says about tensor parallelism (static: no model, no torch import)."""

from __future__ import annotations

__all__ = ["tp_details"]


def tp_details(collectives: str) -> dict[str, object]:
    """The ``tensor_parallel`` entry of the backend's details; an executor reports its size
    in ``cache_metrics_snapshot()["tensor_parallel_size"]`` and its capabilities."""
    return {
        "option": "tensor_parallel_size (--tensor-parallel-size, LLM(tensor_parallel_size=N))",
        "collectives": collectives,
        "sizes": "N with heads % N == 0, KV heads % N == 0 or N % KV heads == 0 "
        "(replicated), intermediate % N == 0",
        "launch": "python -m ferrum_cuda.tp.worker subprocesses, or the torchrun group",
        "one_thread_per_rank": True,
        "lora": False,
        "prefix_caching": True,
        "native_unified_decode": True,
    }
