"""What the golden models are: shapes, storage dtypes, seeds, GGUF variants, the prompt.

Read by :mod:`ferrum_core.conformance.generate_golden` (maintainers regenerate the goldens
from it); the committed ``golden/manifest.json`` is what the suite itself reads.
"""

from __future__ import annotations

from typing import Any

VOCAB_SIZE = 128
MAX_POSITIONS = 256
PROMPT_TEXT = "the quick brown fox jumps over the lazy dog"
DECODE_IDS = (17, 3, 101, 42)
SEED = 1234
SLIDING_WINDOW = 4
LORA_BASE = "llama_gqa"
LORA_DIR = "llama_gqa_lora"

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a small model for a shared conformance suite",
    "every backend proves itself against the same golden logits",
    "prefill decode batch unified verify truncate release",
    "hello world, numbers 0 1 2 3 4 5 6 7 8 9 and punctuation . , ! ?",
]

# Shared shape of every golden model (each entry of MODELS overrides some keys).
BASE_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_POSITIONS,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
# name -> (family, config kwargs, storage dtype, seed offset). Seed offsets are fixed
# so that adding a model never changes the weights of the others.
MODELS: dict[str, tuple[str, dict[str, Any], str, int]] = {
    "llama3_rope": (
        "llama",
        {
            "tie_word_embeddings": True,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
        "float16",
        0,
    ),
    "llama_gqa": ("llama", {"tie_word_embeddings": False}, "float32", 1),
    "llama_mqa_bias": (
        "llama",
        {
            "hidden_size": 24,
            "num_attention_heads": 3,
            "num_key_value_heads": 1,
            "attention_bias": True,
            "mlp_bias": True,
            "tie_word_embeddings": True,
            "rms_norm_eps": 1e-6,
        },
        "float16",
        2,
    ),
    "qwen2_bias": ("qwen2", {"tie_word_embeddings": True, "rms_norm_eps": 1e-6}, "float16", 3),
    "qwen3_qknorm": (
        "qwen3",
        {"head_dim": 16, "tie_word_embeddings": False, "rms_norm_eps": 1e-6},
        "float16",
        4,
    ),
    # multi-head attention (as many KV heads as query heads); the GGUF goldens' base
    "llama_mha": (
        "llama",
        {"num_key_value_heads": 4, "intermediate_size": 32, "tie_word_embeddings": True},
        "float16",
        5,
    ),
    # a window of 4 positions: the prompt and every decode step reach past it
    "mistral_sliding": (
        "mistral",
        {"sliding_window": SLIDING_WINDOW, "hidden_size": 16, "intermediate_size": 32,
         "tie_word_embeddings": True},
        "float16",
        6,
    ),
}
# name -> (base model, GGUF quantisation type, the dtype whose numerics it proves)
GGUF_MODELS: dict[str, tuple[str, str, str]] = {
    "llama_mha_q8_0": ("llama_mha", "Q8_0", "int8"),
    "llama_mha_q4_1": ("llama_mha", "Q4_1", "int4"),
}
