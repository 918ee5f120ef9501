"""GGUF import on small synthetic files written like llama.cpp writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ferrum_core.errors import ModelLoadError
from ferrum_core.models import WeightSource, convert_gguf, load_model
from ferrum_core.models.gguf_import import unpermute_rows
from tests.models.gguf_builder import (
    CHAT_TEMPLATE,
    build_tiny_llama_and_gguf,
    llama_cpp_permute,
    mixed_quants,
)

STRINGS = [
    "hello world, the end",
    " the the  the\tthe\n\nthe",
    "\u00e9t\u00e9 \u65e5\u672c\u8a9e \U0001f916\U0001f916 caf\u00e9",
    "x = 12345 + 0.5; print(x)",
    "<|im_start|>user\nhello<|im_end|>",
    "",
]


def hf_state(directory: Path, gguf_file: str | None = None) -> dict[str, np.ndarray]:
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_unpermute_inverts_llama_cpp_permute() -> None:
    rng = np.random.default_rng(0)
    for heads, head_dim in [(3, 32), (1, 8), (5, 16)]:
        weight = rng.standard_normal((heads * head_dim, 7)).astype(np.float32)
        np.testing.assert_array_equal(
            unpermute_rows(llama_cpp_permute(weight, heads), heads), weight
        )
        bias = weight[:, 0].copy()
        np.testing.assert_array_equal(unpermute_rows(llama_cpp_permute(bias, heads), heads), bias)


@pytest.mark.parametrize(
    "shape",
    [
        dict(hidden_size=96, num_attention_heads=3, num_key_value_heads=1),  # odd heads, GQA 3
        dict(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True
        ),
        dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, attention_bias=True),
    ],
    ids=["gqa3-untied", "mha-tied", "qkvo-bias"],
)
def test_f32_gguf_round_trips_original_weights(tmp_path: Path, shape: dict[str, Any]) -> None:
    hf_dir, gguf_path = build_tiny_llama_and_gguf(tmp_path, **shape)
    out = convert_gguf(gguf_path, tmp_path / "converted", progress=False)
    original = hf_state(hf_dir)
    converted = hf_state(out)  # transformers loads the directory as it is
    assert set(converted) == set(original)
    for name, array in original.items():
        np.testing.assert_array_equal(converted[name], array, err_msg=name)
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] == shape.get("tie_word_embeddings", False)
    assert config["num_key_value_heads"] == shape["num_key_value_heads"]
    assert config["attention_bias"] == shape.get("attention_bias", False)


def test_quantised_gguf_matches_transformers_gguf_loader(tmp_path: Path) -> None:
    hf_dir, gguf_path = build_tiny_llama_and_gguf(tmp_path, quant=mixed_quants)
    out = convert_gguf(gguf_path, tmp_path / "converted", progress=False)
    oracle = hf_state(gguf_path.parent, gguf_path.name)
    original = hf_state(hf_dir)
    with WeightSource.from_dir(out) as weights:
        assert sorted(oracle) == weights.names()
        for name in weights.names():
            ours = weights.get(name)
            assert ours.dtype == np.float32
            np.testing.assert_allclose(ours, oracle[name], rtol=0, atol=1e-6, err_msg=name)
            # ... and close to the unquantised original (4-bit error bound, loosely).
            scale = np.abs(original[name]).max()
            assert np.abs(ours - original[name]).max() <= 0.2 * scale, name


def test_quantisation_types_are_exercised(tmp_path: Path) -> None:
    from gguf import GGUFReader

    _, gguf_path = build_tiny_llama_and_gguf(tmp_path, quant=mixed_quants)
    kinds = {t.tensor_type.name for t in GGUFReader(gguf_path).tensors}
    assert {"F32", "F16", "Q8_0", "Q4_0", "Q4_1"} <= kinds


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2"])
def test_tokenizer_and_template_match_transformers(tmp_path: Path, pre: str) -> None:
    from transformers import AutoTokenizer

    _, gguf_path = build_tiny_llama_and_gguf(tmp_path, pre=pre)
    out = convert_gguf(gguf_path, tmp_path / "converted", progress=False)
    oracle = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    reloaded = AutoTokenizer.from_pretrained(out)  # transformers reads our files as they are
    loaded = load_model(out)
    for text in STRINGS:
        ids = oracle(text).input_ids
        assert loaded.tokenizer.encode(text) == ids == reloaded(text).input_ids, text
        assert loaded.tokenizer.decode(ids) == oracle.decode(ids, skip_special_tokens=True)
        assert loaded.tokenizer.decode(ids, False) == oracle.decode(ids) == text
    messages = [{"role": "user", "content": "hello"}]
    assert loaded.tokenizer.apply_chat_template(messages) == oracle.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert loaded.tokenizer.chat_template == CHAT_TEMPLATE
    assert loaded.tokenizer.eos_token_ids == (2,) and loaded.tokenizer.bos_token_id == 1


def test_smollm_pre_tokenizer_isolates_digits(tmp_path: Path) -> None:
    """llama.cpp's "smollm" rule (and SmolLM's own tokenizer.json) split every digit,
    so a "123" token is never used; transformers' GGUF loader does not know the rule."""
    _, gguf_path = build_tiny_llama_and_gguf(tmp_path, pre="smollm")
    tokenizer = load_model(
        convert_gguf(gguf_path, tmp_path / "converted", progress=False)
    ).tokenizer
    three = tokenizer.token_to_id("123")
    assert three is not None
    ids = tokenizer.encode("x 12345")
    assert three not in ids and tokenizer.decode(ids) == "x 12345"
    assert [tokenizer.id_to_token(i) for i in ids] == ["x", "\u0120", "1", "2", "3", "4", "5"]


def test_generation_config_from_sampling_metadata(tmp_path: Path) -> None:
    _, gguf_path = build_tiny_llama_and_gguf(
        tmp_path, sampling={"temp": 0.7, "top_p": 0.9, "top_k": 40}
    )
    loaded = load_model(convert_gguf(gguf_path, tmp_path / "converted", progress=False))
    generation = loaded.generation
    assert (generation.temperature, generation.top_p, generation.top_k) == (0.7, 0.9, 40)
    assert generation.do_sample and generation.eos_token_ids == (2,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(architecture="qwen2"), "architecture 'qwen2'"),
        (dict(tokenizer_model="llama"), "tokenizer model 'llama'"),
        (dict(drop=["blk.1.ffn_up.weight"]), "model.layers.1.mlp.up_proj.weight"),
        (dict(extra_tensors={"rope_freqs.weight": np.ones(16, np.float32)}), "rope_freqs"),
        (dict(extra_tensors={"blk.0.attn_q_norm.weight": np.ones(32, np.float32)}), "attn_q_norm"),
    ],
)
def test_bad_gguf_files(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    _, gguf_path = build_tiny_llama_and_gguf(tmp_path, **kwargs)
    with pytest.raises(ModelLoadError, match=message):
        convert_gguf(gguf_path, tmp_path / "converted", progress=False)
    assert not (tmp_path / "converted").exists()
    assert not list(tmp_path.glob(".converted*"))  # no temp dir left behind


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ModelLoadError, match=r"x\.gguf"):
        convert_gguf(bogus, tmp_path / "out", progress=False)
    with pytest.raises(ModelLoadError, match="not found"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out", progress=False)


def test_existing_output_directory(tmp_path: Path) -> None:
    _, gguf_path = build_tiny_llama_and_gguf(tmp_path)
    out = tmp_path / "converted"
    out.mkdir()
    convert_gguf(gguf_path, out, progress=False)  # an empty directory is fine
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(ModelLoadError, match="already exists"):
        convert_gguf(gguf_path, out, progress=False)
    convert_gguf(gguf_path, out, progress=False, if_exists="skip")
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    (out / "stale.txt").write_text("old")
    convert_gguf(gguf_path, out, progress=False, if_exists="replace")
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
