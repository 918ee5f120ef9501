"""One `LLM` shared by several threads: calls never corrupt each other.

Every thread's result must equal its serial run (greedy), the KV pool must
return to where it started, and streams may be iterated from other threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from ferrum_core.engine import SamplingParams
from ferrum_core.errors import InvalidInputError
from tests.reliability.conftest import free_blocks

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of",
    "def add(a, b):",
]


def _params(i: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=6 + 3 * i, ignore_eos=True)


def _in_threads(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run the jobs in one thread each, started together; results (or errors) in order."""
    results: list[Any] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # reported by the test, not swallowed
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _tokens(llm: Any, prompt: str, i: int) -> tuple[int, ...]:
    (out,) = llm.generate(prompt, _params(i), use_tqdm=False)
    assert out.outputs[0].finish_reason == "length"
    return out.outputs[0].token_ids


def test_four_threads_generate_like_their_serial_runs(shared_llm: Any) -> None:
    start = free_blocks(shared_llm)
    serial = [_tokens(shared_llm, p, i) for i, p in enumerate(PROMPTS)]
    for _ in range(3):
        results = _in_threads(
            [lambda p=p, i=i: _tokens(shared_llm, p, i) for i, p in enumerate(PROMPTS)]
        )
        assert results == serial
    assert free_blocks(shared_llm) == start


def test_threads_mixing_generate_chat_and_stream(shared_llm: Any) -> None:
    start = free_blocks(shared_llm)
    conv = [{"role": "user", "content": "Hi there"}]

    def chat() -> tuple[int, ...]:
        return shared_llm.chat(conv, _params(0), use_tqdm=False)[0].outputs[0].token_ids

    def streamed(i: int) -> tuple[int, ...]:
        return tuple(t for d in shared_llm.stream(PROMPTS[i], _params(i)) for t in d.token_ids)

    def batch() -> list[tuple[int, ...]]:
        outs = shared_llm.generate(PROMPTS, [_params(i) for i in range(4)], use_tqdm=False)
        return [o.outputs[0].token_ids for o in outs]

    serial = [chat(), streamed(1), streamed(2), batch()]
    results = _in_threads([chat, lambda: streamed(1), lambda: streamed(2), batch])
    assert results == serial
    assert results[3] == [_tokens(shared_llm, p, i) for i, p in enumerate(PROMPTS)]
    assert free_blocks(shared_llm) == start


def test_a_stream_may_move_between_threads(shared_llm: Any) -> None:
    start = free_blocks(shared_llm)
    expected = _tokens(shared_llm, PROMPTS[0], 2)
    stream = shared_llm.stream(PROMPTS[0], _params(2))
    tokens: list[int] = []
    while True:  # each delta is taken by a fresh thread
        got = _in_threads([lambda: next(stream, None)])[0]
        if got is None:
            break
        tokens.extend(got.token_ids)
    assert tuple(tokens) == expected
    assert free_blocks(shared_llm) == start


def test_a_failing_thread_does_not_harm_the_others(shared_llm: Any) -> None:
    start = free_blocks(shared_llm)
    serial = [_tokens(shared_llm, p, i) for i, p in enumerate(PROMPTS[:3])]
    vocab = shared_llm.engine.vocab_size

    def bad() -> Any:
        return shared_llm.generate({"prompt_token_ids": [1, vocab + 5]}, use_tqdm=False)

    jobs: list[Callable[[], Any]] = [
        lambda p=p, i=i: _tokens(shared_llm, p, i) for i, p in enumerate(PROMPTS[:3])
    ]
    results = _in_threads([*jobs, bad])
    assert results[:3] == serial
    assert isinstance(results[3], InvalidInputError) and "vocabulary" in str(results[3])
    assert free_blocks(shared_llm) == start


def test_streams_closed_early_and_aborted_from_other_threads(shared_llm: Any) -> None:
    start = free_blocks(shared_llm)
    expected = _tokens(shared_llm, PROMPTS[1], 3)

    def closed_early() -> int:
        stream = shared_llm.stream(PROMPTS[2], _params(3))
        first = next(stream)
        stream.close()
        return len(first.token_ids)

    def aborted() -> str | None:
        # Longer than the other jobs can drive on their own (15 steps): a thread that
        # is starved until they finish still aborts before its request ends.
        reason = None
        long = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
        for delta in shared_llm.stream(PROMPTS[3], long):
            shared_llm.abort_request(delta.request_id)
            reason = delta.finish_reason
        return reason

    results = _in_threads([lambda: _tokens(shared_llm, PROMPTS[1], 3), closed_early, aborted])
    assert results == [expected, 1, "abort"]
    assert not shared_llm.engine.has_unfinished_requests() or not list(
        shared_llm.engine.unfinished_request_ids())
    assert free_blocks(shared_llm) == start


@pytest.mark.parametrize("threads", [8])
def test_many_threads_one_prompt_each(shared_llm: Any, threads: int) -> None:
    start = free_blocks(shared_llm)
    prompts = [PROMPTS[i % 4] + " " * (i // 4) for i in range(threads)]
    serial = [_tokens(shared_llm, p, i % 3) for i, p in enumerate(prompts)]
    results = _in_threads([lambda p=p, i=i: _tokens(shared_llm, p, i % 3)
                           for i, p in enumerate(prompts)])
    assert results == serial
    assert free_blocks(shared_llm) == start
