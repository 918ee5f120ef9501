"""`DeltaSink`: where a request's deltas go when another thread consumes them."""

from __future__ import annotations

from typing import Protocol

from ferrum_core.engine.outputs import StreamDelta

__all__ = ["DeltaSink"]


class DeltaSink(Protocol):
    """Fed by whichever thread steps the engine (`LLM`'s lock held): must not block.

    `AsyncLLM` hands each request's deltas to its asyncio queue through one.
    """

    def deliver(self, delta: StreamDelta) -> None: ...

    def fail(self, error: BaseException) -> None: ...
