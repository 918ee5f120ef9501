"""Pydantic models of the OpenAI requests Ferrum serves.

Known fields are checked strictly (a string is not a number); unknown fields are
ignored; fields OpenAI has but Ferrum does not implement are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

from ferrum_core.server.errors import ApiError

__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "StreamOptions",
    "refuse_unsupported",
]

StrictStr = Annotated[str, Strict()]
StrictInt = Annotated[int, Strict()]

# OpenAI fields Ferrum lacks, with the value that means "not used" (accepted).
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None,),
    "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
}

def refuse_unsupported(body: Mapping[str, Any]) -> None:
    """400 naming an OpenAI field Ferrum does not implement (unless it is set to its no-op)."""
    for name, neutral in _UNSUPPORTED.items():
        if name in body and not any(body[name] == value for value in neutral):
            raise ApiError(400, f"'{name}' is not supported by this server", param=name,
                           code="unsupported_parameter")

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(default=False, strict=True)

class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, strict=True)
    n: int | None = Field(default=None, ge=1, le=16, strict=True)
    seed: int | None = Field(default=None, ge=0, lt=2**63, strict=True)
    stop: StrictStr | list[StrictStr] | None = None
    stream: bool | None = Field(default=None, strict=True)
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, strict=True)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, strict=True)
    user: StrictStr | None = None
    # vLLM's extensions
    top_k: int | None = Field(default=None, ge=-1, strict=True)
    ignore_eos: bool = Field(default=False, strict=True)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

class CompletionRequest(_Common):
    """``POST /v1/completions``: prompt as text, list of texts, token ids or lists of ids."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    logprobs: int | None = Field(default=None, ge=0, le=20, strict=True)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("the prompt list is empty")
        return value

class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None

class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    logprobs: bool | None = Field(default=None, strict=True)
    top_logprobs: int | None = Field(default=None, ge=0, le=20, strict=True)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        if self.logprobs:
            return self.top_logprobs or 0
        if self.top_logprobs is not None:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs",
                           code="invalid_value")
        return None
