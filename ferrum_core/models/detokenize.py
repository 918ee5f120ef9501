"""Streaming detokenization: text deltas that never split a character.

A byte-level token can end in the middle of a UTF-8 sequence; decoding it
alone yields U+FFFD. Each step decodes a short window (the tokens since the
last emitted boundary) twice, without and with the new token, and emits the
difference only when it no longer ends in U+FFFD. Decoding windows instead of
single tokens also keeps decoders that depend on neighbours (sentencepiece's
leading-space handling) right; concatenated deltas plus :meth:`finish` equal
the full decode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ferrum_core.models.tokenizer import Tokenizer

__all__ = ["IncrementalDetokenizer"]

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self.token_ids: list[int] = []
        self._prefix_offset = 0  # window start: text before it is final
        self._read_offset = 0  # tokens up to here have been emitted
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str:
        """Append one token; return the new text (``""`` while a character is incomplete)."""
        self.token_ids.append(int(token_id))
        prefix = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.token_ids[self._prefix_offset :])
        if full.endswith(_REPLACEMENT) or not full.startswith(prefix):
            return ""
        delta = full[len(prefix) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.token_ids)
        self.text += delta
        return delta

    def finish(self) -> str:
        """Flush text still held back (an incomplete character decodes as U+FFFD)."""
        prefix = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.token_ids[self._prefix_offset :])
        delta = full[len(prefix) :] if full.startswith(prefix) else ""
        self._prefix_offset = self._read_offset = len(self.token_ids)
        self.text += delta
        return delta
