"""Tokenizer and chat templates against transformers (tiny models, no default model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ferrum_core.errors import InvalidInputError, ModelLoadError
from ferrum_core.models import Tokenizer
from tests.tiny_models import CHAT_TEMPLATE, IM_END_ID

TEXTS = [
    "Hello world",
    "  leading and trailing spaces  ",
    "def add(a, b):\n    return a + b",
    "1234567890 + 42 = ?",
    "<|im_start|>user\nhi<|im_end|>",
    "caf\u00e9 \u65e5\u672c \U0001f916",  # unknown to the tiny vocabulary -> <unk>
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one, with unicode: \u00e9\u00e8 \U0001f600"},
    ],
]


@pytest.fixture
def hf_tokenizer(tiny_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_like_transformers(tiny_dir: Path, hf_tokenizer: Any, text: str) -> None:
    ours = Tokenizer.from_dir(tiny_dir)
    for special in (True, False):
        ids = ours.encode(text, add_special_tokens=special)
        assert ids == hf_tokenizer(text, add_special_tokens=special).input_ids
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf_tokenizer.decode(
                ids, skip_special_tokens=skip
            )


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_like_transformers(
    tiny_dir: Path,
    hf_tokenizer: Any,
    conversation: list[dict[str, str]],
    add_generation_prompt: bool,
) -> None:
    ours = Tokenizer.from_dir(tiny_dir)
    expected = hf_tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt) == (
        expected
    )


def test_special_ids_and_vocab(tiny_dir: Path) -> None:
    tokenizer = Tokenizer.from_dir(tiny_dir, eos_token_ids=(2,))
    assert tokenizer.eos_token_ids == (2, IM_END_ID)
    assert tokenizer.bos_token_id == 1 and tokenizer.pad_token_id == 2
    assert tokenizer.vocab_size <= 256 and tokenizer.has_chat_template


def _set_template(directory: Path, template: Any) -> None:
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = template
    path.write_text(json.dumps(config))


def test_template_features_transformers_provides(tiny_dir: Path, hf_tokenizer: Any) -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "  {{ m | tojson }}\n"
        "  {% generation %}[{{ m.content | length }}]{% endgeneration %}\n"
        "{% endfor %}{{ eos_token }}{{ unk_token }}"
    )
    _set_template(tiny_dir, template)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_dir)
    conversation = [{"role": "system", "content": "s"}, {"role": "user", "content": "<b>&\u00e9"}]
    expected = hf.apply_chat_template(conversation, tokenize=False)
    assert Tokenizer.from_dir(tiny_dir).apply_chat_template(conversation, False) == expected
    assert '"<b>&\u00e9"' in expected  # tojson neither escapes HTML nor non-ASCII


def test_raise_exception_and_sandbox(tiny_dir: Path) -> None:
    _set_template(tiny_dir, "{{ raise_exception('only user messages, please') }}")
    with pytest.raises(InvalidInputError, match="only user messages"):
        Tokenizer.from_dir(tiny_dir).apply_chat_template([{"role": "user", "content": "x"}])
    _set_template(tiny_dir, "{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidInputError, match="chat template failed"):
        Tokenizer.from_dir(tiny_dir).apply_chat_template([{"role": "user", "content": "x"}])
    _set_template(tiny_dir, "{% set x = messages.append(1) %}")
    with pytest.raises(InvalidInputError):
        Tokenizer.from_dir(tiny_dir).apply_chat_template([{"role": "user", "content": "x"}])


def test_template_sources(tiny_dir: Path) -> None:
    _set_template(
        tiny_dir, [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    )
    assert Tokenizer.from_dir(tiny_dir).apply_chat_template([]) == "D"
    (tiny_dir / "chat_template.jinja").write_text("J{{ bos_token }}")
    assert Tokenizer.from_dir(tiny_dir).apply_chat_template([]) == "J<s>"
    (tiny_dir / "chat_template.jinja").unlink()
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    config["eos_token"] = {"content": "</s>", "special": True}
    (tiny_dir / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = Tokenizer.from_dir(tiny_dir)
    assert not tokenizer.has_chat_template and tokenizer.eos_token_ids == (2,)
    with pytest.raises(InvalidInputError, match="no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}])


def test_special_tokens_map_fallback(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    for key in ("bos_token", "eos_token"):
        del config[key]
    (tiny_dir / "tokenizer_config.json").write_text(json.dumps(config))
    specials = {"bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    (tiny_dir / "special_tokens_map.json").write_text(json.dumps(specials))
    tokenizer = Tokenizer.from_dir(tiny_dir)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_ids) == (1, (2,))


def test_default_template_renders_bos(tiny_dir: Path) -> None:
    rendered = Tokenizer.from_dir(tiny_dir).apply_chat_template([{"role": "user", "content": "x"}])
    assert rendered == "<s><|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    assert CHAT_TEMPLATE.startswith("{{ bos_token }}")


def test_missing_or_broken_tokenizer(tiny_dir: Path) -> None:
    (tiny_dir / "tokenizer.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(tiny_dir)
    (tiny_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no tokenizer\.json"):
        Tokenizer.from_dir(tiny_dir)


def test_encode_rejects_non_text(tiny_dir: Path) -> None:
    with pytest.raises(InvalidInputError):
        Tokenizer.from_dir(tiny_dir).encode(b"bytes")  # type: ignore[arg-type]
