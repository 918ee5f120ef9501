"""`encode_prompt`: one prompt (text, or a mapping with ``prompt_token_ids``) as token ids."""

from __future__ import annotations

from collections.abc import Mapping

from ferrum_core.engine.prompts import PromptInput, token_ids_of
from ferrum_core.errors import InvalidInputError
from ferrum_core.models.tokenizer import Tokenizer, utf8_text

__all__ = ["encode_prompt"]


def encode_prompt(tokenizer: Tokenizer, prompt: PromptInput) -> tuple[tuple[int, ...], str | None]:
    """The prompt's token ids and its text (``None`` when given as ids only)."""
    if isinstance(prompt, str):
        return tuple(tokenizer.encode(utf8_text(prompt, "prompt"))), prompt
    if not isinstance(prompt, Mapping):
        raise InvalidInputError(
            f"a prompt must be a str or a dict with prompt_token_ids, got {type(prompt).__name__}"
        )
    ids = token_ids_of(prompt.get("prompt_token_ids"))
    given = prompt.get("prompt")
    return ids, given if isinstance(given, str) else None
