"""A model's tokenizer: ``tokenizer.json`` (``tokenizers``) plus its chat template."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from ferrum_core.errors import InvalidInputError, ModelLoadError
from ferrum_core.models.chat_template import render_chat_template

__all__ = ["Tokenizer", "utf8_text"]

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# transformers' clean_up_tokenization: undo spaces a word-piece decoder inserts.
_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def utf8_text(value: object, what: str) -> str:
    """``value`` if it is a ``str`` that is valid UTF-8, else :class:`InvalidInputError`.

    Undecodable bytes on the command line or stdin reach Python as lone surrogates
    (``surrogateescape``); the message names the original byte and where it is.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be text (a str), got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        bad = (f"undecodable byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF
               else f"lone surrogate U+{code:04X}")
        raise InvalidInputError(
            f"{what} is not valid UTF-8 text: {bad} at character {exc.start}"
        ) from None
    return value


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _chat_template(directory: Path, tokenizer_config: dict[str, Any]) -> str | None:
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = _read_json(directory / "chat_template.json").get("chat_template")
    if template is None:
        template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: use the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


class Tokenizer:
    """Encode, decode and render chat prompts for one model."""

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        chat_template: str | None = None,
        special_tokens: Mapping[str, str | None] | None = None,
        eos_token_ids: Sequence[int] = (),
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.special_tokens = {k: (special_tokens or {}).get(k) for k in _SPECIAL_KEYS}
        self._clean_up = clean_up_tokenization_spaces
        eos_ids = list(eos_token_ids)
        own_eos = self.token_to_id(self.special_tokens["eos_token"])
        if own_eos is not None:
            eos_ids.append(own_eos)
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos_ids))
        self.bos_token_id = self.token_to_id(self.special_tokens["bos_token"])
        self.pad_token_id = self.token_to_id(self.special_tokens["pad_token"])

    @classmethod
    def from_dir(cls, path: str | Path, *, eos_token_ids: Sequence[int] = ()) -> Tokenizer:
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json``, chat template files)."""
        directory = Path(path)
        file = directory / "tokenizer.json"
        if not file.is_file():
            raise ModelLoadError(
                f"{directory}: no tokenizer.json (only fast tokenizers are supported)"
            )
        try:
            backend = BackendTokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ModelLoadError(f"{file}: cannot load tokenizer ({exc})") from None
        config = _read_json(directory / "tokenizer_config.json")
        # Older saves keep special tokens in special_tokens_map.json only.
        specials = {**_read_json(directory / "special_tokens_map.json"), **config}
        return cls(
            backend,
            chat_template=_chat_template(directory, config),
            special_tokens={k: _token_text(specials.get(k)) for k in _SPECIAL_KEYS},
            eos_token_ids=eos_token_ids,
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        )

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        utf8_text(text, "text to encode")
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        text: str = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self._clean_up:
            for before, after in _CLEANUP:
                text = text.replace(before, after)
        return text

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """The prompt text for ``messages`` (encode it with ``add_special_tokens=False``:
        templates write their own BOS)."""
        if self.chat_template is None:
            raise InvalidInputError("this model's tokenizer has no chat template")
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos={self.eos_token_ids})"
