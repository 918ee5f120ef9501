"""LlmExecutor semantics (port of the reference's own executor tests, and more)."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from ferrum_core.errors import (
    BackendError,
    CapacityError,
    ExecutorStateError,
    InvalidInputError,
    KvPoolExhaustedError,
    UnknownCacheError,
    UnsupportedError,
)
from ferrum_core.llm import LlmExecutor
from ferrum_core.llm.metadata import ProfileFlags
from ferrum_core.protocol import (
    BatchModelExecutor,
    DecodeInput,
    ExecutorState,
    PrefillInput,
    UnifiedBatch,
    UnifiedBatchItem,
)
from ferrum_core.tensor import as_tensor_ref
from ferrum_core.types import DataType
from tests.doubles import ToyLlm, history_logits

FULL = {"ferrum_require_full_logits": True}


def prefill(ex: LlmExecutor, tokens: list[int], handle=None, metadata=None):  # type: ignore[no-untyped-def]
    inp = PrefillInput(as_tensor_ref(np.array([tokens], dtype=np.int64)), kv_cache=handle)
    if metadata:
        inp = inp.with_metadata(metadata)
    return ex.prefill(inp)


def decode_input(token: int, handle, metadata=None) -> DecodeInput:  # type: ignore[no-untyped-def]
    inp = DecodeInput(as_tensor_ref(np.array([[token]], dtype=np.int64)), handle)
    return inp.with_metadata(metadata) if metadata else inp


def test_cache_ids_are_sequential_and_unique() -> None:
    ex = LlmExecutor(ToyLlm())
    a = prefill(ex, [1, 2]).kv_cache
    b = prefill(ex, [3]).kv_cache
    assert (a.cache_id, b.cache_id) == ("llm-cache-0", "llm-cache-1")
    assert ex.new_cache().cache_id == "llm-cache-2"


def test_prefill_returns_last_logits_and_handle_length() -> None:
    ex = LlmExecutor(ToyLlm())
    out = prefill(ex, [1, 2, 3])
    assert out.logits.shape == (1, 1, 32)
    np.testing.assert_allclose(out.last_token_logits().to_numpy()[0], history_logits([1, 2, 3]))
    assert out.kv_cache.sequence_length == 3


def test_chunked_prefill_continues_supplied_handle() -> None:
    model = ToyLlm()
    ex = LlmExecutor(model)
    first = prefill(ex, [5, 6])
    second = prefill(ex, [7, 8, 9], handle=first.kv_cache)
    assert second.kv_cache.cache_id == first.kv_cache.cache_id
    assert second.kv_cache.sequence_length == 5
    np.testing.assert_allclose(second.logits.to_numpy()[0, -1], history_logits([5, 6, 7, 8, 9]))


@pytest.mark.parametrize("native", [True, False])
def test_prefill_and_decode_paths(native: bool) -> None:
    model = ToyLlm(native=native)
    ex = LlmExecutor(model)
    out = prefill(ex, [1, 2])
    dec = ex.decode(decode_input(4, out.kv_cache))
    np.testing.assert_allclose(dec.logits.to_numpy()[0], history_logits([1, 2, 4]))
    assert dec.kv_cache.sequence_length == 3
    if native:
        assert model.calls["unified_forward"] == 2 and model.calls["prefill"] == 0
    else:
        assert model.calls["unified_forward"] == 0
        assert model.calls["prefill"] == 1 and model.calls["decode"] == 1


def test_prefill_skips_unified_forward_when_full_logits_required() -> None:
    model = ToyLlm()
    ex = LlmExecutor(model)
    out = prefill(ex, [1, 2], metadata=FULL)
    assert out.last_token_logits().shape == (1, 32)
    assert model.calls["unified_forward"] == 0 and model.calls["prefill"] == 1


def test_decode_skips_unified_forward_when_full_logits_required() -> None:
    model = ToyLlm()
    ex = LlmExecutor(model)
    handle = prefill(ex, [1, 2], metadata=FULL).kv_cache
    ex.decode(decode_input(7, handle, FULL))
    assert model.calls["unified_forward"] == 0
    assert model.calls["decode"] == 1


def _item(handle, tokens, final=True, metadata=None) -> UnifiedBatchItem:  # type: ignore[no-untyped-def]
    return UnifiedBatchItem(
        handle.cache_id, tuple(tokens), handle, handle.sequence_length, final, metadata or {}
    )


def test_unified_decode_skips_unified_forward_when_full_logits_required() -> None:
    model = ToyLlm()
    ex = LlmExecutor(model)
    first = prefill(ex, [1, 2, 3]).kv_cache
    second = prefill(ex, [4]).kv_cache
    model.calls.clear()
    batch = UnifiedBatch((_item(first, [7], metadata=FULL), _item(second, [8])))
    out = ex.unified_decode(batch)
    assert out[0] is not None and out[0].shape == (32,)
    assert model.calls["unified_forward"] == 0
    assert model.full_logits_flags == [True]


@pytest.mark.parametrize("native", [True, False])
def test_unified_decode_mixed_batch_equals_serial(native: bool) -> None:
    model = ToyLlm(native=native)
    ex = LlmExecutor(model)
    running = prefill(ex, [1, 2, 3]).kv_cache
    fresh = ex.new_cache()
    chunked = ex.new_cache()
    batch = UnifiedBatch(
        (_item(running, [4]), _item(fresh, [9, 8, 7]), _item(chunked, [5, 5], final=False))
    )
    assert batch.total_q_tokens == 6 and batch.num_sampled_items == 2
    out = ex.unified_decode(batch)
    assert out[2] is None
    np.testing.assert_allclose(out[0], history_logits([1, 2, 3, 4]))  # type: ignore[arg-type]
    np.testing.assert_allclose(out[1], history_logits([9, 8, 7]))  # type: ignore[arg-type]
    snap = ex.cache_metrics_snapshot()
    assert snap["unified_native_calls"] == (1 if native else 0)
    assert snap["unified_fallback_calls"] == (0 if native else 1)
    assert ex.supports_native_unified_decode() is native
    # continue the chunked item to its final chunk
    handle = chunked.with_sequence_length(2)
    rest = ex.unified_decode(UnifiedBatch((_item(handle, [6]),)))
    np.testing.assert_allclose(rest[0], history_logits([5, 5, 6]))  # type: ignore[arg-type]


def test_model_claiming_native_but_unsupported_falls_back_and_is_counted() -> None:
    model = ToyLlm(native=True)
    ex = LlmExecutor(model)
    handle = ex.new_cache()

    def unsupported(items):  # type: ignore[no-untyped-def]
        raise UnsupportedError("nope")

    model.unified_forward = unsupported  # type: ignore[method-assign]
    out = ex.unified_decode(UnifiedBatch((_item(handle, [1, 2]),)))
    np.testing.assert_allclose(out[0], history_logits([1, 2]))  # type: ignore[arg-type]
    assert ex.cache_metrics_snapshot()["unified_fallback_calls"] == 1


def test_forward_verify_equals_sequential_decodes_and_truncate() -> None:
    ex = LlmExecutor(ToyLlm())
    base = prefill(ex, [1, 2]).kv_cache
    outs = ex.forward_verify([decode_input(t, base) for t in (3, 4, 5)])
    assert [o.kv_cache.sequence_length for o in outs] == [3, 4, 5]
    for i, o in enumerate(outs):
        np.testing.assert_allclose(o.logits.to_numpy()[0], history_logits([1, 2, 3, 4, 5][: 3 + i]))
    cut = ex.truncate_kv(outs[-1].kv_cache, 3)
    again = ex.decode(decode_input(9, cut))
    np.testing.assert_allclose(again.logits.to_numpy()[0], history_logits([1, 2, 3, 9]))
    with pytest.raises(InvalidInputError):
        ex.truncate_kv(again.kv_cache, 10)


def test_bad_inputs_raise_typed_errors_and_leave_others_intact() -> None:
    model = ToyLlm(capacity=8)
    ex = LlmExecutor(model)
    keep = prefill(ex, [1, 2]).kv_cache
    with pytest.raises(InvalidInputError, match="out of vocabulary"):
        prefill(ex, [1, 99])
    with pytest.raises(InvalidInputError, match="out of vocabulary"):
        ex.decode(decode_input(-1, keep))
    with pytest.raises(CapacityError):
        prefill(ex, list(range(9)))
    with pytest.raises(InvalidInputError, match="empty"):
        prefill(ex, [])
    released = prefill(ex, [3]).kv_cache
    ex.release_cache(released.cache_id)
    with pytest.raises(UnknownCacheError):
        ex.decode(decode_input(1, released))
    other = LlmExecutor(ToyLlm())
    with pytest.raises(UnknownCacheError):
        other.decode(decode_input(1, keep))
    with pytest.raises(InvalidInputError, match="stale"):
        ex.decode(decode_input(1, keep.with_sequence_length(1)))
    with pytest.raises(InvalidInputError):
        ex.prefill(PrefillInput(as_tensor_ref(np.array([[1.5, 2.0]]))))
    dec = ex.decode(decode_input(3, keep))
    np.testing.assert_allclose(dec.logits.to_numpy()[0], history_logits([1, 2, 3]))
    assert ex.live_caches() == [keep.cache_id]


def test_batch_over_max_batch_size_is_rejected() -> None:
    ex = LlmExecutor(ToyLlm(max_batch_size=2))
    handles = [ex.new_cache() for _ in range(3)]
    with pytest.raises(CapacityError, match="max_batch_size"):
        ex.unified_decode(UnifiedBatch(tuple(_item(h, [1]) for h in handles)))


def test_pool_exhaustion_on_fresh_prefill_does_not_leak_a_cache_id() -> None:
    ex = LlmExecutor(ToyLlm(max_tokens_total=4))
    keep = prefill(ex, [1, 2, 3]).kv_cache
    with pytest.raises(KvPoolExhaustedError):
        prefill(ex, [4, 5])
    assert ex.live_caches() == [keep.cache_id]


def test_lora_metadata_validation() -> None:
    ex = LlmExecutor(ToyLlm())
    with pytest.raises(InvalidInputError, match="incomplete LoRA"):
        prefill(ex, [1], metadata={"ferrum_lora_adapter": "a"})
    with pytest.raises(UnsupportedError):
        prefill(ex, [1], metadata={"ferrum_lora_adapter": "a", "ferrum_lora_path": "/x"})
    model = ToyLlm(lora=True)
    ex = LlmExecutor(model)
    handle = prefill(ex, [1], metadata={"ferrum_lora_adapter": "a", "ferrum_lora_path": "/x"})
    adapter = model.adapters[handle.kv_cache.cache_id]
    assert adapter is not None and adapter.name == "a"
    assert ex.capabilities().supports_lora


def test_cache_metrics_snapshot_includes_model_lock_wait_metrics() -> None:
    ex = LlmExecutor(ToyLlm(capacity=16))
    assert ex.kv_capacity() == 16
    prefill(ex, [1])
    metrics = ex.cache_metrics_snapshot()
    assert metrics["position"] == "toy-cache"
    lock = metrics["executor_model_lock"]
    assert lock["schema_version"] == 1
    assert lock["samples"] >= 2
    assert isinstance(lock["total_wait_time_us"], int)
    assert isinstance(lock["avg_wait_time_ms"], float)


def test_profile_flags_by_presence() -> None:
    env = {"FERRUM_BATCH_PREFILL_PROF": "", "FERRUM_BATCH_DECODE_PROF": "0"}
    flags = ProfileFlags.from_env(env)
    assert flags.batch_prefill and flags.batch_decode
    assert ProfileFlags.from_env({"UNRELATED": "1"}) == ProfileFlags()


def test_profiling_prints_when_enabled(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FERRUM_BATCH_PREFILL_PROF", "1")
    ex = LlmExecutor(ToyLlm())
    prefill(ex, [1, 2])
    assert "[batch-prefill] n_items=1 total_q=2" in capsys.readouterr().err


def test_batch_decode_profile_prints_the_references_line_every_8th_call(
    monkeypatch: pytest.MonkeyPatch, capsys  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("FERRUM_BATCH_DECODE_PROF", "1")
    ex = LlmExecutor(ToyLlm())
    handles = [prefill(ex, [1, 2]).kv_cache, prefill(ex, [3]).kv_cache]
    capsys.readouterr()
    for step in range(17):
        outs = ex.batch_decode([decode_input(4 + step, h) for h in handles])
        handles = [o.kv_cache for o in outs]
    lines = capsys.readouterr().err.splitlines()
    pattern = re.compile(
        r"\[exec-batch-decode-prof\] call#(\d+) m=2 total=\d+us prep=\d+us"
        r" model_block=\d+us\(lock_acq=\d+us model_call=\d+us\) wrap=\d+us"
    )
    matches = [pattern.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches if m] == [0, 8, 16]
    monkeypatch.delenv("FERRUM_BATCH_DECODE_PROF")
    quiet = LlmExecutor(ToyLlm())
    quiet.batch_decode([decode_input(5, prefill(quiet, [1]).kv_cache)])
    assert "exec-batch-decode-prof" not in capsys.readouterr().err


def test_llm_executor_is_a_batch_model_executor() -> None:
    ex = LlmExecutor(ToyLlm(max_batch_size=3))
    assert isinstance(ex, BatchModelExecutor)
    assert ex.optimal_batch_size() == 3
    assert [ex.supports_batch_size(n) for n in (0, 1, 3, 4)] == [False, True, True, False]
    handles = [prefill(ex, [i + 1]).kv_cache for i in range(4)]
    with pytest.raises(CapacityError):
        ex.batch_decode([decode_input(9, h) for h in handles])
    outs = ex.batch_decode([decode_input(9, h) for h in handles[:3]])  # the size it supports
    assert [o.kv_cache.sequence_length for o in outs] == [2, 2, 2]


def test_truncate_kv_for_cache_id_rolls_back_by_id() -> None:
    model = ToyLlm()
    ex = LlmExecutor(model)
    handle = prefill(ex, [1, 2, 3, 4]).kv_cache
    ex.truncate_kv_for_cache_id(handle.cache_id, 2)
    assert model.history[handle.cache_id] == [1, 2]
    with pytest.raises(InvalidInputError, match="stale"):
        ex.decode(decode_input(7, handle))  # the old handle says 4
    out = ex.decode(decode_input(7, handle.with_sequence_length(2)))
    np.testing.assert_allclose(out.logits.to_numpy()[0], history_logits([1, 2, 7]))
    with pytest.raises(InvalidInputError, match="cannot truncate"):
        ex.truncate_kv_for_cache_id(handle.cache_id, 4)
    with pytest.raises(UnknownCacheError):
        ex.truncate_kv_for_cache_id("llm-cache-99", 0)
    ex.shutdown()
    with pytest.raises(ExecutorStateError):
        ex.truncate_kv_for_cache_id(handle.cache_id, 0)


def test_status_state_machine_and_shutdown() -> None:
    started, release = threading.Event(), threading.Event()
    model = ToyLlm(native=False)
    original = model.prefill

    def slow_prefill(cache_id, tokens, start_pos):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(5)
        return original(cache_id, tokens, start_pos)

    model.prefill = slow_prefill  # type: ignore[method-assign]
    ex = LlmExecutor(model)
    assert ex.status().state == ExecutorState.READY and ex.status().is_ready
    worker = threading.Thread(target=prefill, args=(ex, [1, 2]))
    worker.start()
    assert started.wait(5)
    assert ex.status().state == ExecutorState.BUSY
    release.set()
    worker.join(5)
    status = ex.status()
    assert status.state == ExecutorState.READY and status.prefill_operations == 1
    assert ex.metrics().prefill_operations == 1
    ex.shutdown()
    assert ex.status().state == ExecutorState.SHUTDOWN and not ex.status().is_ready
    with pytest.raises(ExecutorStateError):
        prefill(ex, [1])
    with pytest.raises(ExecutorStateError):
        ex.new_cache()


def test_backend_bug_becomes_backend_error() -> None:
    model = ToyLlm()

    def broken(items):  # type: ignore[no-untyped-def]
        raise RuntimeError("kernel exploded")

    model.unified_forward = broken  # type: ignore[method-assign]
    ex = LlmExecutor(model)
    with pytest.raises(BackendError, match="kernel exploded"):
        prefill(ex, [1])
    assert ex.live_caches() == []


def test_capabilities_derive_from_the_model() -> None:
    ex = LlmExecutor(ToyLlm(capacity=50, max_batch_size=3))
    caps = ex.capabilities()
    assert caps.max_sequence_length == 50 and caps.max_batch_size == 3
    assert caps.supports_native_unified_decode
    assert ex.info().vocab_size == 32
    assert caps.model_dump(mode="json")["supported_dtypes"] == ["fp32"]


def test_instance_capabilities_come_from_the_declared_ones() -> None:
    model = ToyLlm(lora=True)
    own = LlmExecutor(model).capabilities()
    assert own.supports_lora and own.supports_speculative_decoding
    declared = own.model_copy(update={
        "supports_lora": False, "supports_speculative_decoding": False,
        "supported_dtypes": (DataType.FP32, DataType.BF16), "max_batch_size": 256,
    })
    caps = LlmExecutor(model, declared=declared).capabilities()
    assert not caps.supports_lora and not caps.supports_speculative_decoding
    assert caps.supported_dtypes == (DataType.FP32, DataType.BF16)
    assert caps.max_batch_size == own.max_batch_size  # the instance's own limit
    assert caps.supports_native_unified_decode  # what the model does
    wider = own.model_copy(update={"supports_prefix_caching": True})
    assert not LlmExecutor(model, declared=wider).capabilities().supports_prefix_caching


def test_concurrent_decodes_on_different_sequences() -> None:
    ex = LlmExecutor(ToyLlm(capacity=128))
    handles = [prefill(ex, [i + 1]).kv_cache for i in range(4)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            h = handles[i]
            for step in range(20):
                h = ex.decode(decode_input((i + step) % 32, h)).kv_cache
            handles[i] = h
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(h.sequence_length == 21 for h in handles)


def test_half_failed_batch_rolls_existing_caches_back() -> None:
    model = ToyLlm(native=False, max_tokens_total=12)
    ex = LlmExecutor(model)
    a = prefill(ex, [1, 2, 3, 4]).kv_cache
    more_a = PrefillInput(as_tensor_ref(np.array([[5, 6, 7]])), kv_cache=a)
    new_b = PrefillInput(as_tensor_ref(np.array([[1, 1, 1, 1, 1, 1]])))
    with pytest.raises(KvPoolExhaustedError):
        ex.batch_prefill([more_a, new_b])
    assert model.history[a.cache_id] == [1, 2, 3, 4]
    assert ex.live_caches() == [a.cache_id]
    again = ex.prefill(more_a)
    expected = history_logits([1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_allclose(again.logits.to_numpy()[0, -1], expected)


@pytest.mark.parametrize("bad", [None, np.zeros(5, np.float32)])
def test_missing_or_misshaped_logits_are_backend_errors(bad) -> None:  # type: ignore[no-untyped-def]
    model = ToyLlm()
    model.unified_forward = lambda items: [bad for _ in items]  # type: ignore[method-assign]
    ex = LlmExecutor(model)
    with pytest.raises(BackendError):
        prefill(ex, [1, 2])
    assert ex.live_caches() == []


def test_release_racing_a_decode_gives_unknown_cache_error() -> None:
    ex = LlmExecutor(ToyLlm())
    handle = prefill(ex, [1, 2]).kv_cache
    errors: list[BaseException] = []
    session = ex._session  # drive the race deterministically

    def worker() -> None:
        try:
            ex.decode(decode_input(3, handle))
        except BaseException as exc:
            errors.append(exc)

    with session.lock:
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(0.2)  # the worker resolved its handle and now waits for the lock
        session.caches.forget(handle.cache_id)
        session.model.release(handle.cache_id)
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], UnknownCacheError)
    assert ex.live_caches() == []


def test_fallback_routing_one_token_prompt_is_a_prefill_and_chunks_are_bounded() -> None:
    model = ToyLlm(native=False).with_config(max_chunk_tokens=2)
    calls: list[tuple[str, int, int]] = []
    original = model.prefill

    def spy(cache_id, tokens, start_pos):  # type: ignore[no-untyped-def]
        calls.append((cache_id, len(tokens), start_pos))
        return original(cache_id, tokens, start_pos)

    model.prefill = spy  # type: ignore[method-assign]
    ex = LlmExecutor(model)
    one = prefill(ex, [7])
    assert calls == [(one.kv_cache.cache_id, 1, 0)] and model.calls["decode"] == 0
    calls.clear()
    five = prefill(ex, [1, 2, 3, 4, 5])
    assert [(n, s) for _, n, s in calls] == [(2, 0), (2, 2), (1, 4)]
    np.testing.assert_allclose(five.logits.to_numpy()[0, -1], history_logits([1, 2, 3, 4, 5]))
