"""Prompt shapes `LLM` accepts: text, ``{"prompt_token_ids": [...]}``, chat messages.

Everything is checked before it reaches the tokenizer or the engine: text must
be valid UTF-8, token ids must be ints (never bools, strings or floats, which
would be coerced or truncated), chat messages need text roles and contents.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ferrum_core.errors import InvalidInputError
from ferrum_core.models.tokenizer import utf8_text

__all__ = [
    "PromptInput",
    "Messages",
    "batch_of",
    "check_conversation",
    "messages_batch",
    "token_ids_of",
]

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


def token_ids_of(value: object, what: str = "prompt_token_ids") -> tuple[int, ...]:
    """``value`` as a tuple of ints; anything else (bool, str, float, None...) is refused
    with its position and type, never coerced (3.7 is not token 3)."""
    listed = isinstance(value, Sequence) or getattr(value, "ndim", 0) == 1  # or a 1-D array
    if isinstance(value, str | bytes) or not listed:
        raise InvalidInputError(f"{what} must be a list of ints, got {type(value).__name__}")
    ids = []
    items: Iterable[Any] = value  # type: ignore[assignment]
    for i, item in enumerate(items):
        # operator.index takes int and numpy integers; floats, strings and None fail
        bad = isinstance(item, bool) or type(item).__name__ == "bool_"
        try:
            ids.append(operator.index(item))
        except TypeError:
            bad = True
        if bad:
            raise InvalidInputError(
                f"{what}[{i}] is {item!r} ({type(item).__name__}): token ids are ints"
            )
    return tuple(ids)


def _check_message(index: int, message: object) -> None:
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise InvalidInputError(f"message {index}: each message needs a 'role' and a 'content'")
    utf8_text(message["role"], f"message {index} role")
    content = message["content"]
    if isinstance(content, str):
        utf8_text(content, f"message {index} content")
        return
    # OpenAI-style content parts: [{"type": "text", "text": "..."}, ...]
    if isinstance(content, Sequence) and content and all(
        isinstance(part, Mapping) and isinstance(part.get("type"), str) for part in content
    ):
        for j, part in enumerate(content):
            if part["type"] == "text":
                utf8_text(part.get("text"), f"message {index} content part {j} text")
        return
    raise InvalidInputError(
        f"message {index} content must be text (a str) or a list of content parts,"
        f" got {type(content).__name__}"
    )


def messages_batch(messages: Messages | Sequence[Messages]) -> list[Messages]:
    """One conversation (a list of role/content mappings) or a list of conversations."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise InvalidInputError("messages must be a non-empty list of {'role', 'content'} dicts")
    first = messages[0]
    conversations = [messages] if isinstance(first, Mapping) else list(messages)
    return [check_conversation(conv) for conv in conversations]


def check_conversation(conversation: object) -> Messages:
    """One conversation, checked: a non-empty list of messages with text roles and contents."""
    if not isinstance(conversation, Sequence) or isinstance(conversation, str) or not conversation:
        raise InvalidInputError("a conversation is a non-empty list of {'role', 'content'} dicts")
    for index, message in enumerate(conversation):
        _check_message(index, message)
    return conversation
