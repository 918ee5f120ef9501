"""GgufTensors: a GGUF's tensors by Hugging Face name, as stored; bad files as ModelLoadError."""

from __future__ import annotations

import itertools
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from ferrum_core.errors import ModelLoadError
from ferrum_core.models import WeightSource, convert_gguf
from ferrum_core.models.gguf_tensors import GgufTensors, open_gguf, unpermute_rows
from ferrum_core.models.quant_blocks import BLOCK_TYPES, split_blocks, to_float32
from tests.models.gguf_builder import (
    build_tiny_llama_and_gguf,
    k_and_5bit_quants,
    mixed_quants,
)

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    given = None

K_SHAPE = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256)
_names = itertools.count()


@pytest.fixture(scope="module", params=["mixed", "k-quants"])
def converted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(GGUF file, the directory convert_gguf made of it)."""
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "mixed":
        _, gguf_path = build_tiny_llama_and_gguf(tmp, quant=mixed_quants)
    else:
        _, gguf_path = build_tiny_llama_and_gguf(tmp, quant=k_and_5bit_quants, **K_SHAPE)
    return gguf_path, convert_gguf(gguf_path, tmp / "converted", progress=False)


def test_stored_blocks_dequantise_to_the_converted_weights(converted: tuple[Path, Path]) -> None:
    from gguf import GGUFReader

    gguf_path, out = converted
    kinds = Counter(t.tensor_type.name for t in GGUFReader(gguf_path).tensors)
    with GgufTensors(gguf_path) as tensors, WeightSource.from_dir(out) as weights:
        assert tensors.names() == weights.names() and tensors.unmapped == ()
        assert tensors.types() == dict(kinds)
        assert len(set(kinds) & set(BLOCK_TYPES)) >= 3
        for name in weights.names():
            stored, floats = tensors.stored(name), weights.get(name)
            assert stored.name == name and stored.shape == tensors.shape(name) == floats.shape
            if stored.type in BLOCK_TYPES:
                rows, cols = stored.shape
                assert stored.data.dtype == np.uint8
                assert stored.data.shape == (rows, cols // stored.block_size * stored.type_size)
                np.testing.assert_array_equal(split_blocks(stored).dequantize(), floats, name)
            else:
                assert stored.block_size == 1
                np.testing.assert_array_equal(to_float32(stored), floats, name)
            np.testing.assert_array_equal(tensors.get(name), floats, name)


def test_q_and_k_blocks_are_unpermuted_rows(converted: tuple[Path, Path]) -> None:
    from gguf import GGUFReader

    gguf_path, _ = converted
    raw = {t.name: t.data for t in GGUFReader(gguf_path).tensors}
    with GgufTensors(gguf_path) as tensors:
        heads = tensors.metadata["llama.attention.head_count"]
        kv_heads = tensors.metadata["llama.attention.head_count_kv"]
        q = tensors.stored("model.layers.0.self_attn.q_proj.weight")
        k = tensors.stored("model.layers.1.self_attn.k_proj.weight")
        v = tensors.stored("model.layers.0.self_attn.v_proj.weight")
    np.testing.assert_array_equal(q.data, unpermute_rows(raw["blk.0.attn_q.weight"], heads))
    np.testing.assert_array_equal(k.data, unpermute_rows(raw["blk.1.attn_k.weight"], kv_heads))
    assert not np.array_equal(q.data, raw["blk.0.attn_q.weight"])  # the rows did move
    assert v.data.tobytes() == raw["blk.0.attn_v.weight"].tobytes()  # v: not permuted
    assert not v.data.flags.writeable  # a view of the map, not a copy


def test_f32_gguf_stores_the_original_weights(tmp_path: Path) -> None:
    hf_dir, gguf_path = build_tiny_llama_and_gguf(tmp_path, attention_bias=True)
    original = load_file(hf_dir / "model.safetensors")
    with GgufTensors(gguf_path) as tensors:
        assert tensors.types() == {"F32": len(original)}
        assert tensors.types(elements=True) == {"F32": sum(a.size for a in original.values())}
        for name, array in original.items():
            stored = tensors.stored(name)
            assert (stored.type, stored.block_size, stored.type_size) == ("F32", 1, 4)
            np.testing.assert_array_equal(stored.data, array, name)  # q/k rows and biases too


def test_unknown_name_and_use_after_close(tmp_path: Path) -> None:
    _, gguf_path = build_tiny_llama_and_gguf(tmp_path)
    tensors = GgufTensors(gguf_path)
    with pytest.raises(ModelLoadError, match=r"tiny-0\.gguf.*'model\.nope'"):
        tensors.stored("model.nope")
    tensors.close()
    with pytest.raises(ModelLoadError, match="after close"):
        tensors.stored("model.norm.weight")


# -- truncated and corrupt files -------------------------------------------


@pytest.fixture(scope="module")
def good_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """(bytes of a valid tiny GGUF, end of its last tensor's data)."""
    from gguf import GGUFReader

    _, path = build_tiny_llama_and_gguf(tmp_path_factory.mktemp("good"), quant=mixed_quants)
    end = max(t.data_offset + t.n_bytes for t in GGUFReader(path).tensors)
    return path.read_bytes(), end


def _write(directory: Path, content: bytes) -> Path:
    path = directory / f"bad-{next(_names)}.gguf"
    path.write_bytes(content)
    return path


def assert_load_error_names_file(path: Path, convert_too: bool = True) -> None:
    with pytest.raises(ModelLoadError) as info:
        GgufTensors(path)
    assert str(path) in str(info.value)
    if convert_too:
        with pytest.raises(ModelLoadError) as info:
            convert_gguf(path, path.with_suffix(".out"), progress=False)
        assert str(path) in str(info.value) and not path.with_suffix(".out").exists()


def test_truncated_files(tmp_path: Path, good_gguf: tuple[bytes, int]) -> None:
    content, end = good_gguf
    cuts = [0, 3, 4, 7, 8, 16, 23, 24, 31, end - 1, end - 5000]
    cuts += [int(end * f) for f in (0.002, 0.01, 0.05, 0.2, 0.5, 0.9)]
    for cut in cuts:
        assert_load_error_names_file(_write(tmp_path, content[:cut]))


def test_garbage_after_magic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    header = b"GGUF" + struct.pack("<IQQ", 3, 2, 5)  # version 3, 2 tensors, 5 fields
    for body in [bytes(100), b"\xff" * 64, rng.bytes(1000), struct.pack("<I", 3) + rng.bytes(50)]:
        assert_load_error_names_file(_write(tmp_path, b"GGUF" + body))
        assert_load_error_names_file(_write(tmp_path, header + body))
    assert_load_error_names_file(_write(tmp_path, b"GGUF"))
    assert_load_error_names_file(_write(tmp_path, b""))
    with pytest.raises(ModelLoadError, match="not found"):
        open_gguf(tmp_path / "missing.gguf")


if given is not None:
    FUZZ = settings(
        derandomize=True,
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )

    @FUZZ
    @given(fraction=st.floats(0.0, 1.0, exclude_max=True))
    def test_any_truncation_is_a_load_error(
        tmp_path: Path, good_gguf: tuple[bytes, int], fraction: float
    ) -> None:
        content, end = good_gguf
        path = _write(tmp_path, content[: int(end * fraction)])
        assert_load_error_names_file(path, convert_too=False)

    @FUZZ
    @given(
        version=st.sampled_from([2, 3]),
        counts=st.tuples(st.integers(0, 40), st.integers(0, 40)),
        body=st.binary(max_size=600),
    )
    def test_any_garbage_body_is_a_load_error(
        tmp_path: Path, version: int, counts: tuple[int, int], body: bytes
    ) -> None:
        path = _write(tmp_path, b"GGUF" + struct.pack("<IQQ", version, *counts) + body)
        try:  # a few garbage bodies do parse (no tensors, no fields): not a model though
            GgufTensors(path).close()
        except ModelLoadError as exc:
            assert str(path) in str(exc)
        with pytest.raises(ModelLoadError) as info:
            convert_gguf(path, path.with_suffix(".out"), progress=False)
        assert str(path) in str(info.value)


# -- the real default model --------------------------------------------------


@pytest.mark.slow
def test_default_model_blocks_match_the_converted_weights(
    default_gguf: Path, default_dir: Path
) -> None:
    with WeightSource.from_dir(default_dir, gguf=default_gguf) as weights:
        assert weights.stored_from_gguf and weights.gguf_path == default_gguf
        types = weights.stored_types()
        assert (types["Q4_1"], types["Q8_0"]) == (210, 1)
        assert set(types) == {"Q4_1", "Q8_0", "F32"}
        embed = weights.stored("model.embed_tokens.weight")  # tied: also the LM head
        assert embed.type == "Q8_0" and embed.data.shape == (49152, 576 // 32 * 34)
        for name in [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.7.self_attn.k_proj.weight",
            "model.layers.29.mlp.down_proj.weight",
        ]:
            stored = weights.stored(name)
            assert name == "model.embed_tokens.weight" or stored.type == "Q4_1"
            np.testing.assert_array_equal(split_blocks(stored).dequantize(), weights.get(name))
