"""ModelConfig parsing: every family, both rope layouts, every kind of bad config."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ferrum_core.errors import ConfigError
from ferrum_core.models import ModelConfig, RopeScaling
from tests.models.conftest import FAMILY_CASES

# Real configs as published on the Hub (classic layout, older transformers).
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
    "is_llama_config": True, "max_position_embeddings": 8192, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
    "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "vocab_size": 49152,
    "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16"}},
}  # fmt: skip
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 128256,
}  # fmt: skip
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": 32000,
}  # fmt: skip
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151645,
    "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
    "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2",
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False,
    "vocab_size": 151936,
}  # fmt: skip
QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
    "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28,
    "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip
REAL_CONFIGS = {
    "smollm2": SMOLLM2_135M,
    "llama3.1": LLAMA31_8B,
    "mistral": MISTRAL_7B,
    "qwen2.5": QWEN25_05B,
    "qwen3": QWEN3_06B,
}


def parse(data: dict[str, Any], **kwargs: Any) -> ModelConfig:
    return ModelConfig.from_dict(copy.deepcopy(data), **kwargs)


def test_smollm2_config() -> None:
    c = parse(SMOLLM2_135M)
    assert (c.model_type, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (
        "llama", 576, 9, 3,
    )  # fmt: skip
    assert c.head_dim == 64 and c.tie_word_embeddings and c.rope_theta == 100000.0
    assert c.rope_scaling == RopeScaling() and c.sliding_window is None
    assert (c.bos_token_id, c.eos_token_ids, c.pad_token_id) == (1, (2,), 2)
    assert c.max_model_len == 8192 and c.torch_dtype == "bfloat16"
    assert not (c.qkv_bias or c.o_bias or c.mlp_bias or c.qk_norm)


def test_llama31_config() -> None:
    c = parse(LLAMA31_8B)
    assert c.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    assert c.eos_token_ids == (128001, 128008, 128009) and c.head_dim == 128
    assert c.num_attention_heads // c.num_key_value_heads == 4 and not c.tie_word_embeddings


def test_mistral_sliding_window_is_honoured() -> None:
    c = parse(MISTRAL_7B)
    assert c.model_type == "mistral" and c.sliding_window == 4096
    assert parse({**MISTRAL_7B, "sliding_window": None}).sliding_window is None


def test_qwen2_bias_and_unused_sliding_window() -> None:
    c = parse(QWEN25_05B)
    assert c.qkv_bias and not c.o_bias and c.tie_word_embeddings and c.head_dim == 64
    assert c.sliding_window is None  # use_sliding_window is false
    every_layer = {**QWEN25_05B, "use_sliding_window": True, "max_window_layers": 0}
    assert parse(every_layer).sliding_window == 32768
    no_layer = {**QWEN25_05B, "use_sliding_window": True, "max_window_layers": 24}
    assert parse(no_layer).sliding_window is None
    with pytest.raises(ConfigError, match="max_window_layers"):
        parse({**QWEN25_05B, "use_sliding_window": True})  # layers 21.. slide, 0..20 do not


def test_qwen3_qk_norm_and_explicit_head_dim() -> None:
    c = parse(QWEN3_06B)
    assert c.qk_norm and c.head_dim == 128 and c.hidden_size // c.num_attention_heads == 64
    assert not c.qkv_bias and not c.o_bias and c.rope_theta == 1e6
    assert parse({**QWEN3_06B, "attention_bias": True}).o_bias


def test_head_dim_derived_when_absent() -> None:
    assert parse({**MISTRAL_7B, "hidden_size": 96, "num_attention_heads": 8,
                  "num_key_value_heads": 8}).head_dim == 12  # fmt: skip
    assert parse({**SMOLLM2_135M, "head_dim": 32}).head_dim == 32


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_unknown_keys_are_ignored(name: str) -> None:
    noisy = {**REAL_CONFIGS[name], "some_future_key": {"x": [1, 2]}, "use_cache": "maybe"}
    assert parse(noisy) == parse(REAL_CONFIGS[name])


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_both_rope_layouts_agree_via_installed_transformers(name: str, tmp_path: Path) -> None:
    """Load the classic config with transformers, save it (it writes the nested
    ``rope_parameters`` layout) and parse both: same ModelConfig."""
    from transformers import AutoConfig

    classic = REAL_CONFIGS[name]
    hf = AutoConfig.for_model(**copy.deepcopy(classic))
    hf.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" in written and "rope_theta" not in written
    assert "rope_scaling" not in written or written["rope_scaling"] is None
    ours = ModelConfig.from_file(tmp_path / "config.json")
    assert replace(ours, torch_dtype=None) == replace(parse(classic), torch_dtype=None)


def test_nested_rope_parameters_layout() -> None:
    nested = {k: v for k, v in LLAMA31_8B.items() if k not in ("rope_theta", "rope_scaling")}
    nested["rope_parameters"] = {**LLAMA31_8B["rope_scaling"], "rope_theta": 500000.0}
    assert parse(nested) == parse(LLAMA31_8B)
    linear = {
        **nested,
        "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
    }
    assert parse(linear).rope_scaling == RopeScaling("linear", 2.0)
    assert parse(linear).rope_theta == 1e4
    legacy_type = {**SMOLLM2_135M, "rope_scaling": {"type": "linear", "factor": 4.0}}
    assert parse(legacy_type).rope_scaling == RopeScaling("linear", 4.0)


def test_both_layouts_in_one_file_must_agree() -> None:
    both = {**LLAMA31_8B, "rope_parameters": {**LLAMA31_8B["rope_scaling"], "rope_theta": 5e5}}
    assert parse(both) == parse(LLAMA31_8B)
    with pytest.raises(ConfigError, match="rope_theta"):
        parse({**SMOLLM2_135M, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}})
    clash = {**LLAMA31_8B, "rope_parameters": {"rope_type": "linear", "factor": 8.0}}
    with pytest.raises(ConfigError, match="rope_type"):
        parse(clash)


@pytest.mark.parametrize("case", FAMILY_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_configs_written_by_transformers(
    case: tuple[str, bool], tiny_models: dict[Any, Path]
) -> None:
    from transformers import AutoConfig

    directory = tiny_models[case]
    ours = ModelConfig.from_dir(directory)
    hf = AutoConfig.from_pretrained(directory)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    assert ours.model_type == hf.model_type
    assert (ours.hidden_size, ours.intermediate_size, ours.vocab_size) == (
        hf.hidden_size, hf.intermediate_size, hf.vocab_size,
    )  # fmt: skip
    assert (ours.num_attention_heads, ours.num_key_value_heads, ours.head_dim) == (
        hf.num_attention_heads, hf.num_key_value_heads, head_dim,
    )  # fmt: skip
    assert ours.rope_theta == hf.rope_parameters["rope_theta"]
    assert ours.rope_scaling.rope_type == hf.rope_parameters["rope_type"]
    assert ours.tie_word_embeddings == hf.tie_word_embeddings == case[1]
    assert ours.rms_norm_eps == hf.rms_norm_eps
    assert ours.max_model_len == ours.max_position_embeddings == hf.max_position_embeddings
    assert ours.sliding_window == getattr(hf, "sliding_window", None)
    assert ours.qk_norm == (case[0] == "qwen3") and ours.qkv_bias == (case[0] == "qwen2")
    # generation_config.json adds </s> (id 2) to config.json's <|im_end|> (id 4).
    assert ours.eos_token_ids == (4, 2)


def test_max_model_len_override() -> None:
    assert parse(SMOLLM2_135M, max_model_len=1024).max_model_len == 1024
    for bad in (0, -5, 8193):
        with pytest.raises(ConfigError, match="max_model_len"):
            parse(SMOLLM2_135M, max_model_len=bad)


REQUIRED = ["model_type", "vocab_size", "hidden_size", "intermediate_size",
            "num_hidden_layers", "num_attention_heads"]  # fmt: skip


@pytest.mark.parametrize("key", REQUIRED)
def test_missing_required_key_is_named(key: str) -> None:
    data = {k: v for k, v in SMOLLM2_135M.items() if k not in (key, "architectures")}
    with pytest.raises(ConfigError, match=f"'{key}'"):
        parse(data)


def test_model_type_inferred_from_architectures() -> None:
    data = {k: v for k, v in QWEN25_05B.items() if k != "model_type"}
    assert parse(data).model_type == "qwen2"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"hidden_size": 577}, "hidden_size"),  # 577 % 9 != 0 and no head_dim
        ({"num_key_value_heads": 4}, "num_key_value_heads"),  # 9 % 4 != 0
        ({"num_key_value_heads": 18}, "num_key_value_heads"),
        ({"head_dim": 63}, "head_dim"),
        ({"hidden_size": "576"}, "hidden_size"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
        ({"eos_token_id": "</s>"}, "eos_token_id"),
        ({"model_type": "gpt2"}, "model_type"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"rope_scaling": {"rope_type": "linear"}}, "factor"),
        ({"rope_scaling": {"type": "linear", "rope_type": "llama3", "factor": 2}}, "type"),
        ({"rope_theta": -1.0}, "rope_theta"),
        ({"rope_scaling": [1, 2]}, "rope_scaling"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ],
)
def test_bad_or_contradictory_keys_are_named(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse({**SMOLLM2_135M, **changes})


def test_llama3_scaling_needs_original_length() -> None:
    scaling = {k: v for k, v in LLAMA31_8B["rope_scaling"].items()}
    del scaling["original_max_position_embeddings"]
    with pytest.raises(ConfigError, match="original_max_position_embeddings"):
        parse({**LLAMA31_8B, "rope_scaling": scaling})


def test_from_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.json: file not found"):
        ModelConfig.from_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json"):
        ModelConfig.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**SMOLLM2_135M, "vocab_size": None}))
    with pytest.raises(ConfigError, match=r"config\.json: missing required key 'vocab_size'"):
        ModelConfig.from_dir(tmp_path)
