"""`Work`: one unit of work between the engine and its executor runner (no array library).

The scheduler emits one per scheduled sequence (:meth:`Work.chunk`, with the
live :class:`~ferrum_core.engine.sequence.Sequence` it advances); the
speculative stepper builds its own for the draft model's catch-up and
proposals, which are not the sequence's tokens (``seq`` is ``None`` there).
The runner turns each into the executor protocol's records. The table of the
records between engine and model is in docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferrum_core.engine.sequence import Sequence

__all__ = ["Work"]

_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Work:
    """Feed ``tokens`` to sequence ``key`` at position ``pos``; ``final`` asks for logits.

    ``pos`` is read from the sequence's length owner when the work is made (the
    engine's ``Sequence``, see docs/architecture.md); ``seq`` is that sequence
    when the work advances it, ``None`` for the draft model's own work.
    """

    key: str
    tokens: tuple[int, ...]
    pos: int
    final: bool
    metadata: Mapping[str, Any] = field(default_factory=lambda: _NO_METADATA)
    seq: Sequence | None = None

    @classmethod
    def chunk(cls, seq: Sequence, num_tokens: int) -> Work:
        """The next ``num_tokens`` of ``seq`` from where its KV ends; final when they reach
        the end of the sequence (its logits get sampled)."""
        pos = seq.num_computed
        tokens = seq.token_slice(pos, pos + num_tokens)
        return cls(seq.request_id, tokens, pos, pos + num_tokens == seq.num_tokens,
                   seq.metadata, seq)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def is_final(self) -> bool:
        """Whether this work reaches the end of its sequence (its logits get sampled)."""
        return self.final

    @property
    def end(self) -> int:
        """The sequence's length once this work has run."""
        return self.pos + len(self.tokens)
