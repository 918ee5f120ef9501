"""Render Hugging Face chat templates the way ``transformers`` does.

Templates come from model repositories and are untrusted code, hence the
immutable sandbox. The environment matches ``transformers``: ``trim_blocks``,
``lstrip_blocks``, loop controls, ``raise_exception``, ``strftime_now``, a
``tojson`` that does not escape HTML, and the ``{% generation %}`` tag (it only
marks assistant spans for training masks; here it renders its body).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ferrum_core.errors import InvalidInputError

__all__ = ["render_chat_template"]


class _GenerationTag(jinja2.ext.Extension):
    tags = {"generation"}  # noqa: RUF012 - jinja's API

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _plain(value: Any) -> Any:
    """Rebuild the template's inputs from plain JSON types (the sandbox sees nothing else)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool,
    special_tokens: Mapping[str, str | None],
    **extra: Any,
) -> str:
    """Render ``messages``; template errors become :class:`InvalidInputError`."""
    chat = _plain(list(messages))
    for message in chat:
        if not isinstance(message, dict):
            raise InvalidInputError(f"chat messages must be mappings, got {message!r}")
    context: dict[str, Any] = {"tools": None, "documents": None, **dict(special_tokens)}
    context.update(_plain(extra))
    try:
        return _compile(template).render(
            messages=chat, add_generation_prompt=add_generation_prompt, **context
        )
    except jinja2.exceptions.TemplateError as exc:
        raise InvalidInputError(f"chat template failed: {exc}") from None
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
        # the template is the model repository's code: its own bugs are not ours
        raise InvalidInputError(
            f"chat template failed: {type(exc).__name__}: {exc}"
        ) from None
