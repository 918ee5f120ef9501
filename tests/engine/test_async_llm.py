"""`AsyncLLM`: one loop thread, many coroutines, shared batches, aborts that free KV."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from ferrum_core.engine import AsyncLLM, SamplingParams, StreamDelta
from ferrum_core.errors import CapacityError, ExecutorStateError, InvalidInputError

PROMPTS = [
    "Hello world",
    "The quick brown fox",
    "Paris is the capital of",
    "def add(a, b):",
]


def _params(i: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=4 + i % 5, ignore_eos=True)


async def _collect(engine: AsyncLLM, prompt: str, params: SamplingParams,
                   **kwargs: Any) -> list[StreamDelta]:
    return [delta async for delta in engine.generate(prompt, params, **kwargs)]


@pytest.fixture
def async_llm(make_llm: Callable[..., Any]) -> Any:
    engine = AsyncLLM.from_llm(make_llm(num_kv_blocks=256, max_model_len=96))
    yield engine
    engine.close()


def test_concurrent_generations_equal_serial_runs_and_share_batches(async_llm: Any) -> None:
    llm = async_llm.llm
    jobs = [(PROMPTS[i % len(PROMPTS)], _params(i)) for i in range(32)]
    serial = [llm.generate(p, sp, use_tqdm=False)[0].outputs[0] for p, sp in jobs]
    llm.engine.max_num_running = 0

    async def main() -> list[list[StreamDelta]]:
        return list(await asyncio.gather(*(_collect(async_llm, p, sp) for p, sp in jobs)))

    streams = asyncio.run(main())
    for deltas, expected in zip(streams, serial, strict=True):
        assert [d.finish_reason for d in deltas][-1] == "length"
        assert all(d.finish_reason is None for d in deltas[:-1])
        assert tuple(t for d in deltas for t in d.token_ids) == expected.token_ids
        assert "".join(d.text for d in deltas) == expected.text
    assert llm.engine.max_num_running > 1  # the requests really were batched together
    assert async_llm.num_steps > 0
    stats = async_llm.stats()
    assert stats.num_running == stats.num_waiting == 0
    assert stats.generation_tokens_total >= sum(len(o.token_ids) for o in serial) * 2


class _CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the callbacks other threads schedule on it."""

    threadsafe_calls = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            type(self).threadsafe_calls += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_each_step_hands_its_deltas_over_at_once(async_llm: Any) -> None:
    """One cross-thread wake-up per engine step for all the streams of an event loop,
    not one per stream and token (what the server's event loop pays for per step)."""
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    _CountingLoop.threadsafe_calls = 0
    steps_before = async_llm.num_steps

    async def main() -> list[list[StreamDelta]]:
        return list(await asyncio.gather(*(_collect(async_llm, p, params) for p in PROMPTS * 2)))

    with asyncio.Runner(loop_factory=_CountingLoop) as runner:
        streams = runner.run(main())
    assert all(sum(len(d.token_ids) for d in deltas) == 12 for deltas in streams)
    steps = async_llm.num_steps - steps_before
    assert steps >= 12
    # deltas of 8 streams x 12 tokens, plus the adds and forgets: at most one per step
    # and one per command-only pass (one hand-over each), far below one per delta
    assert _CountingLoop.threadsafe_calls <= steps + 2 * len(PROMPTS) * 2, (
        _CountingLoop.threadsafe_calls, steps)


def test_abandoned_iterator_aborts_and_frees_the_pool(async_llm: Any) -> None:
    start = async_llm.stats()
    assert start.kv_blocks_total is not None and start.kv_blocks_free is not None
    params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)

    async def main() -> None:
        stream = async_llm.generate("The quick brown fox", params, request_id="leaver")
        first = await stream.__anext__()
        assert first.request_id == "leaver" and first.finish_reason is None
        await stream.aclose()
        # the forget command runs in the loop thread; a later request is queued behind it
        await _collect(async_llm, "Hello", SamplingParams(temperature=0.0, max_tokens=1))

    asyncio.run(main())
    assert not async_llm.llm.engine.has_request("leaver")
    assert async_llm.stats().kv_blocks_free == start.kv_blocks_free


def test_cancelled_task_aborts_its_request(async_llm: Any) -> None:
    start = async_llm.stats().kv_blocks_free
    params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)

    async def main() -> None:
        got_one = asyncio.Event()

        async def consume() -> None:
            async for _ in async_llm.generate("Paris is", params, request_id="cancelled"):
                got_one.set()

        task = asyncio.create_task(consume())
        await got_one.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _collect(async_llm, "Hello", SamplingParams(temperature=0.0, max_tokens=1))

    asyncio.run(main())
    assert not async_llm.llm.engine.has_request("cancelled")
    assert async_llm.stats().kv_blocks_free == start


def test_abort_ends_the_stream_with_abort(async_llm: Any) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=80, ignore_eos=True)

    async def main() -> list[StreamDelta]:
        deltas = []
        async for delta in async_llm.generate("Hello world", params, request_id="a1"):
            deltas.append(delta)
            if len(deltas) == 1:
                await async_llm.abort("a1")
        return deltas

    deltas = asyncio.run(main())
    assert deltas[-1].finish_reason == "abort"
    assert sum(len(d.token_ids) for d in deltas) < 80


def test_bad_input_raises_from_the_iterator_without_disturbing_others(
    async_llm: Any,
) -> None:
    llm = async_llm.llm
    good = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    expected = llm.generate("The quick brown fox", good, use_tqdm=False)[0].outputs[0]

    async def main() -> list[StreamDelta]:
        task = asyncio.create_task(_collect(async_llm, "The quick brown fox", good))
        bad_ids = async_llm.generate({"prompt_token_ids": [1, 10**6]}, good)
        with pytest.raises(InvalidInputError, match="outside the vocabulary"):
            await bad_ids.__anext__()
        with pytest.raises(CapacityError):
            await async_llm.generate({"prompt_token_ids": [1] * 500}, good).__anext__()
        with pytest.raises(InvalidInputError, match="sampling params"):
            await async_llm.generate("hi", {"temperature": 0}).__anext__()  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="empty prompt"):
            await async_llm.generate({"prompt_token_ids": []}, good).__anext__()
        return await task

    deltas = asyncio.run(main())
    assert tuple(t for d in deltas for t in d.token_ids) == expected.token_ids
    assert llm.engine.unfinished_request_ids() == []


def test_duplicate_request_id_fails_only_the_newcomer(async_llm: Any) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)

    async def main() -> list[StreamDelta]:
        first = async_llm.generate("Hello world", params, request_id="same")
        delta = await first.__anext__()
        with pytest.raises(InvalidInputError, match="duplicate request id"):
            await async_llm.generate("Hello", params, request_id="same").__anext__()
        return [delta] + [d async for d in first]

    deltas = asyncio.run(main())
    assert sum(len(d.token_ids) for d in deltas) == 20
    assert deltas[-1].finish_reason == "length"


def test_a_failing_step_fails_the_requests_in_flight_and_the_loop_survives(
    async_llm: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = async_llm.llm.engine
    real_step = engine.step
    calls = {"n": 0}

    def flaky_step() -> list[StreamDelta]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return real_step()

    monkeypatch.setattr(engine, "step", flaky_step)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="device lost"):
            await _collect(async_llm, "Hello world", params)
        deltas = await _collect(async_llm, "Hello world", params)  # the loop still runs
        assert sum(len(d.token_ids) for d in deltas) == 10

    asyncio.run(main())
    assert async_llm.is_ready


def test_sync_llm_keeps_working_beside_the_loop(async_llm: Any) -> None:
    llm = async_llm.llm
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    expected = llm.generate("Paris is the capital of", params, use_tqdm=False)[0].outputs[0]
    results: list[Any] = []

    def sync_calls() -> None:
        for _ in range(3):
            results.append(llm.generate("Paris is the capital of", params,
                                        use_tqdm=False)[0].outputs[0].token_ids)

    async def main() -> list[list[StreamDelta]]:
        thread = threading.Thread(target=sync_calls)
        thread.start()
        streams = await asyncio.gather(*(_collect(async_llm, "Paris is the capital of", params)
                                         for _ in range(6)))
        await asyncio.to_thread(thread.join)
        return list(streams)

    for deltas in asyncio.run(main()):
        assert tuple(t for d in deltas for t in d.token_ids) == expected.token_ids
    assert results == [expected.token_ids] * 3


def test_close_stops_the_thread_and_fails_open_iterators(
    make_llm: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = AsyncLLM.from_llm(make_llm())
    assert engine.is_ready
    thread = engine._loop.thread
    real_step = engine.llm.engine.step
    gate = threading.Event()
    calls = {"n": 0}

    def gated_step() -> list[StreamDelta]:
        calls["n"] += 1
        if calls["n"] == 2:  # hold the second step until close() has begun
            gate.wait()
        return real_step()

    monkeypatch.setattr(engine.llm.engine, "step", gated_step)
    params = SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)

    async def main() -> None:
        stream = engine.generate("Hello world", params)
        await stream.__anext__()
        closing = asyncio.create_task(engine.aclose())
        while not engine._loop._stopping:
            await asyncio.sleep(0.001)
        gate.set()
        await closing
        with pytest.raises(ExecutorStateError, match="closed"):
            async for _ in stream:
                pass
        with pytest.raises(ExecutorStateError, match="closed"):
            await engine.generate("Hello", params).__anext__()

    asyncio.run(main())
    assert not thread.is_alive()
    assert not engine.is_ready
    engine.close()  # idempotent


def test_construct_from_a_model_directory(tiny_dirs: dict[str, Any]) -> None:
    engine = AsyncLLM(str(tiny_dirs["target"]), "torch", block_size=4)
    try:
        assert engine.llm.backend == "torch" and engine.is_ready
        deltas = asyncio.run(_collect(engine, "Hi", SamplingParams(max_tokens=3, seed=1)))
        assert deltas[-1].finish_reason is not None
    finally:
        engine.close()
    assert not engine.is_ready
