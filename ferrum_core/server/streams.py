"""Engine streams of one HTTP request: started (errors surface before any byte is sent),
merged across prompts, timed for the latency histograms, always closed (closing aborts)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferrum_core.engine.outputs import StreamDelta
    from ferrum_core.server.metrics import ServerMetrics

__all__ = ["Job", "start_streams", "merged"]


@dataclass(frozen=True, slots=True)
class Job:
    """One prompt of a request, as token ids."""

    prompt_ids: tuple[int, ...]
    request_id: str


@dataclass(slots=True)
class _Clock:
    arrival: float
    last: dict[int, float] = field(default_factory=dict)


async def _chain(first: StreamDelta, rest: AsyncIterator[StreamDelta]
                 ) -> AsyncIterator[StreamDelta]:
    try:
        yield first
        async for delta in rest:
            yield delta
    finally:
        await _close(rest)


async def _close(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with suppress(Exception):
            await aclose()


async def start_streams(engine: Any, jobs: Sequence[Job], params: Any
                        ) -> list[AsyncIterator[StreamDelta]]:
    """Add every job to the engine and wait for its first delta, so that a bad prompt is
    an error before the response starts; on any failure the others are aborted."""
    started: list[AsyncIterator[StreamDelta]] = []
    try:
        for job in jobs:
            stream = engine.generate({"prompt_token_ids": list(job.prompt_ids)}, params,
                                     request_id=job.request_id)
            try:
                first = await stream.__anext__()
            except BaseException:
                await _close(stream)
                raise
            started.append(_chain(first, stream))
    except BaseException:
        for stream in started:
            await _close(stream)
        raise
    return started


async def merged(streams: list[AsyncIterator[StreamDelta]], metrics: ServerMetrics | None,
                 arrival: float) -> AsyncGenerator[tuple[int, StreamDelta], None]:
    """(prompt index, delta) from every stream as they come; leaving early (or being
    cancelled) closes every stream, which aborts its request."""
    clocks = [_Clock(arrival) for _ in streams]
    if len(streams) == 1:  # the common case: no task, no queue
        try:
            async for delta in streams[0]:
                if metrics is not None and delta.token_ids:
                    _observe(metrics, clocks[0], delta)
                yield 0, delta
        finally:
            await _close(streams[0])
        return
    queue: asyncio.Queue[tuple[int, StreamDelta | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[StreamDelta]) -> None:
        try:
            async for delta in stream:
                await queue.put((i, delta))
            await queue.put((i, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put((i, exc))
        finally:
            await _close(stream)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            if metrics is not None and item.token_ids:
                _observe(metrics, clocks[i], item)
            yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _observe(metrics: ServerMetrics, clock: _Clock, delta: StreamDelta) -> None:
    now = time.perf_counter()
    index = delta.index
    previous = clock.last.get(index)
    if previous is None:
        metrics.ttft.observe(now - clock.arrival)
    else:
        metrics.tpot.observe((now - previous) / len(delta.token_ids), len(delta.token_ids))
    clock.last[index] = now
