"""split_blocks against gguf-py's own dequantiser, type by type, on random blocks."""

from __future__ import annotations

import numpy as np
import pytest

from ferrum_core.errors import UnsupportedError
from ferrum_core.models.quant_blocks import (
    BLOCK_TYPES,
    QuantBlocks,
    StoredTensor,
    split_blocks,
)
from tests.models.gguf_builder import F16_FIELDS, random_blocks

QUANTIZABLE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")  # gguf.quants.quantize implements these
GROUP = {"Q4_K": 32, "Q5_K": 32, "Q6_K": 16}


def gguf_dequantize(stored: StoredTensor) -> np.ndarray:
    from gguf import GGMLQuantizationType, quants

    out = quants.dequantize(stored.data, GGMLQuantizationType[stored.type])
    return np.asarray(out, dtype=np.float32).reshape(stored.shape)


def random_stored(qtype: str, rows: int, nblocks: int, seed: int) -> StoredTensor:
    block_size, type_size = BLOCK_TYPES[qtype]
    data = random_blocks(qtype, rows, nblocks, seed)
    return StoredTensor("w", (rows, nblocks * block_size), qtype, data, block_size, type_size)


def quantized(qtype: str, rows: int, cols: int, seed: int) -> StoredTensor:
    from gguf import GGMLQuantizationType, quants

    block_size, type_size = BLOCK_TYPES[qtype]
    weights = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    weights[0, :block_size] = 0.0  # an all-zero block (d = 0)
    data = quants.quantize(weights, GGMLQuantizationType[qtype])
    return StoredTensor("w", (rows, cols), qtype, data, block_size, type_size)


def assert_exact(blocks: QuantBlocks, stored: StoredTensor) -> None:
    ours = blocks.dequantize()
    assert ours.dtype == np.float32 and ours.shape == stored.shape
    # The same float32 operations in the same order as gguf-py: equal, not just close.
    np.testing.assert_array_equal(ours, gguf_dequantize(stored))
    by_formula = blocks.scales[..., None] * blocks.codes + blocks.mins[..., None]
    np.testing.assert_array_equal(by_formula.reshape(stored.shape), ours)


@pytest.mark.parametrize("qtype", sorted(F16_FIELDS))
def test_random_blocks_match_gguf_dequantize(qtype: str) -> None:
    for seed, (rows, nblocks) in enumerate([(1, 1), (3, 2), (7, 5)]):
        stored = random_stored(qtype, rows, nblocks, seed)
        blocks = split_blocks(stored)
        assert_exact(blocks, stored)
        group = GROUP.get(qtype, BLOCK_TYPES[qtype][0])
        per_row = stored.shape[1] // group
        assert blocks.group_size == group
        assert blocks.scales.shape == blocks.mins.shape == (rows, per_row)
        assert blocks.codes.shape == (rows, per_row, group)
        assert blocks.scales.dtype == blocks.mins.dtype == np.float32
        assert np.issubdtype(blocks.codes.dtype, np.integer)


@pytest.mark.parametrize("qtype", QUANTIZABLE)
def test_quantized_weights_match_gguf_dequantize(qtype: str) -> None:
    stored = quantized(qtype, rows=5, cols=128, seed=1)
    assert_exact(split_blocks(stored), stored)


def test_code_ranges_and_minimums() -> None:
    def split(qtype: str) -> QuantBlocks:
        return split_blocks(random_stored(qtype, 4, 3, seed=7))

    for qtype, low, high in [
        ("Q4_0", 0, 15),
        ("Q4_1", 0, 15),
        ("Q5_0", 0, 31),
        ("Q5_1", 0, 31),
        ("Q4_K", 0, 15),
        ("Q5_K", 0, 31),
        ("Q8_0", -128, 127),
        ("Q6_K", -32, 31),
    ]:
        codes = split(qtype).codes
        assert codes.min() == low and codes.max() == high, qtype
    q4, q5 = split("Q4_0"), split("Q5_0")
    np.testing.assert_array_equal(q4.mins, -8 * q4.scales)
    np.testing.assert_array_equal(q5.mins, -16 * q5.scales)
    for qtype in ("Q8_0", "Q6_K"):
        assert not split(qtype).mins.any(), qtype
    assert split("Q4_K").mins.any() and split("Q4_1").mins.any()


def test_q4_0_layout_by_hand() -> None:
    """One block: d = 0.5, byte j holds element j (low nibble) and j + 16 (high)."""
    d = np.array([0.5], dtype=np.float16).view(np.uint8)
    qs = np.array([(15 - j) << 4 | j for j in range(16)], dtype=np.uint8)
    stored = StoredTensor("w", (1, 32), "Q4_0", np.concatenate([d, qs])[None, :], 32, 18)
    blocks = split_blocks(stored)
    assert blocks.codes.tolist() == [[list(range(16)) + list(range(15, -1, -1))]]
    assert blocks.scales.tolist() == [[0.5]] and blocks.mins.tolist() == [[-4.0]]
    assert blocks.dequantize()[0, :3].tolist() == [-4.0, -3.5, -3.0]


def test_vector_shapes_keep_leading_dims() -> None:
    stored = quantized("Q8_0", rows=1, cols=64, seed=3)
    vector = StoredTensor("b", (64,), "Q8_0", stored.data[0], 32, 34)
    blocks = split_blocks(vector)
    assert blocks.scales.shape == (2,) and blocks.codes.shape == (2, 32)
    np.testing.assert_array_equal(blocks.dequantize(), gguf_dequantize(stored)[0])


@pytest.mark.parametrize("qtype", ["IQ4_NL", "Q2_K", "F32", "BF16", "nonsense"])
def test_unsupported_types_name_the_type(qtype: str) -> None:
    stored = StoredTensor("model.x.weight", (2, 32), qtype, np.zeros((2, 64), np.uint8), 32, 32)
    with pytest.raises(UnsupportedError, match=rf"{qtype}.*model\.x\.weight"):
        split_blocks(stored)


def test_wrong_byte_count_is_a_load_error() -> None:
    from ferrum_core.errors import ModelLoadError

    stored = StoredTensor("w", (2, 64), "Q4_0", np.zeros((2, 35), np.uint8), 32, 18)
    with pytest.raises(ModelLoadError, match="w"):
        split_blocks(stored)
