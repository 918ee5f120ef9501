"""Parallel sampling (``n > 1``): one caller's request as ``n`` internal requests.

The children share the prompt (the prefix cache shares its KV blocks when the
backend supports it) and report under the caller's id with their ``index``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ferrum_core.engine.outputs import RequestMetrics, RequestOutput

__all__ = ["child_keys", "merge_outputs"]


def child_keys(request_id: str, n: int) -> tuple[str, ...]:
    """The internal ids of a request's ``n`` completions (its own id when ``n == 1``)."""
    if n == 1:
        return (request_id,)
    return tuple(f"{request_id}#{i}" for i in range(n))


def merge_outputs(outputs: Sequence[RequestOutput]) -> RequestOutput:
    """One output holding every child's completion, in index order."""
    first = outputs[0]
    if len(outputs) == 1:
        return first
    completions = tuple(sorted((c for o in outputs for c in o.outputs), key=lambda c: c.index))
    return dataclasses.replace(first, outputs=completions,
                               metrics=_merge_metrics([o.metrics for o in outputs]))


def _merge_metrics(parts: Sequence[RequestMetrics]) -> RequestMetrics:
    def earliest(values: Sequence[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return min(known) if known else None

    def latest(values: Sequence[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return max(known) if known else None

    return RequestMetrics(
        arrival_time=min(m.arrival_time for m in parts),
        first_scheduled_time=earliest([m.first_scheduled_time for m in parts]),
        first_token_time=earliest([m.first_token_time for m in parts]),
        last_token_time=latest([m.last_token_time for m in parts]),
        finished_time=(None if any(m.finished_time is None for m in parts)
                       else latest([m.finished_time for m in parts])),
        num_prompt_tokens=parts[0].num_prompt_tokens,
        num_generated_tokens=sum(m.num_generated_tokens for m in parts),
        num_preemptions=sum(m.num_preemptions for m in parts),
        spec_proposed_tokens=sum(m.spec_proposed_tokens for m in parts),
        spec_accepted_tokens=sum(m.spec_accepted_tokens for m in parts),
    )
