"""The OpenAI API of a real `ferrum serve` (tiny llama on torch), through the openai client."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import openai

from ferrum_core.models.tokenizer import Tokenizer
from tests.server.conftest import Server

PROMPT = "the quick brown fox"


def test_models_lists_the_served_name(tiny_server: Server) -> None:
    client: Any = tiny_server.client()
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_streamed_chunks_concatenate_to_the_plain_answer(tiny_server: Server) -> None:
    client: Any = tiny_server.client()
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12,
                                      temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12,
                                            temperature=0, stream=True))
    assert len(chunks) > 1
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason == "length"

    messages = [{"role": "user", "content": PROMPT}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12,
                                          temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    parts = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert text == chat.choices[0].message.content
    assert parts[0].choices[0].delta.role == "assistant"
    assert parts[-1].choices == [] and parts[-1].usage == chat.usage


def test_sse_ends_with_done(tiny_server: Server) -> None:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{tiny_server.v1}/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_n_two_with_a_seed_is_reproducible(tiny_server: Server) -> None:
    client: Any = tiny_server.client()

    def ask() -> list[str]:
        out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, n=2,
                                        seed=1234, temperature=1.0)
        assert [c.index for c in out.choices] == [0, 1]
        return [c.text for c in out.choices]

    first = ask()
    assert first == ask()
    assert first[0] != first[1]


def test_usage_counts_equal_the_tokenizer(tiny_server: Server) -> None:
    assert tiny_server.model_dir is not None
    tokenizer = Tokenizer.from_dir(tiny_server.model_dir)
    client: Any = tiny_server.client()
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=7,
                                    temperature=0, logprobs=2)
    assert out.usage.prompt_tokens == len(tokenizer.encode(PROMPT))
    assert out.usage.completion_tokens == len(out.choices[0].logprobs.tokens) == 7
    assert out.usage.total_tokens == out.usage.prompt_tokens + 7
    assert all(len(top) <= 2 for top in out.choices[0].logprobs.top_logprobs)

    messages = [{"role": "user", "content": PROMPT}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5,
                                          temperature=0, logprobs=True, top_logprobs=3)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert chat.usage.prompt_tokens == len(tokenizer.encode(text, add_special_tokens=False))
    assert chat.usage.completion_tokens == len(chat.choices[0].logprobs.content) == 5


def test_prompt_shapes_and_the_default_max_tokens(tiny_server: Server) -> None:
    assert tiny_server.model_dir is not None
    ids = Tokenizer.from_dir(tiny_server.model_dir).encode(PROMPT)
    client: Any = tiny_server.client()
    by_text = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5,
                                        temperature=0)
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    many = client.completions.create(model="tiny", prompt=[PROMPT, "hello"], max_tokens=5,
                                     temperature=0)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[0].text == by_text.choices[0].text
    rest = client.completions.create(model="tiny", prompt=ids, temperature=0,
                                     extra_body={"ignore_eos": True})
    # no max_tokens: the rest of the context (256 here), unless EOS or a stop comes first
    assert rest.usage.total_tokens <= 256
    if rest.choices[0].finish_reason == "length":
        assert rest.usage.total_tokens == 256


def test_32_concurrent_streams_equal_serial_runs(tiny_server: Server) -> None:
    prompts = [f"{PROMPT} {i} " + "lazy dog " * (i % 5) for i in range(32)]
    client: Any = tiny_server.client()
    serial = [client.completions.create(model="tiny", prompt=p, max_tokens=16,
                                        temperature=0).choices[0].text for p in prompts]

    async def one(aclient: Any, prompt: str) -> str:
        stream = await aclient.completions.create(model="tiny", prompt=prompt, max_tokens=16,
                                                  temperature=0, stream=True)
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def refused(aclient: Any) -> int:
        # a token id outside the vocabulary: refused by the engine itself, mid-batch
        try:
            await aclient.completions.create(model="tiny", prompt=[1, 99999], max_tokens=4,
                                             stream=True)
        except openai.BadRequestError as exc:
            return exc.status_code
        return 200

    async def all_at_once() -> tuple[list[str], list[int]]:
        aclient: Any = tiny_server.async_client()
        async with aclient:
            texts = asyncio.gather(*(one(aclient, p) for p in prompts))
            errors = asyncio.gather(*(refused(aclient) for _ in range(4)))
            return list(await texts), list(await errors)

    texts, statuses = asyncio.run(all_at_once())
    assert texts == serial
    assert statuses == [400] * 4


def _metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} missing from /metrics:\n{text}"
    return float(match.group(1))


def test_metrics_and_a_disconnect_mid_stream_frees_the_kv(tiny_server: Server) -> None:
    start_free = _metric(tiny_server, "ferrum_kv_blocks_free")
    start_generated = _metric(tiny_server, "ferrum_generation_tokens_total")
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 200, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", f"{tiny_server.v1}/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line).startswith("data: {")
    # the connection is closed: the request must be aborted and its blocks freed
    free = start_free - 1
    for _ in range(600):  # up to ~60 s on a loaded machine; no timing is asserted
        free = _metric(tiny_server, "ferrum_kv_blocks_free")
        if free == start_free and _metric(tiny_server, "ferrum_num_requests_running") == 0:
            break
        time.sleep(0.1)
    assert free == start_free
    assert _metric(tiny_server, "ferrum_generation_tokens_total") < start_generated + 200
    text = httpx.get(f"{tiny_server.base_url}/metrics", timeout=30).text
    for name in ("ferrum_num_requests_waiting", "ferrum_kv_blocks_used",
                 "ferrum_prompt_tokens_total", "ferrum_time_to_first_token_seconds_bucket",
                 "ferrum_time_per_output_token_seconds_bucket"):
        assert name in text
