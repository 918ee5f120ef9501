"""IncrementalDetokenizer: deltas never split a character and add up to the full decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferrum_core.models import IncrementalDetokenizer, Tokenizer
from ferrum_core.models.gguf_tokenizer import build_gguf_tokenizer
from tests.models.gguf_builder import byte_level_vocab

MULTIBYTE = [
    "\u00e9t\u00e9 \u00e0 la plage, caf\u00e9 cr\u00e8me",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3002\u4e2d\u6587\u4e5f\u53ef\u4ee5",
    "emoji \U0001f916\U0001f600 and flags \U0001f1eb\U0001f1f7 and zwj \U0001f468\u200d\U0001f4bb",
    "math: \u2211 x\u00b2 \u2264 \u221e; arrows \u2192 \u21d2",
    "def f(x):\n    return x ** 2  # \u00bd\n",
    "mixed \u0444\u044b\u0432\u0430 \u05e9\u05dc\u05d5\u05dd "
    "\u0645\u0631\u062d\u0628\u0627 \u0928\u092e\u0938\u094d\u0924\u0947",
]


@pytest.fixture(scope="module")
def byte_tokenizer() -> Tokenizer:
    """GPT-2 style byte-level BPE whose tokens often end inside a UTF-8 character."""
    tokens, types, merges = byte_level_vocab()
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
    }
    return Tokenizer(build_gguf_tokenizer(meta))


def stream(tokenizer: Tokenizer, ids: list[int], skip: bool = True) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip)
    deltas = [detok.add(i) for i in ids]
    deltas.append(detok.finish())
    assert detok.text == "".join(deltas)
    return deltas


@pytest.mark.parametrize("text", MULTIBYTE)
def test_byte_level_multibyte_text(byte_tokenizer: Tokenizer, text: str) -> None:
    ids = byte_tokenizer.encode(text)
    deltas = stream(byte_tokenizer, ids)
    assert "".join(deltas) == byte_tokenizer.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas[:-1]  # some step had to hold back an incomplete character


def test_holds_back_until_the_character_is_complete(byte_tokenizer: Tokenizer) -> None:
    ids = byte_tokenizer.encode("a\u8a9e")  # 'a' then one token per UTF-8 byte
    detok = IncrementalDetokenizer(byte_tokenizer)
    outputs = [detok.add(i) for i in ids]
    assert outputs == ["a", "", "", "\u8a9e"]


def test_incomplete_tail_is_flushed_by_finish(byte_tokenizer: Tokenizer) -> None:
    ids = byte_tokenizer.encode("ok \u8a9e")[:-1]  # three byte tokens: drop the last one
    deltas = stream(byte_tokenizer, ids)
    assert deltas[-1].endswith("\ufffd")
    assert "".join(deltas) == byte_tokenizer.decode(ids)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("skip", [True, False])
def test_random_ids_add_up_to_full_decode(byte_tokenizer: Tokenizer, seed: int, skip: bool) -> None:
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in rng.integers(0, byte_tokenizer.vocab_size, size=200)]
    assert "".join(stream(byte_tokenizer, ids, skip)) == byte_tokenizer.decode(ids, skip)


def test_sentencepiece_style_spaces(tiny_dir: Path) -> None:
    tokenizer = Tokenizer.from_dir(tiny_dir)
    text = "  Hello   world!\n  def add(a, b):\n    return a + b  "
    ids = tokenizer.encode(text)
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)
    rng = np.random.default_rng(1)
    for _ in range(5):
        ids = [int(i) for i in rng.integers(0, tokenizer.vocab_size, size=100)]
        assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)


@pytest.mark.slow
@pytest.mark.parametrize("text", MULTIBYTE)
def test_default_model_multibyte(default_dir: Path, text: str) -> None:
    tokenizer = Tokenizer.from_dir(default_dir)
    ids = tokenizer.encode(text)
    deltas = stream(tokenizer, ids)
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)
