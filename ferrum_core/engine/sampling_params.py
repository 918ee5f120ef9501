"""`SamplingParams`: how one request picks its tokens (vLLM's names)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from ferrum_core.errors import InvalidInputError
from ferrum_core.models.tokenizer import utf8_text

__all__ = ["SamplingParams", "validation_message"]

# Strict per field: an int is an int (not a bool, a str or 3.0), a float takes ints.
StrictInt = Annotated[int, Strict()]


def validation_message(error: ValidationError) -> str:
    """One line naming every offending field, e.g. ``temperature: must be >= 0``."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "value"
        got = ""
        if item["type"].endswith("_type"):  # a wrong type: say what was given
            got = f" (got {item['input']!r}, a {type(item['input']).__name__})"
        parts.append(f"{where}: {item['msg']}{got}")
    return "; ".join(parts)


class SamplingParams(BaseModel):
    """Sampling settings of one request.

    ``temperature == 0`` means greedy. ``top_k <= 0`` (or ``-1``) disables top-k;
    ``top_p == 1`` and ``min_p == 0`` disable theirs. ``stop`` strings end the
    output (the stop string itself is not included); ``stop_token_ids`` and,
    unless ``ignore_eos``, the model's EOS ids end it too. ``logprobs = N`` asks
    for the N most likely tokens' log-probabilities (plus the sampled one) at
    every generated position. Bad values raise :class:`InvalidInputError` naming the
    field; values are never coerced (``max_tokens="3"`` or ``True`` is refused). Stop
    token ids outside the model's vocabulary are refused when the request is added.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=1.0, ge=0.0, le=100.0, strict=True)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, strict=True)
    top_k: int = Field(default=-1, ge=-1, strict=True)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0, strict=True)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=100.0, strict=True)
    max_tokens: int = Field(default=16, ge=1, strict=True)
    stop: tuple[Annotated[str, Strict()], ...] = ()
    stop_token_ids: tuple[StrictInt, ...] = ()
    seed: int | None = Field(default=None, ge=0, lt=2**64, strict=True)
    logprobs: int | None = Field(default=None, ge=0, le=100, strict=True)
    ignore_eos: bool = Field(default=False, strict=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            message = validation_message(err)
            raise InvalidInputError(f"invalid sampling parameters: {message}") from None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: Any) -> Any:
        if value is None:
            return ()
        return (value,) if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("stop strings must be non-empty")
        for i, text in enumerate(value):
            try:
                utf8_text(text, f"stop string {i}")
            except InvalidInputError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("stop_token_ids", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return () if value is None else value

    @field_validator("stop_token_ids")
    @classmethod
    def _non_negative_ids(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(t < 0 for t in value):
            raise ValueError("token ids must be >= 0")
        return value

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def uses_penalty(self) -> bool:
        return self.repetition_penalty != 1.0
