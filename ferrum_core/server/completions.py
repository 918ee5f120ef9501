"""From an OpenAI request to engine jobs and sampling parameters, and from engine deltas
to the OpenAI response objects (shared by the streaming and the plain answers)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ferrum_core.server.errors import ApiError
from ferrum_core.server.protocol import ChatCompletionRequest, CompletionRequest
from ferrum_core.server.streams import Job

if TYPE_CHECKING:
    from ferrum_core.engine.outputs import StreamDelta

_FLOOR = -9999.0  # a logprob the engine did not report (JSON has no -inf)

__all__ = ["Prepared", "Choice", "prepare", "logprobs_object", "usage"]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked request: its jobs (one per prompt), sampling parameters and ids."""

    response_id: str
    created: int
    model: str
    chat: bool
    jobs: tuple[Job, ...]
    params: Any
    n: int
    num_logprobs: int | None
    include_usage: bool

    @property
    def prompt_tokens(self) -> int:
        return sum(len(job.prompt_ids) for job in self.jobs)


@dataclass(slots=True)
class Choice:
    """One completion being assembled."""

    index: int
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: StreamDelta) -> None:
        self.text.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = _finish_reason(delta.finish_reason)


def _finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop" if reason in ("stop", "eos") else reason


def finish_reason(reason: str | None) -> str | None:
    return None if reason is None else _finish_reason(reason)


def _prompt_ids(engine: Any, request: CompletionRequest | ChatCompletionRequest
                ) -> list[tuple[int, ...]]:
    llm = engine.llm
    if isinstance(request, ChatCompletionRequest):
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        for message in messages:
            message.setdefault("content", "")
        return [tuple(llm.encode_chat(messages))]
    prompt = request.prompt
    if isinstance(prompt, str):
        return [tuple(llm.tokenizer.encode(prompt))]
    if all(isinstance(p, int) for p in prompt):
        return [tuple(prompt)]  # type: ignore[arg-type]
    if all(isinstance(p, str) for p in prompt):
        return [tuple(llm.tokenizer.encode(p)) for p in prompt]
    lists = [tuple(p) for p in prompt if isinstance(p, list)]
    if any(not ids for ids in lists):
        raise ApiError(400, "prompt: a token-id prompt is empty", param="prompt")
    return lists


def prepare(engine: Any, request: CompletionRequest | ChatCompletionRequest, model: str
            ) -> Prepared:
    """Tokenise and build the sampling parameters; every problem is a 400 naming it."""
    from ferrum_core.engine import SamplingParams

    chat = isinstance(request, ChatCompletionRequest)
    prompts = _prompt_ids(engine, request)
    context = int(engine.llm.engine.max_model_len)
    where = "messages" if chat else "prompt"
    for ids in prompts:
        if not ids:
            raise ApiError(400, f"{where}: the prompt is empty", param=where)
        if len(ids) >= context:
            raise ApiError(400, f"{where}: the prompt has {len(ids)} tokens, over this model's"
                           f" context length of {context} (one token must remain to generate)",
                           param=where, code="context_length_exceeded")
    limit = request.token_limit if isinstance(request, ChatCompletionRequest) \
        else request.max_tokens
    num_logprobs = request.num_logprobs if isinstance(request, ChatCompletionRequest) \
        else request.logprobs
    values: dict[str, Any] = {
        "max_tokens": limit if limit is not None else context - min(len(p) for p in prompts),
        "temperature": 1.0 if request.temperature is None else float(request.temperature),
        "top_p": 1.0 if request.top_p is None else float(request.top_p),
        "seed": request.seed,
        "stop": request.stop,
        "logprobs": num_logprobs,
        "top_k": request.top_k,
        "ignore_eos": request.ignore_eos or None,
    }
    # New fields are passed only when used, so a plain request never depends on them.
    if request.n not in (None, 1):
        values["n"] = request.n
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(request, name)
        if value:
            values[name] = float(value)
    params = SamplingParams(**{k: v for k, v in values.items() if v is not None})
    response_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    jobs = tuple(Job(ids, f"{response_id}-{i}") for i, ids in enumerate(prompts))
    stream_options = request.stream_options
    return Prepared(response_id=response_id, created=int(time.time()), model=model, chat=chat,
                    jobs=jobs, params=params, n=request.n or 1, num_logprobs=num_logprobs,
                    include_usage=bool(stream_options and stream_options.include_usage))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def logprobs_object(engine: Any, chat: bool, top_n: int, token_ids: list[int],
                    logprobs: list[dict[int, float]], offset: int = 0) -> dict[str, Any]:
    """OpenAI's logprobs: chat's ``content`` list, or the completions' parallel lists."""
    tokenizer = engine.llm.tokenizer

    def text(token: int) -> str:
        return str(tokenizer.decode([token], skip_special_tokens=False))

    if chat:
        content = []
        for token, position in zip(token_ids, logprobs, strict=False):
            top = sorted(position.items(), key=lambda kv: -kv[1])[:top_n]
            content.append({
                "token": text(token), "logprob": position.get(token, _FLOOR),
                "bytes": list(text(token).encode("utf-8")),
                "top_logprobs": [{"token": text(t), "logprob": v,
                                  "bytes": list(text(t).encode("utf-8"))} for t, v in top],
            })
        return {"content": content}
    tokens, values, tops, offsets = [], [], [], []
    for token, position in zip(token_ids, logprobs, strict=False):
        tokens.append(text(token))
        values.append(position.get(token, _FLOOR))
        best = sorted(position.items(), key=lambda kv: -kv[1])[:top_n]
        tops.append({text(t): v for t, v in best})
        offsets.append(offset)
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
            "text_offset": offsets}
