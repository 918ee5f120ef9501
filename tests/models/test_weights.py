"""WeightSource: single and sharded safetensors, dtypes, and every bad-file case."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ferrum_core.errors import ConfigError, ModelLoadError
from ferrum_core.models import (
    ModelConfig,
    WeightSource,
    convert_gguf,
    expected_tensors,
    load_model,
)
from ferrum_core.models.safetensors_io import SafetensorsFile, write_safetensors
from tests.models.conftest import FAMILY_CASES
from tests.tiny_models import build_tiny_model


def torch_state(directory: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype="auto")
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "case", FAMILY_CASES, ids=lambda c: f"{c[0]}-{'tied' if c[1] else 'untied'}"
)
def test_expected_tensors_match_transformers_and_load(
    case: tuple[str, bool], tiny_models: dict[Any, Path]
) -> None:
    directory = tiny_models[case]
    config = ModelConfig.from_dir(directory)
    state = torch_state(directory)
    if config.tie_word_embeddings:
        del state["lm_head.weight"]  # a view of the embeddings, not saved
    expected = expected_tensors(config)
    assert expected == {k: tuple(v.shape) for k, v in state.items()}
    with WeightSource.from_dir(directory) as weights:
        weights.validate(config)
        assert weights.names() == sorted(expected)
        for name, tensor in state.items():
            array = weights.get(name)
            assert array.dtype == np.float32
            np.testing.assert_array_equal(array, tensor.numpy())


def test_sharded_checkpoint(sharded_dir: Path) -> None:
    index = json.loads((sharded_dir / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 3
    state = torch_state(sharded_dir)
    with WeightSource.from_dir(sharded_dir) as weights:
        weights.validate(ModelConfig.from_dir(sharded_dir))
        assert {weights.file_of(n).name for n in weights.names()} == shards
        for name in weights.names():
            np.testing.assert_array_equal(weights.get(name), state[name].numpy())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_dtypes(tmp_path: Path, dtype: str) -> None:
    directory = build_tiny_model(tmp_path, "qwen3", dtype=dtype)
    state = torch_state(directory)
    with WeightSource.from_dir(directory) as weights:
        weights.validate(ModelConfig.from_dir(directory))
        for name, tensor in state.items():
            array = weights.get(name)
            if dtype == "bfloat16":  # numpy has no bf16: widened exactly to float32
                assert weights.dtype(name) == "BF16" and array.dtype == np.float32
                np.testing.assert_array_equal(array, tensor.float().numpy())
            else:
                assert array.dtype == np.float16
                np.testing.assert_array_equal(array, tensor.numpy())


def test_arrays_are_read_only_views(tiny_dir: Path) -> None:
    with WeightSource.from_dir(tiny_dir) as weights:
        array = weights.get("model.norm.weight")
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[0] = 1.0


def _rewrite(path: Path, change: Any) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_names_tensor_and_file(tiny_dir: Path) -> None:
    name = "model.layers.1.mlp.up_proj.weight"
    _rewrite(tiny_dir / "model.safetensors", lambda t: t.pop(name))
    with pytest.raises(ModelLoadError, match=rf"model\.safetensors: missing tensor '{name}'"):
        load_model(tiny_dir)


def test_untied_model_needs_lm_head(tiny_dir: Path) -> None:
    _rewrite(tiny_dir / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ModelLoadError, match=r"lm_head\.weight"):
        load_model(tiny_dir)


def test_misshaped_tensor_names_tensor_file_and_shapes(tiny_dir: Path) -> None:
    name = "model.layers.0.self_attn.k_proj.weight"

    def shrink(tensors: dict[str, np.ndarray]) -> None:
        tensors[name] = tensors[name][:8]

    _rewrite(tiny_dir / "model.safetensors", shrink)
    with pytest.raises(
        ModelLoadError, match=rf"model\.safetensors: tensor '{name}'.*\[8, 48\].*\[16, 48\]"
    ):
        load_model(tiny_dir)


def test_config_that_disagrees_with_weights(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    (tiny_dir / "config.json").write_text(json.dumps({**config, "intermediate_size": 100}))
    with pytest.raises(ModelLoadError, match=r"gate_proj\.weight' has shape \[96, 48\]"):
        load_model(tiny_dir)


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (lambda n: n - 1, r"tensor '.*' is truncated"),  # last byte lost
        (lambda n: n - 5000, r"tensor '.*' is truncated"),
        (lambda n: 20, "truncated or corrupt safetensors header"),
        (lambda n: 3, "truncated safetensors file"),
    ],
    ids=["one-byte", "5000-bytes", "into-header", "empty"],
)
def test_truncated_file_names_tensor_and_file(tiny_dir: Path, keep: Any, message: str) -> None:
    path = tiny_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])
    with pytest.raises(ModelLoadError, match=rf"model\.safetensors: .*{message}"):
        load_model(tiny_dir)


def test_corrupt_header(tiny_dir: Path) -> None:
    path = tiny_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe{["
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupt safetensors header"):
        load_model(tiny_dir)


def test_sharded_missing_shard_and_missing_tensor(tmp_path: Path) -> None:
    directory = build_tiny_model(tmp_path, "llama", max_shard_size="30KB")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    name = "model.layers.1.self_attn.o_proj.weight"
    shard = directory / index["weight_map"][name]
    _rewrite(shard, lambda t: t.pop(name))
    with pytest.raises(ModelLoadError, match=rf"{shard.name}: missing tensor '{name}'"):
        WeightSource.from_dir(directory)
    shard.unlink()
    with pytest.raises(ModelLoadError, match=rf"shard {shard.name} .*is missing"):
        load_model(directory)


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(_Boom.marker),))

    marker = ""


def test_pickles_only_is_a_clear_error_and_never_unpickled(tiny_dir: Path) -> None:
    (tiny_dir / "model.safetensors").unlink()
    marker = tiny_dir / "UNPICKLED"
    _Boom.marker = str(marker)
    (tiny_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ModelLoadError, match=r"pickle.*pytorch_model\.bin.*never loads pickles"):
        load_model(tiny_dir)
    assert not marker.exists()


def test_no_weights_at_all(tiny_dir: Path) -> None:
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors"):
        load_model(tiny_dir)


def test_non_float_tensor_is_rejected(tiny_dir: Path) -> None:
    def to_int(tensors: dict[str, np.ndarray]) -> None:
        tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.int32)

    _rewrite(tiny_dir / "model.safetensors", to_int)
    with pytest.raises(ModelLoadError, match=r"model\.norm\.weight' has dtype I32"):
        load_model(tiny_dir)


def test_writer_round_trip_and_reader_agree_with_safetensors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "a": rng.standard_normal((3, 5)).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float16),
        "c": np.arange(6, dtype=np.int64).reshape(2, 3),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    path = tmp_path / "x.safetensors"
    specs = [(n, a.dtype, a.shape) for n, a in arrays.items()]
    write_safetensors(path, specs, iter(arrays.values()), metadata={"format": "pt"})
    reference = load_file(path)  # the official reader accepts our file
    ours = SafetensorsFile(path)
    assert ours.metadata == {"format": "pt"}
    for name, array in arrays.items():
        np.testing.assert_array_equal(reference[name], array)
        np.testing.assert_array_equal(ours.get(name), array)
    with pytest.raises(ModelLoadError, match="expected"):
        write_safetensors(path, specs, iter([arrays["b"]]))


def test_load_model_of_each_family(
    family_case: tuple[str, bool], tiny_models: dict[Any, Path]
) -> None:
    loaded = load_model(tiny_models[family_case], max_model_len=128)
    assert loaded.path == tiny_models[family_case]
    assert (
        loaded.config.max_model_len == 128 and loaded.config.tie_word_embeddings == family_case[1]
    )
    assert loaded.weights.has("model.embed_tokens.weight")
    assert loaded.weights.has("lm_head.weight") != family_case[1]
    assert loaded.tokenizer.eos_token_ids == loaded.generation.eos_token_ids == (4, 2)
    assert loaded.generation.bos_token_id == loaded.tokenizer.bos_token_id == 1


def test_load_model_rejects_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(tmp_path)
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelLoadError, match=r"model directory or a \.gguf"):
        load_model(tmp_path / "weights.txt")
    with pytest.raises(ConfigError):
        (tmp_path / "config.json").write_text("[]")
        load_model(tmp_path)


# -- tensors as stored -------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_stored_safetensors_tensors_are_as_stored(tmp_path: Path, dtype: str) -> None:
    directory = build_tiny_model(tmp_path, "qwen3", dtype=dtype)
    state = torch_state(directory)
    spelling = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[dtype]
    with WeightSource.from_dir(directory) as weights:
        assert not weights.stored_from_gguf and weights.gguf_path is None
        assert weights.stored_types() == {spelling: len(weights.names())}
        total = sum(int(np.prod(weights.shape(n))) for n in weights.names())
        assert weights.stored_types(elements=True) == {spelling: total}
        for name, tensor in state.items():
            stored = weights.stored(name)
            assert (stored.name, stored.type, stored.shape) == (name, spelling, weights.shape(name))
            assert (stored.block_size, stored.type_size) == (1, tensor.element_size())
            if dtype == "bfloat16":  # the bits themselves, as uint16
                import torch

                bits = tensor.view(torch.int16).numpy().view(np.uint16)
                assert stored.data.dtype == np.uint16
                np.testing.assert_array_equal(stored.data, bits)
            else:
                np.testing.assert_array_equal(stored.data, tensor.numpy())


def test_attached_gguf_serves_its_blocks(tmp_path: Path) -> None:
    from ferrum_core.models.gguf_tensors import GgufTensors
    from ferrum_core.models.quant_blocks import BLOCK_TYPES, split_blocks
    from tests.models.gguf_builder import build_tiny_llama_and_gguf, mixed_quants

    _, gguf_path = build_tiny_llama_and_gguf(tmp_path, quant=mixed_quants)
    out = convert_gguf(gguf_path, tmp_path / "converted", progress=False)
    with (
        GgufTensors(gguf_path) as tensors,
        WeightSource.from_dir(out) as plain,
        WeightSource.from_dir(out, gguf=gguf_path) as weights,
    ):
        assert weights.stored_from_gguf and weights.gguf_path == gguf_path
        assert weights.stored_types() == tensors.types() != plain.stored_types()
        assert weights.stored_types(elements=True) == tensors.types(elements=True)
        assert plain.stored_types() == {"F32": len(plain.names())}
        for name in weights.names():
            stored, floats = weights.stored(name), weights.get(name)
            assert floats.dtype == np.float32 and floats.base is not None  # still the map
            np.testing.assert_array_equal(floats, plain.get(name))
            assert stored.type == tensors.type_of(name)
            assert stored.data.tobytes() == tensors.stored(name).data.tobytes()
            if stored.type in BLOCK_TYPES:
                np.testing.assert_array_equal(split_blocks(stored).dequantize(), floats)
        assert "stored from tiny-0.gguf" in repr(weights)


def test_attached_gguf_must_match_and_exist(tmp_path: Path, tiny_dir: Path) -> None:
    from tests.models.gguf_builder import build_tiny_llama_and_gguf

    with pytest.raises(ModelLoadError, match=r"missing\.gguf: GGUF file not found"):
        WeightSource.from_dir(tiny_dir, gguf=tmp_path / "missing.gguf")
    _, other = build_tiny_llama_and_gguf(tmp_path, hidden_size=64, num_attention_heads=2)
    with WeightSource.from_dir(tiny_dir, gguf=other) as weights:
        norm = load_file(tiny_dir / "model.safetensors")["model.norm.weight"]
        np.testing.assert_array_equal(weights.get("model.norm.weight"), norm)  # unaffected
        with pytest.raises(ModelLoadError, match=r"tiny-0\.gguf does not hold the tensors"):
            weights.stored("model.norm.weight")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + bytes(64))
    with WeightSource.from_dir(tiny_dir, gguf=garbage) as weights:  # opened on first use
        assert weights.stored_from_gguf and weights.names()
        with pytest.raises(ModelLoadError, match=r"garbage\.gguf: not a readable GGUF"):
            weights.stored_types()
