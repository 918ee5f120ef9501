"""The answers: one JSON object, or server-sent events ending with ``data: [DONE]``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from ferrum_core.errors import FerrumError
from ferrum_core.server.completions import (
    Choice,
    Prepared,
    finish_reason,
    logprobs_object,
    usage,
)
from ferrum_core.server.errors import from_ferrum_error
from ferrum_core.server.streams import merged

if TYPE_CHECKING:
    from ferrum_core.engine.outputs import StreamDelta
    from ferrum_core.server.metrics import ServerMetrics

__all__ = ["full_response", "sse_events"]


def _header(prepared: Prepared, chunk: bool) -> dict[str, Any]:
    kind = "chat.completion" if prepared.chat else "text_completion"
    return {"id": prepared.response_id,
            "object": f"{kind}.chunk" if chunk and prepared.chat else kind,
            "created": prepared.created, "model": prepared.model}


async def full_response(engine: Any, prepared: Prepared, streams: list[AsyncIterator[Any]],
                        metrics: ServerMetrics, arrival: float) -> dict[str, Any]:
    """Collect every completion of every prompt (choice index = prompt * n + index)."""
    choices: dict[int, Choice] = {}
    async with aclosing(merged(streams, metrics, arrival)) as deltas:
        async for prompt, delta in deltas:
            index = prompt * prepared.n + delta.index
            choices.setdefault(index, Choice(index)).add(delta)
    body = _header(prepared, chunk=False)
    out = []
    for index in sorted(choices):
        choice = choices[index]
        text = "".join(choice.text)
        logprobs = None
        if prepared.num_logprobs is not None:
            logprobs = logprobs_object(engine, prepared.chat, prepared.num_logprobs,
                                       choice.token_ids, choice.logprobs)
        if prepared.chat:
            out.append({"index": index, "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs, "finish_reason": choice.finish_reason})
        else:
            out.append({"index": index, "text": text, "logprobs": logprobs,
                        "finish_reason": choice.finish_reason})
    body["choices"] = out
    generated = sum(len(c.token_ids) for c in choices.values())
    body["usage"] = usage(prepared.prompt_tokens, generated)
    return body


def _event(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _chunk_choice(engine: Any, prepared: Prepared, index: int, delta: StreamDelta,
                  offsets: dict[int, int], first: bool) -> dict[str, Any]:
    logprobs = None
    if prepared.num_logprobs is not None and delta.logprobs:
        logprobs = logprobs_object(engine, prepared.chat, prepared.num_logprobs,
                                   list(delta.token_ids), list(delta.logprobs),
                                   offsets.get(index, 0))
    offsets[index] = offsets.get(index, 0) + len(delta.text)
    reason = finish_reason(delta.finish_reason)
    if prepared.chat:
        message: dict[str, Any] = {"content": delta.text}
        if first:
            message["role"] = "assistant"
        return {"index": index, "delta": message, "logprobs": logprobs,
                "finish_reason": reason}
    return {"index": index, "text": delta.text, "logprobs": logprobs, "finish_reason": reason}


class _ChunkTemplate:
    """A request's stream chunk as text around its few changing values: the common
    delta (no logprobs) costs one ``json.dumps`` of its text, not of a whole object."""

    __slots__ = ("_chat", "_head", "_tail")

    def __init__(self, prepared: Prepared) -> None:
        header = json.dumps(_header(prepared, chunk=True))
        self._head = header[:-1] + ', "choices": [{"index": '
        self._tail = ', "usage": null}' if prepared.include_usage else "}"
        self._chat = prepared.chat

    def render(self, index: int, delta: StreamDelta, first: bool) -> str:
        reason = finish_reason(delta.finish_reason)
        text = json.dumps(delta.text)
        if self._chat:
            role = '"role": "assistant", ' if first else ""
            body = f'"delta": {{{role}"content": {text}}}'
        else:
            body = f'"text": {text}'
        closing = "null" if reason is None else json.dumps(reason)
        return (f"data: {self._head}{index}, {body}, \"logprobs\": null, "
                f"\"finish_reason\": {closing}}}]{self._tail}\n\n")


async def sse_events(engine: Any, prepared: Prepared, streams: list[AsyncIterator[Any]],
                     metrics: ServerMetrics, arrival: float) -> AsyncIterator[str]:
    """One event per delta; the usage chunk when asked for; an error event if the engine
    fails mid-stream (the status line has gone already); always ``[DONE]``. A client
    that goes away cancels this generator, which closes (aborts) every engine stream."""
    seen: set[int] = set()
    offsets: dict[int, int] = {}
    generated = 0
    template = _ChunkTemplate(prepared) if prepared.num_logprobs is None else None
    try:
        async with aclosing(merged(streams, metrics, arrival)) as deltas:
            async for prompt, delta in deltas:
                index = prompt * prepared.n + delta.index
                generated += len(delta.token_ids)
                if template is not None:
                    yield template.render(index, delta, first=index not in seen)
                    seen.add(index)
                    continue
                chunk = _header(prepared, chunk=True)
                chunk["choices"] = [_chunk_choice(engine, prepared, index, delta, offsets,
                                                  first=index not in seen)]
                seen.add(index)
                if prepared.include_usage:
                    chunk["usage"] = None
                yield _event(chunk)
    except FerrumError as exc:
        yield _event(from_ferrum_error(exc).body())
    if prepared.include_usage:
        chunk = _header(prepared, chunk=True)
        chunk["choices"] = []
        chunk["usage"] = usage(prepared.prompt_tokens, generated)
        yield _event(chunk)
    yield _event("[DONE]")
