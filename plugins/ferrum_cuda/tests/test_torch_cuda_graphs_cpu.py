"""The static-shape decode path of `DecodeGraphs`, run on the CPU without graph capture.

On CUDA each bucket's forward is recorded into a CUDA graph; here the same
static buffers feed the same padded forward eagerly (``eager_replay``), so the
bucketing, padding, masking and scratch-block logic is checked against the
ragged eager path of a second model built from the same weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from ferrum_cuda.batch import Work
from ferrum_cuda.cuda_graphs import DecodeGraphs, _batch_bucket, _key_blocks, eager_replay
from ferrum_cuda.model import TorchDecoderLLM
from torch_tiny import TinyModel, prompt

from ferrum_core.errors import UnsupportedError
from ferrum_core.llm.decoder import ActiveLoraAdapter, DecodeItem, UnifiedItem

ATOL = 1e-5
BLOCK = 4
NUM_BLOCKS = 256


def static_model(model: TinyModel, *, max_batch_size: int = 16, **kw: int) -> TorchDecoderLLM:
    """A CPU model whose pure-decode steps take the static padded path, as on CUDA.

    No decode workspace (there is none on CUDA), and a pool full of NaN: a masked
    key that reads never-written memory would poison the logits.
    """
    llm = model.build(num_blocks=NUM_BLOCKS, block_size=BLOCK, workspace_bytes=0)
    assert llm._graphs is None  # the CPU never captures on its own
    llm._graphs = DecodeGraphs(
        llm.transformer, max_batch_size=max_batch_size, capturer=eager_replay, **kw
    )
    llm.pool.data.fill_(float("nan"))
    return llm


def eager_model(model: TinyModel) -> TorchDecoderLLM:
    return model.build(num_blocks=NUM_BLOCKS, block_size=BLOCK)


def graphs(llm: TorchDecoderLLM) -> DecodeGraphs:
    assert llm._graphs is not None
    return llm._graphs


def prefill_all(llms: Sequence[TorchDecoderLLM], prompts: dict[str, list[int]]) -> None:
    for llm in llms:
        for cache_id, tokens in prompts.items():
            llm.prefill(cache_id, tokens, 0)


def decode_step(
    llms: Sequence[TorchDecoderLLM], lengths: dict[str, int], token: int
) -> list[list[np.ndarray]]:
    """One decode of every sequence in ``lengths`` (advanced in place), in every model."""
    items = [DecodeItem(cache_id, token, pos) for cache_id, pos in lengths.items()]
    for cache_id in lengths:
        lengths[cache_id] += 1
    return [llm.decode_batch(items) for llm in llms]


def assert_rows_equal(got: Sequence[np.ndarray | None], want: Sequence[np.ndarray | None]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g is not None and w is not None
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)


# -- bucketing -------------------------------------------------------------------------


def test_batch_bucket() -> None:
    want = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 8: 8, 9: 16, 11: 16, 16: 16, 17: 24, 250: 256}
    assert {size: _batch_bucket(size) for size in want} == want


def test_key_blocks_power_of_two_capped() -> None:
    # (longest key length, block size 4) -> blocks: the next power of two holding it.
    want = {1: 1, 4: 1, 5: 2, 8: 2, 9: 4, 16: 4, 17: 8, 33: 16, 64: 16, 65: 32, 256: 64}
    assert {n: _key_blocks(n, 4, 64) for n in want} == want
    # A maximum that is not a power of two is its own (last) bucket.
    assert _key_blocks(130, 4, 50) == 50
    assert _key_blocks(200, 4, 50) == 50


# -- numerics --------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 8, 11])
@pytest.mark.parametrize("family", ["llama_gqa", "mistral_window"])
def test_static_path_equals_eager(
    batch: int, family: str, tiny: Callable[[str], TinyModel]
) -> None:
    model = tiny(family)
    static, eager = static_model(model), eager_model(model)
    # Prompts of 3 to 13 tokens, then 7 decodes: the key lengths cross block edges and
    # power-of-two block counts (8 -> 9 keys: 2 -> 4 blocks; 16 -> 17: 4 -> 8).
    prompts = {f"s{i}": prompt(3 + 2 * i % 12, seed=100 + i) for i in range(batch)}
    prefill_all((static, eager), prompts)
    assert graphs(static).replays == 0  # prefills are never static
    lengths = {cache_id: len(tokens) for cache_id, tokens in prompts.items()}
    seen_blocks = set()
    for step in range(7):
        longest = max(lengths.values()) + 1
        seen_blocks.add(_key_blocks(longest, BLOCK, graphs(static).max_blocks))
        got, want = decode_step((static, eager), lengths, token=5 + step)
        assert_rows_equal(got, want)
    assert graphs(static).replays == 7
    assert len(seen_blocks) >= 2  # the steps crossed a key-length bucket
    assert set(graphs(static)._graphs) == {(_batch_bucket(batch), b) for b in seen_blocks}
    # And one sequence against the Hugging Face oracle.
    tokens = [*prompts["s0"], *range(5, 12)]
    np.testing.assert_allclose(
        static.decode("s0", 12, len(tokens)), model.logits([*tokens, 12]).numpy()[-1], atol=1e-4
    )


def test_unified_steps_with_chunks_run_eagerly(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("qwen3")
    static, eager = static_model(model), eager_model(model)
    prefill_all((static, eager), {"a": prompt(6, seed=1), "b": prompt(9, seed=2)})
    chunk = prompt(7, seed=3)
    items = [UnifiedItem("a", [7], 6, True), UnifiedItem("c", chunk, 0, True)]
    mixed, serial = (llm.unified_forward(items) for llm in (static, eager))
    assert graphs(static).replays == 0
    assert_rows_equal(mixed, serial)
    # A one-token chunk that samples nothing is not a decode either.
    items = [UnifiedItem("b", [8], 9, True), UnifiedItem("d", [9], 0, False)]
    static.unified_forward(items)
    eager.unified_forward(items)
    assert graphs(static).replays == 0
    got, want = decode_step((static, eager), {"a": 7, "b": 10, "c": 7, "d": 1}, token=4)
    assert graphs(static).replays == 1
    assert_rows_equal(got, want)


# -- which steps are accepted ------------------------------------------------------------


def test_accepts_only_pure_decodes_without_lora(tiny: Callable[[str], TinyModel]) -> None:
    g = graphs(static_model(tiny("qwen2"), max_batch_size=4))
    decode = [Work(f"s{i}", (5,), 3, "last") for i in range(4)]
    assert g.accepts(decode, [1] * 4)
    assert g.accepts(decode[:1], [1])
    assert not g.accepts([], [])
    assert not g.accepts([*decode, Work("s4", (5,), 3, "last")], [1] * 5)  # over max
    assert not g.accepts(decode[:2], [1, 3])  # a prefill chunk
    assert not g.accepts([decode[0], Work("p", (5, 6), 0, "last")], [1, 2])
    assert not g.accepts([decode[0], Work("p", (5,), 0, "none")], [1, 1])  # non-final chunk
    assert not g.accepts([decode[0], Work("v", (5,), 3, "all")], [1, 1])  # verify
    assert not g.accepts(decode, [1] * 4, lora=object())  # an adapter on some row


def test_lora_steps_run_eagerly(
    tiny: Callable[[str], TinyModel], tmp_path_factory: pytest.TempPathFactory
) -> None:
    peft = pytest.importorskip("peft")
    model = tiny("llama_gqa")
    path = tmp_path_factory.mktemp("graphs-lora")
    torch.manual_seed(0)
    config = peft.LoraConfig(init_lora_weights=False, r=2, target_modules=["q_proj", "v_proj"])
    peft.get_peft_model(copy.deepcopy(model.hf), config).save_pretrained(path)
    static, eager = static_model(model), eager_model(model)
    prefill_all((static, eager), {"a": prompt(5, seed=1), "b": prompt(6, seed=2)})
    for llm in (static, eager):
        llm.set_lora_adapter_for_cache("b", ActiveLoraAdapter("ad", path))
    got, want = decode_step((static, eager), {"a": 5, "b": 6}, token=3)
    assert graphs(static).replays == 0
    assert_rows_equal(got, want)
    for llm in (static, eager):
        llm.set_lora_adapter_for_cache("b", None)
    got, want = decode_step((static, eager), {"a": 6, "b": 7}, token=4)
    assert graphs(static).replays == 1
    assert_rows_equal(got, want)


# -- caching and the scratch block ------------------------------------------------------


def test_static_entries_cached_per_bucket(tiny: Callable[[str], TinyModel]) -> None:
    static, eager = static_model(tiny("qwen2")), eager_model(tiny("qwen2"))
    prefill_all((static, eager), {f"s{i}": prompt(5 + i, seed=i) for i in range(3)})
    g = graphs(static)
    lengths = {"s0": 5, "s1": 6, "s2": 7}
    decode_step((static, eager), lengths, token=3)  # longest 8 keys: 2 blocks
    assert set(g._graphs) == {(4, 2)}
    decode_step((static, eager), lengths, token=4)  # 9 keys: 4 blocks
    entry = g._graphs[(4, 4)]
    ids_ptr = entry.ids.data_ptr()
    for step in range(3):  # 10, 11, 12 keys: the same bucket, replayed
        got, want = decode_step((static, eager), lengths, token=5 + step)
        assert_rows_equal(got, want)
        assert g._graphs[(4, 4)] is entry and entry.ids.data_ptr() == ids_ptr
    assert len(g._graphs) == 2 and g.replays == 5
    metrics = static.cache_metrics_snapshot()
    assert metrics is not None
    assert (metrics["cuda_graphs_captured"], metrics["cuda_graph_replays"]) == (2, 5)
    # A smaller batch is another bucket.
    got, want = decode_step((static, eager), {"s1": lengths["s1"]}, token=9)
    assert (1, 4) in g._graphs and g.replays == 6
    assert_rows_equal(got, want)


def test_full_cache_falls_back_to_eager(tiny: Callable[[str], TinyModel]) -> None:
    static, eager = static_model(tiny("qwen2"), max_graphs=1), eager_model(tiny("qwen2"))
    prefill_all((static, eager), {"a": prompt(7, seed=1), "b": prompt(3, seed=2)})
    decode_step((static, eager), {"a": 7, "b": 3}, token=3)  # (2, 2): cached
    got, want = decode_step((static, eager), {"a": 8, "b": 4}, token=4)  # (2, 4): no room
    assert set(graphs(static)._graphs) == {(2, 2)} and graphs(static).replays == 1
    assert_rows_equal(got, want)


def _slot_bits(llm: TorchDecoderLLM) -> torch.Tensor:
    """Every slot's K and V of every layer as raw bits ``[slots, ...]`` (NaN compares equal)."""
    data = llm.pool.data
    flat = data.view(data.shape[0], 2, -1, *data.shape[-2:]).view(torch.int32)
    return flat.permute(2, 0, 1, 3, 4).reshape(flat.shape[2], -1).clone()


def test_padding_writes_only_the_scratch_block(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("llama_gqa")
    static, eager = static_model(model), eager_model(model)
    prompts = {name: prompt(n, seed=n) for name, n in zip("abcde", (5, 8, 3, 6, 9), strict=True)}
    prefill_all((static, eager), prompts)
    before = _slot_bits(static)
    lengths = {cache_id: len(prompts[cache_id]) for cache_id in "abc"}
    got, want = decode_step((static, eager), lengths, token=7)  # 3 rows padded to 4
    assert set(graphs(static)._graphs) == {(4, 4)}
    assert_rows_equal(got, want)
    changed = set((_slot_bits(static) != before).any(dim=1).nonzero().flatten().tolist())
    written = set()
    for cache_id, length in lengths.items():
        table = static.manager.block_table(cache_id)
        written.add(table[(length - 1) // BLOCK] * BLOCK + (length - 1) % BLOCK)
    scratch = static.pool.scratch_slot
    assert scratch in changed  # the padding row wrote there ...
    assert changed - {scratch} == written  # ... and only the real rows wrote elsewhere
    # The sequences outside the step, and those in it, go on unharmed.
    got, want = decode_step((static, eager), {"d": 6, "e": 9}, token=8)
    assert_rows_equal(got, want)
    got, want = decode_step((static, eager), {**lengths, "d": 7, "e": 10}, token=9)
    assert_rows_equal(got, want)
    tokens = [*prompts["e"], 8, 9]
    np.testing.assert_allclose(got[-1], model.logits(tokens).numpy()[-1], atol=1e-4)


# -- the device guard --------------------------------------------------------------------


def test_cpu_never_enables_cuda_graphs(tiny: Callable[[str], TinyModel]) -> None:
    llm = tiny("qwen2").build(cuda_graphs=True)
    assert llm.device.type == "cpu" and llm._graphs is None
    llm.prefill("s", prompt(4), 0)
    llm.decode_batch([DecodeItem("s", 3, 4)])
    metrics = llm.cache_metrics_snapshot()
    assert metrics is not None and "cuda_graph_replays" not in metrics
    with pytest.raises(UnsupportedError):
        DecodeGraphs(llm.transformer, max_batch_size=4)  # capture needs CUDA
