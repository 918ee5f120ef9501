"""Tiny random Hugging Face models (the numerical oracle) and the torch model built on them."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from ferrum_cuda.model import TorchDecoderLLM

from ferrum_core.models.config import ModelConfig
from ferrum_core.models.rope import rope_inv_freq
from ferrum_core.models.weights import WeightSource
from ferrum_core.types import DataType

LLAMA3_ROPE = {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
}  # fmt: skip

COMMON = {"vocab_size": 211, "intermediate_size": 96, "num_hidden_layers": 3,
          "max_position_embeddings": 256, "initializer_range": 0.1}  # fmt: skip

FAMILIES: dict[str, tuple[type[Any], type[Any], dict[str, Any]]] = {
    # GQA 6:2 with llama3 rope scaling, untied head.
    "llama_gqa": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {
        "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 16,
        "rope_parameters": LLAMA3_ROPE, "tie_word_embeddings": False}),
    # Odd head count, plain multi-head attention, tied embeddings.
    "llama_tied_odd": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {
        "hidden_size": 60, "num_attention_heads": 5, "num_key_value_heads": 5,
        "tie_word_embeddings": True}),
    # Multi-query attention with attention and MLP biases.
    "llama_mqa_bias": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {
        "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1,
        "attention_bias": True, "mlp_bias": True, "tie_word_embeddings": False}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {
        "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "tie_word_embeddings": True}),
    # head_dim != hidden / heads, per-head q/k RMSNorm, 3 query heads per KV head.
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {
        "hidden_size": 64, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 24,
        "tie_word_embeddings": False}),
    "mistral_window": (transformers.MistralConfig, transformers.MistralForCausalLM, {
        "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "sliding_window": 5, "tie_word_embeddings": False}),
}  # fmt: skip


@dataclass
class TinyModel:
    name: str
    path: Path
    hf: Any  # the transformers model, eval mode, float32, eager attention
    config: ModelConfig

    def build(self, dtype: DataType = DataType.FP32, **kwargs: Any) -> TorchDecoderLLM:
        kwargs.setdefault("num_blocks", 64)
        kwargs.setdefault("block_size", 4)
        return TorchDecoderLLM.from_source(
            self.config,
            WeightSource.from_dir(self.path),
            rope_inv_freq(self.config),
            dtype=dtype,
            device=torch.device("cpu"),
            **kwargs,
        )

    def logits(self, tokens: list[int]) -> torch.Tensor:
        """The oracle: float32 logits at every position ``[len, vocab]``."""
        with torch.no_grad():
            return self.hf(torch.tensor([tokens])).logits[0].float()


def make_tiny(family: str, directory: Path, **overrides: Any) -> TinyModel:
    config_cls, model_cls, params = FAMILIES[family]
    torch.manual_seed(zlib.crc32(family.encode()))
    cfg = config_cls(**{**COMMON, **params, **overrides})
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # norms start at 1: make them matter
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.2 * torch.randn_like(param))
    model.save_pretrained(directory)
    _write_word_tokenizer(directory, cfg.vocab_size)
    return TinyModel(family, directory, model, ModelConfig.from_dir(directory))


def _write_word_tokenizer(directory: Path, vocab_size: int) -> None:
    """A word-level tokenizer (``w3 w4 ...``) so that ``load_model`` accepts the directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(directory / "tokenizer.json"))


def prompt(n: int, seed: int = 0, vocab: int = 211) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=gen).tolist()
