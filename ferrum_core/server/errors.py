"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` and their status."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ferrum_core.errors import (
    CapacityError,
    ExecutorStateError,
    FerrumError,
    InvalidInputError,
    UnsupportedError,
)

__all__ = ["ApiError", "error_body", "from_ferrum_error", "from_validation_error"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    503: "service_unavailable_error",
    500: "server_error",
}


class ApiError(FerrumError):
    """An error answered to an HTTP client with ``status`` and an OpenAI error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.status, param=self.param, code=self.code)


def error_body(message: str, status: int, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def from_ferrum_error(exc: FerrumError) -> ApiError:
    """The status a Ferrum error deserves: the request's fault is 400, the engine's 503/500."""
    if isinstance(exc, ApiError):
        return exc
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, CapacityError):
        return ApiError(400, message, code="context_length_exceeded")
    if isinstance(exc, InvalidInputError | UnsupportedError):
        return ApiError(400, message, code="invalid_value")
    if isinstance(exc, ExecutorStateError):
        return ApiError(503, message, code="engine_unavailable")
    return ApiError(500, f"{type(exc).__name__}: {message}", code="engine_error")


def from_validation_error(error: ValidationError) -> ApiError:
    """400 naming the first offending field (every problem is in the message)."""
    parts = []
    param: str | None = None
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "body"
        param = param or where
        got = ""
        if item["type"].endswith("_type") or item["type"] == "literal_error":
            got = f" (got {item['input']!r}, a {type(item['input']).__name__})"
        parts.append(f"{where}: {item['msg']}{got}")
    return ApiError(400, "; ".join(parts), param=param, code="invalid_value")
