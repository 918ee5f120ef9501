"""The scheduler on plain sequences: budget, chunking, admission, preemption (no arrays)."""

from __future__ import annotations

import subprocess
import sys

from ferrum_core.engine.scheduler import PoolView, Scheduler, SchedulerConfig, blocks_for
from ferrum_core.engine.sequence import Sequence, SequenceStatus, prefix_block_hashes


def _seq(name: str, n_prompt: int, first: int = 1) -> Sequence:
    return Sequence(name, tuple(range(first, first + n_prompt)), max_tokens=8)


def _advance(chunks: list, sampled: int = 7) -> None:
    """What the engine does after a forward: mark tokens computed, add a sample at the end."""
    for chunk in chunks:
        final = chunk.is_final
        chunk.seq.num_computed += chunk.num_tokens
        if final:
            chunk.seq.append_token(sampled)


def test_scheduler_modules_import_no_array_library() -> None:
    code = (
        "import sys, ferrum_core.engine.scheduler, ferrum_core.engine.sequence;"
        "bad=[m for m in ('numpy','torch','mlx','onnxruntime') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_long_prompt_is_chunked_by_the_token_budget() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=5))
    seq = _seq("a", 12)
    sched.add(seq)
    sizes = []
    while not seq.output_token_ids:
        chunks = sched.schedule()
        sizes.append([(c.seq.request_id, c.num_tokens, c.is_final) for c in chunks])
        _advance(chunks)
    assert sizes == [[("a", 5, False)], [("a", 5, False)], [("a", 2, True)]]
    # then plain decode steps of one token
    (chunk,) = sched.schedule()
    assert (chunk.num_tokens, chunk.is_final) == (1, True)


def test_decodes_go_first_and_new_prompts_take_the_rest_of_the_budget() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=6))
    a = _seq("a", 3)
    sched.add(a)
    _advance(sched.schedule())
    b = _seq("b", 10)
    sched.add(b)
    chunks = sched.schedule()
    assert [(c.seq.request_id, c.num_tokens) for c in chunks] == [("a", 1), ("b", 5)]
    assert not chunks[1].is_final


def test_max_num_seqs_caps_running_and_keeps_fcfs_order() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=100))
    seqs = [_seq(str(i), 3) for i in range(4)]
    for s in seqs:
        sched.add(s)
    chunks = sched.schedule()
    assert [c.seq.request_id for c in chunks] == ["0", "1"]
    assert [s.request_id for s in sched.waiting] == ["2", "3"]
    sched.finish(seqs[0])
    chunks = sched.schedule()
    assert [c.seq.request_id for c in chunks] == ["1", "2"]


def test_admission_waits_for_free_blocks_but_an_idle_engine_always_admits() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=100))
    first, second = _seq("a", 8), _seq("b", 8)
    sched.add(first)
    sched.add(second)
    # 8 prompt tokens + 1 to grow need 3 blocks of 4; only 4 free (watermark 1)
    chunks = sched.schedule(PoolView(free_blocks=4, total_blocks=4, block_size=4))
    assert [c.seq.request_id for c in chunks] == ["a"]
    assert second.status is SequenceStatus.WAITING
    _advance(chunks)
    chunks = sched.schedule(PoolView(free_blocks=1, total_blocks=4, block_size=4))
    assert [c.seq.request_id for c in chunks] == ["a"]


def test_prefix_shared_with_a_running_sequence_is_not_charged() -> None:
    shared = tuple(range(100, 112))  # three full blocks of 4
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=100))
    a = Sequence("a", (*shared, 1, 2), max_tokens=4)
    sched.add(a)
    _advance(sched.schedule(PoolView(64, 64, 4, prefix_caching=True)))
    b = Sequence("b", (*shared, 3, 4), max_tokens=4)
    sched.add(b)
    # b needs blocks_for(15) = 4 blocks, 3 of them shared with a: 1 new + watermark 1
    assert [c.seq.request_id for c in sched.schedule(PoolView(3, 64, 4, prefix_caching=True))
            ] == ["a", "b"]
    c = Sequence("c", (*shared, 5, 6), max_tokens=4)
    sched.add(c)
    # without prefix caching the same pool is too small for c
    assert [x.seq.request_id for x in sched.schedule(PoolView(3, 64, 4))] == ["a", "b"]


def test_prefix_hashes_chain_and_salt() -> None:
    tokens = tuple(range(10))
    plain = prefix_block_hashes(tokens, 4)
    assert len(plain) == 2  # the partial block has no hash
    assert prefix_block_hashes((*tokens[:8], 99, 98), 4) == plain
    assert prefix_block_hashes((55, *tokens[1:]), 4)[1] != plain[1]  # hash covers the prefix
    assert prefix_block_hashes(tokens, 4, salt="lora-a") != plain


def test_preempt_newest_requeues_at_the_head_for_recompute() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=100))
    a, b, c = _seq("a", 3), _seq("b", 3), _seq("c", 3)
    for s in (a, b, c):
        sched.add(s)
    _advance(sched.schedule())
    assert sched.preempt_newest() is c
    assert sched.preempt_newest() is b
    assert [s.request_id for s in sched.waiting] == ["b", "c"]
    assert (c.num_computed, c.num_preemptions, c.output_token_ids) == (0, 1, [7])
    # admission pauses until a request finishes, so the shortage is not re-entered at once
    assert [(x.seq.request_id, x.num_tokens) for x in sched.schedule()] == [("a", 1)]
    sched.finish(a)
    # recompute feeds prompt + generated tokens in one prefill
    chunks = sched.schedule()
    assert [(x.seq.request_id, x.num_tokens) for x in chunks] == [("b", 4), ("c", 4)]
    assert c.next_chunk(10) == (1, 2, 3, 7)


def test_remove_takes_requests_out_of_either_queue() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=100))
    a, b = _seq("a", 2), _seq("b", 2)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    assert sched.remove("b") is b and sched.remove("a") is a
    assert sched.remove("zz") is None and not sched.has_unfinished


def test_blocks_for_rounds_up() -> None:
    assert [blocks_for(n, 4) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
