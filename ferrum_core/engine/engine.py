"""`LLMEngine`: requests in, one scheduled forward per `step()`, deltas out.

Everything goes through the executor protocol; the engine never asks which
backend it drives. When the executor runs out of KV blocks, the step's
forwards are rolled back and the newest running request is preempted (its KV
is recomputed when it is admitted again). docs/architecture.md follows a request
through the engine, scheduler, runner, executor and model.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from ferrum_core.engine.admission import check_prompt, check_stop_ids
from ferrum_core.engine.config import EngineConfig
from ferrum_core.engine.lora import LoRARequest
from ferrum_core.engine.outputs import EngineStats, RequestOutput, StreamDelta
from ferrum_core.engine.parallel import child_keys, merge_outputs
from ferrum_core.engine.prompts import token_ids_of
from ferrum_core.engine.request import Request
from ferrum_core.engine.runner import ExecutorRunner
from ferrum_core.engine.sampling_params import SamplingParams
from ferrum_core.engine.scheduler import PoolView, Scheduler, SchedulerConfig
from ferrum_core.engine.sequence import FinishReason
from ferrum_core.engine.spec_step import SpeculativeStepper
from ferrum_core.engine.speculative import SpeculativePair
from ferrum_core.engine.streaming import TokenTextDecoder
from ferrum_core.engine.work import Work
from ferrum_core.errors import (
    InvalidInputError,
    KvPoolExhaustedError,
    UnsupportedError,
)
from ferrum_core.kv.pool_state import KvPoolState
from ferrum_core.protocol import ModelExecutor

__all__ = ["LLMEngine"]

_ids = itertools.count()


class LLMEngine:
    def __init__(
        self,
        executor: ModelExecutor,
        *,
        detokenizer: Callable[[], TokenTextDecoder],
        eos_token_ids: Sequence[int] = (),
        config: EngineConfig | None = None,
        draft: ModelExecutor | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self._detokenizer = detokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.capabilities = executor.capabilities()
        if draft is not None:
            for role, ex in (("model", executor), ("draft model", draft)):
                if not ex.capabilities().supports_speculative_decoding:
                    raise UnsupportedError(
                        f"the {role}'s executor does not support speculative decoding"
                        " (forward_verify + truncate_kv)"
                    )
        self.pair = SpeculativePair(executor, draft) if draft is not None else None
        self.runner = ExecutorRunner(self.pair or executor)
        self.draft_runner = ExecutorRunner(draft) if draft is not None else None
        self.spec: SpeculativeStepper | None = None
        if self.pair is not None and self.draft_runner is not None:
            self.spec = SpeculativeStepper(
                self.pair, self.runner, self.draft_runner, self.config.num_speculative_tokens
            )
        # the executor rejects batches above its max_batch_size
        max_num_seqs = min(self.config.max_num_seqs, self.capabilities.max_batch_size)
        self.scheduler = Scheduler(
            SchedulerConfig(max_num_seqs, self.config.max_num_batched_tokens)
        )
        info = executor.info()
        self.vocab_size = info.vocab_size
        limits = [info.max_sequence_length, executor.kv_capacity(), self.config.max_model_len]
        self.max_model_len = min(v for v in limits if v is not None)
        self._requests: dict[str, Request] = {}  # by internal id (one per completion)
        self._groups: dict[str, tuple[str, ...]] = {}  # caller's id -> internal ids
        self._aborted: list[Request] = []
        self.num_preemptions = 0
        self.max_num_running = 0  # the largest batch of running sequences seen
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    # --- requests -------------------------------------------------------------------
    def add_request(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams | None = None,
        *,
        prompt: str | None = None,
        lora_request: LoRARequest | None = None,
        request_id: str | None = None,
    ) -> str:
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidInputError(
                f"sampling params must be a SamplingParams, got {type(params).__name__}"
            )
        ids = token_ids_of(prompt_token_ids)
        check_prompt(ids, self.vocab_size, self.max_model_len, self._pool_view())
        check_stop_ids(params.stop_token_ids, self.vocab_size)
        request_id = request_id if request_id is not None else f"req-{next(_ids)}"
        keys = child_keys(request_id, params.n)
        if request_id in self._groups or any(k in self._requests for k in keys):
            raise InvalidInputError(f"duplicate request id {request_id!r}")
        if lora_request is not None and not self.capabilities.supports_lora:
            raise UnsupportedError("this backend's executor does not support LoRA adapters")
        for index, key in enumerate(keys):
            request = Request.create(
                key, ids, params, prompt=prompt, lora_request=lora_request,
                decoder=self._detokenizer(), eos_token_ids=self.eos_token_ids,
                max_model_len=self.max_model_len, public_id=request_id, index=index,
            )
            self._requests[key] = request
            self.scheduler.add(request.seq)
        self._groups[request_id] = keys
        self.prompt_tokens_total += len(ids)
        return request_id

    def abort_request(self, request_id: str) -> None:
        """Abort every completion of a request (a no-op once finished or unknown)."""
        for key in self._groups.get(request_id, ()):
            self._abort(self._requests[key])

    def _abort(self, request: Request) -> None:
        if request.finished:
            return
        self.scheduler.remove(request.request_id)
        request.finish(FinishReason.ABORT)
        self._release(request.request_id)
        self._aborted.append(request)

    def is_finished(self, request_id: str) -> bool:
        """Whether every completion of the request has finished (see `pop_output`)."""
        keys = self._groups.get(request_id)
        if keys is None:
            raise InvalidInputError(f"unknown request id {request_id!r}")
        return all(self._requests[k].finished for k in keys)

    def has_request(self, request_id: str) -> bool:
        """Whether the engine holds the request (running, or finished but not popped)."""
        return request_id in self._groups

    def request_ids(self) -> list[str]:
        """Every request the engine holds (running, or finished but not popped)."""
        return list(self._groups)

    def unfinished_request_ids(self) -> list[str]:
        return [rid for rid, keys in self._groups.items()
                if not all(self._requests[k].finished for k in keys)]

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished or bool(self._aborted)

    def pop_output(self, request_id: str) -> RequestOutput:
        """The final output of a finished request (and forget it)."""
        if not self.is_finished(request_id):
            raise InvalidInputError(f"request {request_id!r} has not finished")
        keys = self._groups.pop(request_id)
        return merge_outputs([self._requests.pop(k).output() for k in keys])

    # --- one step -------------------------------------------------------------------
    def step(self) -> list[StreamDelta]:
        """Schedule and run one batch; returns a delta per request that moved."""
        touched: list[Request] = self._aborted
        self._aborted = []
        pool = self._pool_view() if self.scheduler.waiting else None
        works = self.scheduler.schedule(pool)
        self.max_num_running = max(self.max_num_running, len(self.scheduler.running))
        now = time.perf_counter()
        for work in works:
            self._requests[work.key].mark_scheduled(now)
        decoding: list[Request] = []
        plain: list[Work] = []
        for work in works:
            if self.spec is not None and len(work.tokens) == 1 and work.final:
                decoding.append(self._requests[work.key])
            else:
                plain.append(work)
        ok = self._run_plain(plain, touched)
        if ok and decoding and self.spec is not None:
            touched.extend(self.spec.run(decoding, self._preempt))
        for request in touched:
            if request.finished:
                self._retire(request)
        seen: set[str] = set()
        deltas = []
        for request in touched:
            if request.request_id not in seen:
                seen.add(request.request_id)
                delta = request.take_delta()
                self.generation_tokens_total += len(delta.token_ids)
                deltas.append(delta)
        return deltas

    def _run_plain(self, works: list[Work], touched: list[Request]) -> bool:
        if not works:
            return True
        try:
            rows = self.runner.run(works)
        except KvPoolExhaustedError:  # every item is rolled back (executor, or runner fallback)
            self._preempt()
            return False
        for work, row in zip(works, rows, strict=True):
            request = self._requests[work.key]
            request.seq.num_computed = work.pos + len(work.tokens)  # the length's owner
            if row is not None and work.final:
                request.sample(row)
                touched.append(request)
        return True

    def _preempt(self) -> None:
        running = self.scheduler.running
        if len(running) <= 1:
            # nothing else to evict: this one request cannot grow any further
            lone = running[0] if running else None
            if lone is None:
                raise KvPoolExhaustedError("KV pool exhausted with no running request")
            request = self._requests[lone.request_id]
            if not lone.output_token_ids:
                self._abort(request)
                raise KvPoolExhaustedError(
                    f"request {lone.request_id}: {lone.num_tokens} tokens do not fit in the KV pool"
                )
            request.finish(FinishReason.LENGTH)
            self._aborted.append(request)
            self._retire(request)
            return
        victim = self.scheduler.preempt_newest()
        if victim is not None:
            self.num_preemptions += 1
            self._release(victim.request_id)

    def _retire(self, request: Request) -> None:
        self.scheduler.finish(request.seq)
        self._release(request.request_id)

    def _release(self, request_id: str) -> None:
        self.runner.release(request_id)
        if self.draft_runner is not None:
            self.draft_runner.release(request_id)

    def _pool_state(self) -> KvPoolState | None:
        return KvPoolState.from_snapshot(self.runner.executor.cache_metrics_snapshot())

    def _pool_view(self) -> PoolView | None:
        prefix = self.config.enable_prefix_caching and self.capabilities.supports_prefix_caching
        return PoolView.of(self._pool_state(), prefix)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_preemptions": self.num_preemptions,
                               "executor_calls": dict(self.runner.calls)}
        if self.spec is not None:
            out["spec_proposed_tokens"] = self.spec.proposed
            out["spec_accepted_tokens"] = self.spec.accepted
            out["spec_acceptance_rate"] = (
                self.spec.accepted / self.spec.proposed if self.spec.proposed else None
            )
        return out

    def load(self) -> EngineStats:
        """Running and waiting sequences (one per completion), the KV pool, token totals."""
        pool = self._pool_state()
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_blocks_total=pool.blocks_total if pool is not None else None,
            kv_blocks_free=pool.blocks_free if pool is not None else None,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
        )

    def shutdown(self) -> None:
        for request_id in list(self._groups):
            self.abort_request(request_id)
        self._aborted.clear()
