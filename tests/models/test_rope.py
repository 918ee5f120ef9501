"""rope_inv_freq against the rotary-embedding modules of transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ferrum_core.models import ModelConfig, rope_inv_freq
from tests.models.conftest import FAMILY_CASES

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("llama", {"hidden_size": 576, "num_attention_heads": 9, "rope_theta": 100000.0}),
    ("llama", {"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 500000.0,
               "rope_scaling": LLAMA3, "max_position_embeddings": 131072}),
    ("llama", {"hidden_size": 3072, "num_attention_heads": 24, "rope_theta": 500000.0,
               "rope_scaling": {**LLAMA3, "factor": 32.0}, "max_position_embeddings": 131072}),
    ("llama", {"hidden_size": 2048, "num_attention_heads": 16, "rope_theta": 10000.0,
               "rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    ("llama", {"hidden_size": 48, "num_attention_heads": 3, "rope_theta": 1234.5}),
    ("mistral", {"hidden_size": 5120, "num_attention_heads": 32, "head_dim": 128,
                 "rope_theta": 1000000.0}),
    ("qwen2", {"hidden_size": 896, "num_attention_heads": 14, "rope_theta": 1000000.0}),
    ("qwen3", {"hidden_size": 1024, "num_attention_heads": 16, "head_dim": 128,
               "rope_theta": 1000000.0}),
    ("qwen3", {"hidden_size": 80, "num_attention_heads": 5, "head_dim": 80,
               "rope_theta": 20000.0}),
]  # fmt: skip


def hf_inv_freq(model_type: str, settings: dict[str, Any]) -> np.ndarray:
    import transformers as tf

    classes = {
        "llama": (tf.LlamaConfig, tf.models.llama.modeling_llama.LlamaRotaryEmbedding),
        "mistral": (tf.MistralConfig, tf.models.mistral.modeling_mistral.MistralRotaryEmbedding),
        "qwen2": (tf.Qwen2Config, tf.models.qwen2.modeling_qwen2.Qwen2RotaryEmbedding),
        "qwen3": (tf.Qwen3Config, tf.models.qwen3.modeling_qwen3.Qwen3RotaryEmbedding),
    }
    config_cls, rotary_cls = classes[model_type]
    config = config_cls(intermediate_size=64, num_hidden_layers=1, vocab_size=32, **settings)
    result: np.ndarray = rotary_cls(config=config).inv_freq.numpy()
    return result


def ulps(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64)).max())


@pytest.mark.parametrize(("model_type", "settings"), CASES)
def test_inv_freq_matches_transformers(model_type: str, settings: dict[str, Any]) -> None:
    ours = rope_inv_freq(ModelConfig.from_dict({"model_type": model_type, "vocab_size": 32,
                                                "intermediate_size": 64, "num_hidden_layers": 1,
                                                **settings}))  # fmt: skip
    theirs = hf_inv_freq(model_type, settings)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    # Same float32 operations; torch's pow may differ from a correctly rounded one by an ulp.
    assert ulps(ours, theirs) <= 2, np.abs(ours - theirs).max()


def test_llama3_scaling_touches_all_three_bands() -> None:
    config = ModelConfig.from_dict({"model_type": "llama", "vocab_size": 32, "hidden_size": 4096,
                                    "intermediate_size": 64, "num_hidden_layers": 1,
                                    "num_attention_heads": 32, "rope_theta": 500000.0,
                                    "rope_scaling": LLAMA3})  # fmt: skip
    plain = rope_inv_freq(ModelConfig.from_dict({**_as_dict(config), "rope_scaling": None}))
    ratio = plain / rope_inv_freq(config)
    assert np.isclose(ratio[0], 1.0) and np.isclose(ratio[-1], 8.0)
    assert ((ratio > 1.01) & (ratio < 7.99)).any()  # the smoothed middle band


def _as_dict(config: ModelConfig) -> dict[str, Any]:
    return {
        "model_type": config.model_type, "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads, "rope_theta": config.rope_theta,
    }  # fmt: skip


@pytest.mark.parametrize("case", FAMILY_CASES[::2], ids=lambda c: c[0])
def test_inv_freq_of_tiny_models_equals_loaded_transformers_model(
    case: tuple[str, bool], tiny_models: dict[Any, Path]
) -> None:
    from transformers import AutoModelForCausalLM

    directory = tiny_models[case]
    model = AutoModelForCausalLM.from_pretrained(directory)
    theirs = model.model.rotary_emb.inv_freq.numpy()
    ours = rope_inv_freq(ModelConfig.from_dir(directory))
    assert ulps(ours, theirs) <= 2
