"""Load: 64 concurrent requests per round, 3 rounds, through one `LLM` (torch, tiny llama).

Mixed prompt and output lengths, a pool small enough to queue and preempt,
streams closed early, requests aborted from their own thread, and one failing
request per round. Every request equals its serial run (greedy; a cancelled
one saw a prefix of it), the failing one gets its typed error, and the KV pool
returns to where it started after each round.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ferrum_core.engine import SamplingParams
from ferrum_core.errors import InvalidInputError
from tests.reliability.conftest import free_blocks

NUM_REQUESTS = 64
ROUNDS = 3
THREADS = 16
KINDS = ("generate",) * 5 + ("stream", "close", "abort")


@dataclass(frozen=True)
class Spec:
    prompt: tuple[int, ...]
    max_tokens: int
    kind: str  # generate | stream | close (stream closed early) | abort (abort_request)

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(temperature=0.0, max_tokens=self.max_tokens, ignore_eos=True)


def _specs(seed: int) -> list[Spec]:
    rng = random.Random(seed)
    return [Spec(tuple(rng.randrange(5, 250) for _ in range(rng.randrange(2, 40))),
                 rng.randrange(1, 24), rng.choice(KINDS)) for _ in range(NUM_REQUESTS)]


@pytest.fixture(scope="module")
def loaded(tiny_dir: Path) -> Iterator[Any]:
    from ferrum_core.engine import LLM

    llm = LLM(str(tiny_dir), "torch", block_size=4, num_kv_blocks=96, max_num_seqs=24,
              max_model_len=96)
    yield llm
    llm.close()


def _run(llm: Any, specs: list[Spec], aborted: list[bool]) -> list[tuple[int, ...]]:
    """One thread's share: its generate-kind requests in one call, then its streams."""
    out: dict[int, tuple[int, ...]] = {}
    batch = [i for i, s in enumerate(specs) if s.kind == "generate"]
    if batch:
        results = llm.generate([{"prompt_token_ids": list(specs[i].prompt)} for i in batch],
                               [specs[i].params for i in batch], use_tqdm=False)
        out.update({i: r.outputs[0].token_ids for i, r in zip(batch, results, strict=True)})
    for i, spec in enumerate(specs):
        if spec.kind == "generate":
            continue
        stream = llm.stream({"prompt_token_ids": list(spec.prompt)}, spec.params)
        tokens: list[int] = []
        reason = None
        for delta in stream:
            tokens.extend(delta.token_ids)
            reason = delta.finish_reason
            if spec.kind == "close" and len(tokens) >= 2:
                stream.close()
            elif spec.kind == "abort" and reason is None:
                llm.abort_request(delta.request_id)
        out[i] = tuple(tokens)
        aborted.append(reason == "abort")  # an abort may come after the last token: fine
    return [out[i] for i in range(len(specs))]


def _failing(llm: Any) -> Exception | None:
    vocab = llm.engine.vocab_size
    try:
        llm.generate({"prompt_token_ids": [5, 6, vocab + 3]}, use_tqdm=False)
    except InvalidInputError as exc:
        return exc
    return None


def _concurrently(llm: Any, specs: list[Spec], shares: list[list[int]],
                  aborted: list[bool]) -> tuple[list[Any], Exception | None]:
    """Each share in its own thread plus one failing request, all started together."""
    results: list[Any] = [None] * len(shares)
    failure: list[Exception | None] = [None]
    barrier = threading.Barrier(len(shares) + 1)

    def work(t: int) -> None:
        barrier.wait()
        try:
            results[t] = _run(llm, [specs[i] for i in shares[t]], aborted)
        except Exception as exc:  # reported by the test
            results[t] = exc

    def fail() -> None:
        barrier.wait()
        failure[0] = _failing(llm)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(len(shares))]
    threads.append(threading.Thread(target=fail))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, failure[0]


def test_64_concurrent_requests_in_rounds(loaded: Any) -> None:
    start = free_blocks(loaded)
    aborted: list[bool] = []
    for round_ in range(ROUNDS):
        specs = _specs(round_)
        serial = [loaded.generate({"prompt_token_ids": list(s.prompt)}, s.params,
                                  use_tqdm=False)[0].outputs[0].token_ids for s in specs]
        shares = [list(range(t, NUM_REQUESTS, THREADS)) for t in range(THREADS)]
        results, failure = _concurrently(loaded, specs, shares, aborted)
        assert isinstance(failure, InvalidInputError) and "vocabulary" in str(failure)
        for t, share in enumerate(shares):
            assert not isinstance(results[t], Exception), results[t]
            for i, got in zip(share, results[t], strict=True):
                spec, want = specs[i], serial[i]
                if spec.kind in ("generate", "stream"):
                    assert got == want, (round_, i, spec.kind)
                else:  # cancelled: a prefix of the serial run
                    assert got == want[: len(got)], (round_, i, got)
        assert not loaded.engine.unfinished_request_ids()
        assert free_blocks(loaded) == start, round_
    assert any(aborted)  # cancellations did cut requests short
    assert loaded.engine.num_preemptions > 0  # the pool was tight enough to preempt
