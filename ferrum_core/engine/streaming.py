"""Output text of one request: incremental detokenisation, stop strings, safe deltas.

Streamed deltas concatenate to exactly the final text: text that might still turn
into a stop string is held back until it cannot, and a matched stop string (and
what follows it) is cut before it is ever emitted.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["TokenTextDecoder", "OutputText"]


class TokenTextDecoder(Protocol):
    """What :class:`~ferrum_core.models.detokenize.IncrementalDetokenizer` offers."""

    def add(self, token_id: int) -> str: ...

    def finish(self) -> str: ...


class OutputText:
    def __init__(self, decoder: TokenTextDecoder, stop: tuple[str, ...] = ()) -> None:
        self._decoder = decoder
        self._stop = stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def add(self, token_id: int) -> bool:
        """Append a token's text; True when a stop string now ends the output."""
        if self.stopped:
            return True
        return self._extend(self._decoder.add(token_id))

    def flush(self) -> None:
        """The output ended: take the text the decoder still holds back."""
        if not self.stopped:
            self._extend(self._decoder.finish())

    def _extend(self, delta: str) -> bool:
        if not delta:
            return False
        searched_from = max(0, len(self.text) - self._longest_stop + 1)
        self.text += delta
        if self._stop:
            cut = self._first_stop(searched_from)
            if cut is not None:
                self.text = self.text[:cut]
                self.stopped = True
        return self.stopped

    def _first_stop(self, start: int) -> int | None:
        found = [i for s in self._stop if (i := self.text.find(s, start)) >= 0]
        return min(found) if found else None

    def take_delta(self, final: bool = False) -> str:
        """Text not yet handed out that no later token can take back."""
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        end = max(end, self._emitted)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta

    def _held_back(self) -> int:
        # longest suffix of the text that is a proper prefix of some stop string
        text = self.text
        for size in range(min(self._longest_stop - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self._stop):
                return size
        return 0
