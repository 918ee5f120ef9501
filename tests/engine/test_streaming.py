"""OutputText: stop strings are cut, held-back text is released, deltas add up."""

from __future__ import annotations

from typing import ClassVar

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ferrum_core.engine.streaming import OutputText
from ferrum_core.models import IncrementalDetokenizer, Tokenizer


class Pieces:
    """Token i reads as PIECES[i]."""

    PIECES: ClassVar[list[str]] = [
        "He", "llo", " wor", "ld", "!", " S", "TO", "P", " more", "S", "T",
    ]

    def add(self, token_id: int) -> str:
        return self.PIECES[token_id]

    def finish(self) -> str:
        return ""


def _feed(text: OutputText, ids: list[int]) -> tuple[list[str], bool]:
    deltas = []
    stopped = False
    for t in ids:
        stopped = text.add(t)
        deltas.append(text.take_delta())
        if stopped:
            break
    deltas.append(text.take_delta(final=True))
    return deltas, stopped


def test_no_stop_strings_streams_everything_immediately() -> None:
    text = OutputText(Pieces())
    deltas, stopped = _feed(text, [0, 1, 2, 3])
    assert not stopped and deltas[:4] == ["He", "llo", " wor", "ld"]
    assert "".join(deltas) == text.text == "Hello world"


def test_stop_string_spanning_tokens_is_cut_and_never_streamed() -> None:
    text = OutputText(Pieces(), stop=("STOP",))
    deltas, stopped = _feed(text, [0, 1, 5, 6, 7, 8])
    assert stopped
    assert text.text == "Hello "
    assert "".join(deltas) == "Hello "
    assert all("S" not in d for d in deltas)


def test_partial_match_is_released_when_it_turns_out_not_to_stop() -> None:
    text = OutputText(Pieces(), stop=("STOP",))
    deltas, stopped = _feed(text, [0, 9, 10, 4])  # "HeST!" never completes STOP
    assert not stopped
    assert deltas[1] == "" and deltas[2] == ""  # "S", "ST" held back
    assert deltas[3] == "ST!"
    assert "".join(deltas) == text.text == "HeST!"


def test_earliest_of_several_stop_strings_wins() -> None:
    text = OutputText(Pieces(), stop=("world", "llo"))
    _feed(text, [0, 1, 2, 3])
    assert text.text == "He"


@pytest.fixture(scope="module")
def byte_tokenizer() -> Tokenizer:
    backend = BackendTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=280, initial_alphabet=alphabet)
    backend.train_from_iterator(["hello world", "plain ascii text"], trainer)
    return Tokenizer(backend)


def test_multibyte_characters_stream_whole(byte_tokenizer: Tokenizer) -> None:
    sentence = "héllo 日本語 and 🙂 done"
    ids = byte_tokenizer.encode(sentence, add_special_tokens=False)
    assert len(ids) > len(sentence)  # characters really are split across tokens
    text = OutputText(IncrementalDetokenizer(byte_tokenizer), stop=("done",))
    deltas, stopped = _feed(text, ids)
    assert stopped
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text.text == "héllo 日本語 and 🙂 "
