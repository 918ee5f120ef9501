"""One speculative decode step for the engine's decoding requests.

The draft catches up on whatever it has not seen (the prompt the first time,
afterwards the last one or two tokens), then proposes up to ``k`` tokens
greedily, batched across requests. Each request is then verified by the
target in one forward, choosing tokens with the request's own sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ferrum_core.engine.request import Request
from ferrum_core.engine.runner import ExecutorRunner, Work
from ferrum_core.engine.speculative import SpeculativePair
from ferrum_core.errors import KvPoolExhaustedError

__all__ = ["SpeculativeStepper"]


class SpeculativeStepper:
    def __init__(
        self, pair: SpeculativePair, target: ExecutorRunner, draft: ExecutorRunner, k: int
    ) -> None:
        self.pair = pair
        self.target = target
        self.draft = draft
        self.k = k
        self._vocab = pair.target.info().vocab_size
        draft_info = pair.draft.info()
        self._draft_capacity = min(
            v for v in (draft_info.max_sequence_length, pair.draft.kv_capacity()) if v is not None
        )
        self.proposed = 0
        self.accepted = 0

    def run(self, requests: Sequence[Request], on_exhausted: Callable[[], None]) -> list[Request]:
        """Advance each request by one verification; returns those that progressed."""
        # the draft writes up to num_tokens + k - 1 positions, the target num_tokens + k
        budgets = {
            r.request_id: min(self.k, r.remaining_tokens() - 1,
                              self._draft_capacity - r.seq.num_tokens + 1)
            for r in requests
        }
        proposing = [r for r in requests if budgets[r.request_id] > 0]
        try:
            drafts = self._propose(proposing, budgets)
        except KvPoolExhaustedError:
            self._forget_drafts(proposing)
            on_exhausted()
            return []
        progressed: list[Request] = []
        for i, request in enumerate(requests):
            try:
                self._verify(request, drafts.get(request.request_id, []))
            except KvPoolExhaustedError:
                # the rest wait for the next step: their proposals must leave the draft's KV
                self._forget_drafts([r for r in requests[i + 1 :] if r.request_id in drafts])
                on_exhausted()
                break
            progressed.append(request)
        return progressed

    def _propose(
        self, requests: Sequence[Request], budgets: dict[str, int]
    ) -> dict[str, list[int]]:
        drafts: dict[str, list[int]] = {r.request_id: [] for r in requests}
        active = list(requests)
        step = 0
        while active:
            works = []
            for r in active:
                seq = r.seq
                if step == 0:
                    # feed at least the last token: its logits give the first proposal
                    if seq.draft_computed >= seq.num_tokens:
                        self.draft.truncate(r.request_id, seq.draft_computed, seq.num_tokens - 1)
                        seq.draft_computed = seq.num_tokens - 1
                    tokens = seq.token_slice(seq.draft_computed, seq.num_tokens)
                else:
                    tokens = (drafts[r.request_id][-1],)
                works.append(Work(r.request_id, tokens, seq.draft_computed, True))
            rows = self.draft.run(works)  # on failure the executor rolls every item back
            for r, work, row in zip(active, works, rows, strict=True):
                assert row is not None
                r.seq.draft_computed = work.pos + len(work.tokens)
                drafts[r.request_id].append(int(np.argmax(row[: self._vocab])))
            step += 1
            active = [r for r in active if budgets[r.request_id] > step]
        return drafts

    def _forget_drafts(self, requests: Sequence[Request]) -> None:
        """Drop proposed tokens from the draft's KV (keep real tokens, bar the last)."""
        for r in requests:
            seq = r.seq
            real = min(seq.draft_computed, seq.num_tokens - 1)
            self.draft.truncate(r.request_id, seq.draft_computed, real, rollback=True)
            seq.draft_computed = real

    def _verify(self, request: Request, drafts: list[int]) -> None:
        seq = request.seq
        pos = seq.num_computed
        key = request.request_id
        before = seq.num_tokens

        def choose(_: int, row: np.ndarray) -> tuple[int, bool]:
            token = request.sample(row)
            return token, not request.finished

        decode_input = self.target.decode_input(key, seq.last_token_id, pos, seq.metadata)
        try:
            result = self.pair.verify(decode_input, drafts, choose)
        except KvPoolExhaustedError:
            self.target.truncate(key, pos, pos, rollback=True)
            if drafts:
                self._forget_drafts([request])
            raise
        self.target.set_handle(key, result.kv_cache)
        seq.num_computed = pos + 1 + result.matched
        if drafts:
            # the draft holds the real tokens plus d1..d(k-1); keep those the target accepted
            kept = before + min(result.matched, len(drafts) - 1)
            self.draft.truncate(key, seq.draft_computed, kept)
            seq.draft_computed = min(seq.draft_computed, kept)
        request.spec_proposed += len(drafts)
        request.spec_accepted += result.matched
        self.proposed += len(drafts)
        self.accepted += result.matched
