"""Rebuild a ``tokenizer.json`` from a GGUF file's ``tokenizer.ggml.*`` metadata.

A GGUF stores the vocabulary, merges and token types under llama.cpp's key
names; the pre-tokenizer is only named (``tokenizer.ggml.pre``), so its split
rule is looked up here. Only GPT-2 style byte-level BPE
(``tokenizer.ggml.model == "gpt2"``) is supported: SmolLM2, Llama 3, Qwen2 and
most recent models.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from ferrum_core.errors import ModelLoadError

__all__ = ["build_gguf_tokenizer", "bytes_to_unicode"]

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp pre-tokenizer name -> split regex (None: GPT-2's own regex).
_SPLITS: dict[str, str | None] = {
    "default": None,
    "gpt-2": None,
    "smollm": None,  # GPT-2 regex after isolating every digit, see _pre_tokenizer
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
    "pixtral": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
    "tekken": _TEKKEN_SPLIT,
}
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3"}


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre not in _SPLITS:
        warnings.warn(
            f"GGUF pre-tokenizer {pre!r} is unknown; using GPT-2's split rule", stacklevel=3
        )
    split = _SPLITS.get(pre)
    if split is not None:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def _post_processor(tokens: Sequence[str], meta: dict[str, Any]) -> processors.PostProcessor:
    specials: list[tuple[str, int]] = []
    single, pair = ["$A:0"], ["$A:0", "$B:1"]
    for flag, key, front in (
        ("add_bos_token", "bos_token_id", True),
        ("add_eos_token", "eos_token_id", False),
    ):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        if not meta.get(f"tokenizer.ggml.{flag}") or token_id is None:
            continue
        token = tokens[token_id]
        specials.append((token, token_id))
        if front:
            single, pair = [f"{token}:0", *single], [f"{token}:0", "$A:0", f"{token}:1", "$B:1"]
        else:
            single, pair = [*single, f"{token}:0"], [*pair, f"{token}:1"]
    if not specials:
        return processors.ByteLevel(trim_offsets=False)
    return processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair), special_tokens=list(dict.fromkeys(specials))
    )


def build_gguf_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` equivalent to the one llama.cpp builds from ``meta``."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelLoadError(
            f"GGUF tokenizer model {kind!r} is not supported (key 'tokenizer.ggml.model'); "
            "only 'gpt2' byte-level BPE is"
        )
    tokens: list[str] = list(meta.get("tokenizer.ggml.tokens") or [])
    merges_text: list[str] = list(meta.get("tokenizer.ggml.merges") or [])
    if not tokens or not merges_text:
        raise ModelLoadError("GGUF file has no tokenizer.ggml.tokens / tokenizer.ggml.merges")
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab: dict[str, int] = {}
    for index, (token, kind_id) in enumerate(zip(tokens, types, strict=False)):
        if kind_id not in (_CONTROL, _USER_DEFINED) and not set(token) <= alphabet:
            token = "".join(spelling[b] for b in token.encode("utf-8"))
        vocab.setdefault(token, index)
    merges = []
    for merge in merges_text:
        left, _, right = merge.partition(" ")
        merges.append((left, right))
    pre = str(meta.get("tokenizer.ggml.pre") or "default")
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
            ignore_merges=pre in _IGNORE_MERGES,
        )
    )
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = _post_processor(tokens, meta)
    control = [
        AddedToken(t, special=True, normalized=False)
        for t, k in zip(tokens, types, strict=False)
        if k == _CONTROL
    ]
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, k in zip(tokens, types, strict=False)
        if k == _USER_DEFINED
    ]
    tokenizer.add_special_tokens(control)
    tokenizer.add_tokens(user)
    return tokenizer
