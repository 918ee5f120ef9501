"""One request inside the engine: its sequence, sampler, text, timings and outputs.

A request with ``n > 1`` runs as ``n`` of these: each has its own internal id
(``seq.request_id``, the executor's key) and reports under the caller's
``public_id`` with its ``index``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ferrum_core.engine.lora import LoRARequest
from ferrum_core.engine.outputs import (
    CompletionOutput,
    RequestMetrics,
    RequestOutput,
    StreamDelta,
)
from ferrum_core.engine.sampler import SamplerState, sample_token
from ferrum_core.engine.sampling_params import SamplingParams
from ferrum_core.engine.sequence import FinishReason, Sequence
from ferrum_core.engine.streaming import OutputText, TokenTextDecoder

__all__ = ["Request"]


@dataclass(slots=True, eq=False)
class Request:
    seq: Sequence
    prompt: str | None
    params: SamplingParams
    sampler: SamplerState
    text: OutputText
    stop_token_ids: frozenset[int]
    max_model_len: int
    public_id: str = ""
    index: int = 0
    arrival_time: float = field(default_factory=time.perf_counter)
    logprobs: list[dict[int, float]] | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    spec_proposed: int = 0
    spec_accepted: int = 0
    _delivered_tokens: int = 0

    @classmethod
    def create(
        cls,
        request_id: str,
        prompt_token_ids: tuple[int, ...],
        params: SamplingParams,
        *,
        prompt: str | None,
        lora_request: LoRARequest | None,
        decoder: TokenTextDecoder,
        eos_token_ids: frozenset[int],
        max_model_len: int,
        public_id: str | None = None,
        index: int = 0,
    ) -> Request:
        stops = frozenset(params.stop_token_ids)
        if not params.ignore_eos:
            stops |= eos_token_ids
        seq = Sequence(
            request_id=request_id,
            prompt_token_ids=prompt_token_ids,
            max_tokens=params.max_tokens,
            metadata=lora_request.metadata() if lora_request else {},
            cache_salt=lora_request.name if lora_request else None,
        )
        return cls(
            seq=seq,
            prompt=prompt,
            params=params,
            sampler=SamplerState.create(params, prompt_token_ids, index),
            text=OutputText(decoder, params.stop),
            stop_token_ids=stops,
            max_model_len=max_model_len,
            logprobs=[] if params.logprobs is not None else None,
            public_id=request_id if public_id is None else public_id,
            index=index,
        )

    @property
    def request_id(self) -> str:
        return self.seq.request_id

    @property
    def finished(self) -> bool:
        return self.seq.is_finished

    def mark_scheduled(self, now: float) -> None:
        if self.first_scheduled_time is None:
            self.first_scheduled_time = now

    def sample(self, row: np.ndarray) -> int:
        """Sample the next token from ``row``, record it; returns the token id."""
        picked = sample_token(row, self.sampler)
        if self.logprobs is not None and picked.top_logprobs is not None:
            self.logprobs.append(picked.top_logprobs)
        self._append(picked.token_id)
        return picked.token_id

    def _append(self, token: int) -> None:
        now = time.perf_counter()
        if self.first_token_time is None:
            self.first_token_time = now
        self.last_token_time = now
        seq = self.seq
        seq.append_token(token)
        if token in self.stop_token_ids or self.text.add(token):
            self.finish(FinishReason.STOP)
        elif len(seq.output_token_ids) >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
            self.finish(FinishReason.LENGTH)

    def finish(self, reason: FinishReason) -> None:
        if not self.seq.is_finished:
            self.text.flush()
            self.seq.finish(reason)
            self.finished_time = time.perf_counter()

    def remaining_tokens(self) -> int:
        """Tokens this request may still emit (output and context limits)."""
        seq = self.seq
        return max(0, min(seq.max_tokens - len(seq.output_token_ids),
                          self.max_model_len - seq.num_tokens))

    def take_delta(self) -> StreamDelta:
        tokens = self.seq.output_token_ids
        new = tuple(tokens[self._delivered_tokens :])
        logprobs = None
        if self.logprobs is not None:
            logprobs = tuple(self.logprobs[self._delivered_tokens :])
        self._delivered_tokens = len(tokens)
        reason = self.seq.finish_reason
        return StreamDelta(
            request_id=self.public_id,
            index=self.index,
            text=self.text.take_delta(final=self.finished),
            token_ids=new,
            finish_reason=None if reason is None else reason.value,
            logprobs=logprobs,
        )

    def metrics(self) -> RequestMetrics:
        return RequestMetrics(
            arrival_time=self.arrival_time,
            first_scheduled_time=self.first_scheduled_time,
            first_token_time=self.first_token_time,
            last_token_time=self.last_token_time,
            finished_time=self.finished_time,
            num_prompt_tokens=self.seq.num_prompt_tokens,
            num_generated_tokens=len(self.seq.output_token_ids),
            num_preemptions=self.seq.num_preemptions,
            spec_proposed_tokens=self.spec_proposed,
            spec_accepted_tokens=self.spec_accepted,
        )

    def output(self) -> RequestOutput:
        reason = self.seq.finish_reason
        completion = CompletionOutput(
            text=self.text.text,
            token_ids=tuple(self.seq.output_token_ids),
            finish_reason=None if reason is None else reason.value,
            logprobs=None if self.logprobs is None else tuple(self.logprobs),
            index=self.index,
        )
        return RequestOutput(
            request_id=self.public_id,
            prompt=self.prompt,
            prompt_token_ids=self.seq.prompt_token_ids,
            outputs=(completion,),
            metrics=self.metrics(),
        )
