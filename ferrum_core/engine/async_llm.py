"""`AsyncLLM`: the engine for asyncio callers (the OpenAI-compatible server).

One daemon thread (`EngineLoop`) owns the engine steps; each `generate` call
gets an asyncio queue that the thread feeds (one ``call_soon_threadsafe`` per
event loop per step, carrying every delta of that step), so requests from any
number of coroutines (and threads using :attr:`llm` synchronously) join the same
continuous batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ferrum_core.engine.engine_loop import EngineLoop
from ferrum_core.engine.llm import LLM
from ferrum_core.engine.lora import LoRARequest
from ferrum_core.engine.outputs import EngineStats, StreamDelta
from ferrum_core.engine.prompt_ids import encode_prompt
from ferrum_core.engine.prompts import PromptInput
from ferrum_core.engine.sampling_params import SamplingParams
from ferrum_core.errors import ExecutorStateError, InvalidInputError

__all__ = ["AsyncLLM"]

_ids = itertools.count()

_Item = StreamDelta | BaseException


class _Outbox:
    """Deltas produced in the loop thread during one engine step, handed to their event
    loops in one ``call_soon_threadsafe`` per loop after the step (one wake-up per step,
    not one per request). Deltas from any other thread (a synchronous `LLM` caller that
    stepped the engine) are handed over at once, since no flush would follow them."""

    __slots__ = ("_loop_thread", "_pending")

    def __init__(self) -> None:
        self._loop_thread: threading.Thread | None = None
        self._pending: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[_Item], _Item]] = []

    def bind(self, thread: threading.Thread) -> None:
        self._loop_thread = thread

    def put(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[_Item],
            item: _Item) -> None:
        if threading.current_thread() is self._loop_thread:
            self._pending.append((loop, queue, item))
        else:
            _call_soon(loop, _hand_over, [(queue, item)])

    def flush(self) -> None:
        """In the loop thread, after a step: one hand-over per event loop."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[_Item], _Item]]] = {}
        for loop, queue, item in pending:
            by_loop.setdefault(loop, []).append((queue, item))
        for loop, items in by_loop.items():
            _call_soon(loop, _hand_over, items)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, items: Any) -> None:
    # RuntimeError: the caller's event loop is closed, nobody is listening
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, items)


def _hand_over(items: list[tuple[asyncio.Queue[_Item], _Item]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


class _QueueSink:
    """Hands deltas from the engine to one request's asyncio queue (through the outbox)."""

    __slots__ = ("_loop", "_outbox", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop, outbox: _Outbox) -> None:
        self._loop = loop
        self._outbox = outbox
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()

    def deliver(self, delta: StreamDelta) -> None:
        self._outbox.put(self._loop, self.queue, delta)

    def fail(self, error: BaseException) -> None:
        self._outbox.put(self._loop, self.queue, error)


class AsyncLLM:
    """A model on a backend, generating for asyncio callers.

    Takes the same arguments as :class:`LLM` (or wraps one with :meth:`from_llm`).
    :meth:`generate` yields :class:`StreamDelta` as tokens arrive; leaving its
    iterator early (``aclose()``, cancellation, a client gone) aborts the request
    and frees its KV. :meth:`close` stops the loop and shuts the executor down.
    """

    def __init__(self, model: str | Path | None = None, backend: str | None = None,
                 **config: Any) -> None:
        self._start(LLM(model, backend, **config))

    @classmethod
    def from_llm(cls, llm: LLM) -> AsyncLLM:
        """Wrap an already-built :class:`LLM`: same engine; its synchronous calls keep
        working and share batches with the async ones."""
        self = cls.__new__(cls)
        self._start(llm)
        return self

    def _start(self, llm: LLM) -> None:
        self.llm = llm
        self._closed = False
        self._outbox = _Outbox()
        self._loop = EngineLoop(llm, on_exit=self._fail_pending, after_step=self._outbox.flush)
        self._outbox.bind(self._loop.thread)

    # --- generation -----------------------------------------------------------------
    async def generate(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Yield deltas as tokens arrive; with ``params.n > 1`` each carries its
        ``index`` and the iterator ends when all ``n`` completions have finished.
        Bad input raises from the first ``__anext__``, before any delta."""
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidInputError(
                f"sampling params must be a SamplingParams, got {type(params).__name__}"
            )
        if lora_request is not None and not isinstance(lora_request, LoRARequest):
            raise InvalidInputError(
                f"lora_request must be a LoRARequest, got {type(lora_request).__name__}"
            )
        self._check_open()
        ids, text = encode_prompt(self.llm.tokenizer, prompt)
        rid = request_id if request_id is not None else f"areq-{next(_ids)}"
        sink = _QueueSink(asyncio.get_running_loop(), self._outbox)
        llm = self.llm

        def add() -> None:
            try:
                llm._add_with_sink(ids, text, params, lora_request, rid, sink)
            except Exception as exc:
                sink.fail(exc)

        def forget() -> None:
            if llm._sinks.get(rid) is sink:  # not another request that reused the id
                llm._forget(rid)

        self._loop.submit(add)
        unfinished = params.n
        try:
            while unfinished:
                item = await sink.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finish_reason is not None
                unfinished -= finished
                if item.text or item.token_ids or finished:
                    yield item
        finally:
            self._loop.submit(forget)

    async def abort(self, request_id: str) -> None:
        """Abort a request; its iterator ends with ``finish_reason == "abort"``."""
        engine = self.llm.engine
        self._loop.submit(lambda: engine.abort_request(request_id))

    # --- state ----------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """Current load; the last step's snapshot while a step is running."""
        lock = self.llm._lock
        if lock.acquire(blocking=False):
            try:
                return self.llm.engine.load()
            finally:
                lock.release()
        return self._loop.last_stats

    @property
    def num_steps(self) -> int:
        """Engine steps taken by the loop thread (not by synchronous callers)."""
        return self._loop.num_steps

    @property
    def is_ready(self) -> bool:
        return not self._closed and self._loop.is_alive

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorStateError("this AsyncLLM is closed")

    def _fail_pending(self) -> None:
        """In the loop thread as it exits (lock held): end every open iterator."""
        error = ExecutorStateError("the AsyncLLM was closed while the request ran")
        for request_id, sink in list(self.llm._sinks.items()):
            sink.fail(error)
            self.llm._forget(request_id)

    # --- shutdown -------------------------------------------------------------------
    def close(self) -> None:
        """Stop the loop thread (open iterators raise), then shut the executor down."""
        if self._closed:
            return
        self._closed = True
        self._loop.stop()
        self.llm.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> AsyncLLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
