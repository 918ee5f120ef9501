"""`EngineSlot`: the engine a server answers with, loaded in a background thread.

`ferrum serve` opens its port first and loads the model meanwhile, so a client sees
``503`` (code ``engine_loading``, a ``Retry-After`` header) rather than a refused
connection until the engine is ready. A load that fails is kept in :attr:`error` and
reported to ``on_failure`` (the command stops the server and exits 1 with it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ferrum_core.server.errors import ApiError

__all__ = ["EngineSlot", "RETRY_AFTER_S"]

RETRY_AFTER_S = 1


class EngineSlot:
    """Empty while loading; then holds the engine (an :class:`AsyncLLM`), or the error."""

    def __init__(self, engine: Any | None = None, *, aliases: tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._engine = engine
        self._closed = False
        self.aliases = aliases
        self.error: BaseException | None = None

    @property
    def engine(self) -> Any | None:
        return self._engine

    def load_in_background(self, build: Callable[[], tuple[Any, tuple[str, ...]]], *,
                           on_failure: Callable[[BaseException], None]) -> threading.Thread:
        """Run ``build`` (returns the engine and the model names it adds) in a daemon
        thread; the slot serves its engine once it returns."""

        def load() -> None:
            try:
                engine, aliases = build()
            except BaseException as exc:  # reported to the main thread, which re-raises
                self.error = exc
                on_failure(exc)
                return
            with self._lock:
                closed = self._closed
                if not closed:
                    self.aliases, self._engine = aliases, engine
            if closed:  # the server stopped while we loaded
                engine.close()

        thread = threading.Thread(target=load, name="ferrum-engine-load", daemon=True)
        thread.start()
        return thread

    def ready(self) -> Any:
        """The engine, or the 503 a client gets while there is none able to serve."""
        engine = self._engine
        if engine is None:
            if self.error is not None:
                raise ApiError(503, "the engine failed to load; the server is stopping",
                               code="engine_unavailable")
            raise ApiError(503, "the engine is still loading the model; retry shortly",
                           code="engine_loading", headers={"Retry-After": str(RETRY_AFTER_S)})
        if not engine.is_ready:
            raise ApiError(503, "the engine is not ready", code="engine_unavailable")
        return engine

    def stats(self) -> Any | None:
        engine = self._engine
        return None if engine is None else engine.stats()

    def close(self) -> None:
        """Close the engine (now, or as soon as a load still under way finishes)."""
        with self._lock:
            self._closed = True
            engine = self._engine
        if engine is not None:
            engine.close()
