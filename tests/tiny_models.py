"""Tiny random Hugging Face models (and the real default model) for tests.

``build_tiny_model(tmp_path, family)`` saves a randomly initialised
``transformers`` model of one family (fp32 safetensors, a real ``tokenizers``
BPE tokenizer with a ChatML template, generation_config.json) so that
``ferrum_core.models.load_model`` and ``transformers`` both load the same
directory; ``transformers`` is then the numerical oracle.
"""

from __future__ import annotations

import json
import string
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "FAMILIES",
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "build_tiny_model",
    "build_tiny_gpt2",
    "default_model_dir",
    "require_torch_backend",
]

FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3")
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = range(5)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Hello world! How are you today?",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "1234567890 numbers, letters and more: the end of the story is near.",
    "What is the answer? The answer is forty-two. Thank you very much!",
    "import numpy as np\nx = np.zeros((3, 4))\nfor i in range(10):\n    x += i",
)

# Odd head counts, several GQA ratios, explicit head_dim (qwen3), biases (qwen2).
_SHAPES: dict[str, dict[str, Any]] = {
    "llama": dict(
        hidden_size=48, num_attention_heads=3, num_key_value_heads=1, intermediate_size=96
    ),
    "llama3": dict(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "mistral": dict(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=112,
        sliding_window=None,
    ),
    "qwen2": dict(
        hidden_size=80, num_attention_heads=5, num_key_value_heads=1, intermediate_size=96
    ),
    "qwen3": dict(
        hidden_size=64,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=96,
    ),
}


@lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    """A Metaspace (sentencepiece-like) BPE over printable ASCII, trained on a
    fixed corpus: deterministic, at most ``vocab_size`` ids, unknown chars -> <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    alphabet = sorted(set(string.ascii_letters + string.digits + string.punctuation + "\n\u2581"))
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {len(alphabet) + len(SPECIAL_TOKENS)}")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="always"
    )
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(_CORPUS) * 4, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    assert tokenizer.token_to_id("<|im_end|>") == IM_END_ID
    return str(tokenizer.to_str())


def _write_tokenizer(out: Path, vocab_size: int, max_len: int) -> None:
    (out / "tokenizer.json").write_text(_tokenizer_json(vocab_size), encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _classes(family: str) -> tuple[Any, Any]:
    import transformers as tf

    return {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "llama3": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
    }[family]


def _unique_dir(tmp_path: Path, family: str) -> Path:
    out = Path(tmp_path) / f"tiny-{family}"
    counter = 1
    while out.exists():
        counter += 1
        out = Path(tmp_path) / f"tiny-{family}-{counter}"
    return out


def build_tiny_model(
    tmp_path: Path,
    family: str = "llama",
    *,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    dtype: str = "float32",
    max_shard_size: str | None = None,
    **overrides: Any,
) -> Path:
    """Save a random tiny model of ``family`` under ``tmp_path`` and return its directory.

    ``overrides`` go to the ``transformers`` config (e.g. ``num_hidden_layers=3``,
    ``sliding_window=8``); ``dtype`` is ``float32``, ``float16`` or ``bfloat16``;
    ``max_shard_size`` (e.g. ``"40KB"``) saves a sharded checkpoint.
    """
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    config_cls, model_cls = _classes(family)
    settings: dict[str, Any] = dict(
        vocab_size=256,
        num_hidden_layers=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        initializer_range=0.05,
        bos_token_id=BOS_ID,
        eos_token_id=IM_END_ID,
        pad_token_id=None,
        tie_word_embeddings=tie_word_embeddings,
    )
    settings.update(_SHAPES[family])
    settings.update(overrides)
    config = config_cls(**settings)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # transformers zeroes biases and sets norms to 1: randomise them too
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.1)
            elif "norm" in name:
                param.normal_(1.0, 0.2)
    model = model.to(getattr(torch, dtype))
    out = _unique_dir(tmp_path, family)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    generation = {"bos_token_id": BOS_ID, "eos_token_id": [IM_END_ID, EOS_ID]}
    (out / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")
    _write_tokenizer(
        out, min(int(settings["vocab_size"]), 256), int(settings["max_position_embeddings"])
    )
    return out


def default_model_dir() -> Path:
    """The converted default model (SmolLM2-135M-Instruct), converted once into
    ``$FERRUM_HOME`` and reused by every later call."""
    from ferrum_core.models import resolve_model_dir

    return resolve_model_dir(None)


def build_tiny_gpt2(tmp_path: Path, *, seed: int = 0) -> Path:
    """A random tiny GPT-2 (a family the core's ModelConfig does not parse), same tokenizer."""
    import torch
    import transformers as tf

    config = tf.GPT2Config(
        vocab_size=256, n_embd=32, n_layer=2, n_head=2, n_positions=128,
        bos_token_id=BOS_ID, eos_token_id=IM_END_ID,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = tf.GPT2LMHeadModel(config).eval()
    out = _unique_dir(tmp_path, "gpt2")
    model.save_pretrained(out)
    _write_tokenizer(out, 256, 128)
    return out


def require_torch_backend() -> None:
    """Skip the calling test when the `torch` backend cannot build executors here."""
    import pytest

    from ferrum_core.backends import get_backend
    from ferrum_core.errors import FerrumError

    try:
        get_backend("torch").factory()
    except (FerrumError, ImportError) as exc:
        pytest.skip(f"the torch backend is not usable here: {exc}")
