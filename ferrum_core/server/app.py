"""The FastAPI app: OpenAI routes over one :class:`AsyncLLM`, with auth, body limit,
Prometheus metrics and OpenAI-shaped errors (never a traceback)."""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ferrum_core.errors import FerrumError
from ferrum_core.server.completions import prepare
from ferrum_core.server.engine_slot import EngineSlot
from ferrum_core.server.errors import (
    ApiError,
    error_body,
    from_ferrum_error,
    from_validation_error,
)
from ferrum_core.server.metrics import CONTENT_TYPE, ServerMetrics
from ferrum_core.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    refuse_unsupported,
)
from ferrum_core.server.responses import full_response, sse_events
from ferrum_core.server.streams import start_streams

__all__ = ["ServerSettings", "create_app"]


class ServerSettings(BaseModel):
    """What the server adds to the engine: names, key and limits."""

    model_config = ConfigDict(frozen=True)

    served_model_names: tuple[str, ...] = Field(min_length=1)
    api_key: str | None = None
    max_body_bytes: int = Field(default=1 << 20, ge=1024)


def _authorize(request: Request, settings: ServerSettings) -> None:
    if settings.api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                             settings.api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key")


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    too_big = ApiError(413, f"request body over this server's limit of {limit} bytes",
                       code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}",
                       code="invalid_json")
    return body


def create_app(engine: Any, settings: ServerSettings) -> FastAPI:
    """The app serving ``engine``: an :class:`AsyncLLM`, or an :class:`EngineSlot` still
    loading one. Until the engine is ready ``/health`` and every ``/v1/*`` route (after
    the API key check) answer 503 with code ``engine_loading`` and a ``Retry-After``
    header; ``/v1/models`` too, so that a listed model is one that can answer.
    ``/metrics`` answers throughout (``ferrum_engine_ready`` is 0 while loading)."""
    app = FastAPI(title="Ferrum", docs_url=None, redoc_url=None, openapi_url=None)
    slot = engine if isinstance(engine, EngineSlot) else EngineSlot(engine)
    metrics = ServerMetrics(slot.stats)
    app.state.slot, app.state.settings, app.state.metrics = slot, settings, metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(FerrumError)
    async def _ferrum_error(request: Request, exc: FerrumError) -> JSONResponse:
        error = from_ferrum_error(exc)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), exc.status_code),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        message = f"internal error ({type(exc).__name__}); the server keeps running"
        return JSONResponse(error_body(message, 500, code="internal_error"), status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        slot.ready()
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        _authorize(request, settings)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        _authorize(request, settings)
        slot.ready()
        cards = [{"id": name, "object": "model", "created": 0, "owned_by": "ferrum"}
                 for name in settings.served_model_names[:1]]
        return JSONResponse({"object": "list", "data": cards})

    async def serve(request: Request, kind: type[CompletionRequest | ChatCompletionRequest]
                    ) -> Response:
        arrival = time.perf_counter()
        _authorize(request, settings)
        engine = slot.ready()
        body = await _json_body(request, settings.max_body_bytes)
        refuse_unsupported(body)
        try:
            parsed = kind.model_validate(body)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        names = settings.served_model_names
        if parsed.model is not None and parsed.model not in names + slot.aliases:
            raise ApiError(404, f"the model '{parsed.model}' does not exist; this server "
                           f"serves '{names[0]}'", param="model", code="model_not_found")
        prepared = prepare(engine, parsed, names[0])
        streams = await start_streams(engine, prepared.jobs, prepared.params)
        if parsed.stream:
            return StreamingResponse(sse_events(engine, prepared, streams, metrics, arrival),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return JSONResponse(await full_response(engine, prepared, streams, metrics, arrival))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serve(request, CompletionRequest)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serve(request, ChatCompletionRequest)

    return app
