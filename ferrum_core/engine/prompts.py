"""Prompt shapes `LLM` accepts: text, ``{"prompt_token_ids": [...]}``, chat messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ferrum_core.errors import InvalidInputError

__all__ = ["PromptInput", "Messages", "batch_of", "messages_batch"]

PromptInput = str | Mapping[str, Any]
Messages = Sequence[Mapping[str, Any]]


def batch_of(prompts: PromptInput | Sequence[PromptInput]) -> list[PromptInput]:
    """One prompt or a list of them, as a list (each text or a token-prompt mapping)."""
    if isinstance(prompts, str | Mapping):
        return [prompts]
    if not isinstance(prompts, Sequence):
        raise InvalidInputError(f"prompts must be text or a list, got {type(prompts).__name__}")
    items = list(prompts)
    if not items:
        raise InvalidInputError("no prompts given")
    for item in items:
        if not isinstance(item, str | Mapping):
            raise InvalidInputError(
                "each prompt is a str or {'prompt_token_ids': [...]}, got "
                f"{type(item).__name__}"
            )
    return items


def messages_batch(messages: Messages | Sequence[Messages]) -> list[Messages]:
    """One conversation (a list of role/content mappings) or a list of conversations."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise InvalidInputError("messages must be a non-empty list of {'role', 'content'} dicts")
    first = messages[0]
    conversations = [messages] if isinstance(first, Mapping) else list(messages)
    for conv in conversations:
        if not isinstance(conv, Sequence) or not conv or not all(
            isinstance(m, Mapping) and "role" in m and "content" in m for m in conv
        ):
            raise InvalidInputError("each message needs a 'role' and a 'content'")
    return conversations  # type: ignore[return-value]
