"""`ferrum serve`: an OpenAI-compatible HTTP server over :class:`AsyncLLM`.

Importing this package imports FastAPI; the CLI imports it only when the
``serve`` command runs.
"""

from __future__ import annotations

from ferrum_core.server.app import ServerSettings, create_app
from ferrum_core.server.engine_slot import EngineSlot

__all__ = ["EngineSlot", "ServerSettings", "create_app"]
