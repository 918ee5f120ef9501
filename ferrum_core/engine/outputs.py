"""What `LLM.generate` and `LLM.stream` hand back (vLLM's names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RequestMetrics", "CompletionOutput", "RequestOutput", "StreamDelta", "EngineStats"]


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    """Wall-clock timestamps (``time.perf_counter``) of one request and derived rates."""

    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    last_token_time: float | None
    finished_time: float | None
    num_prompt_tokens: int
    num_generated_tokens: int
    num_preemptions: int = 0
    spec_proposed_tokens: int = 0
    spec_accepted_tokens: int = 0

    @property
    def ttft_s(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def prefill_tokens_per_s(self) -> float | None:
        if self.first_token_time is None or self.first_scheduled_time is None:
            return None
        elapsed = self.first_token_time - self.first_scheduled_time
        return self.num_prompt_tokens / elapsed if elapsed > 0 else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        if self.first_token_time is None or self.last_token_time is None:
            return None
        elapsed = self.last_token_time - self.first_token_time
        return (self.num_generated_tokens - 1) / elapsed if elapsed > 0 else None

    @property
    def latency_s(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time

    @property
    def acceptance_rate(self) -> float | None:
        if self.spec_proposed_tokens == 0:
            return None
        return self.spec_accepted_tokens / self.spec_proposed_tokens

    def timings(self) -> dict[str, Any]:
        """JSON-ready summary (the CLI's ``timings`` object)."""
        out: dict[str, Any] = {
            "ttft_s": self.ttft_s,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "latency_s": self.latency_s,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_generated_tokens": self.num_generated_tokens,
            "num_preemptions": self.num_preemptions,
        }
        if self.spec_proposed_tokens:
            out["spec_acceptance_rate"] = self.acceptance_rate
        return out


@dataclass(frozen=True, slots=True)
class CompletionOutput:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None
    logprobs: tuple[dict[int, float], ...] | None = None
    index: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: tuple[int, ...]
    outputs: tuple[CompletionOutput, ...]
    metrics: RequestMetrics

    @property
    def finished(self) -> bool:
        return all(o.finished for o in self.outputs)


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """New text and tokens of one request since its previous delta.

    ``index`` says which of the request's ``n`` completions moved (0 when ``n == 1``).
    """

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    logprobs: tuple[dict[int, float], ...] | None = None
    index: int = 0

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of the engine's load (``AsyncLLM.stats()``, the server's metrics).

    ``kv_blocks_*`` are ``None`` where the backend has no paged KV pool; the token
    totals count since the engine started (prompt tokens once per request).
    """

    num_running: int
    num_waiting: int
    kv_blocks_total: int | None
    kv_blocks_free: int | None
    prompt_tokens_total: int
    generation_tokens_total: int
