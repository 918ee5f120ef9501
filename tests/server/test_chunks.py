"""Stream chunks rendered from a template parse to the same objects as the general path
(which builds each chunk as a dict): completions and chat, first and later deltas,
finish reasons, usage placeholders, text that needs escaping."""

from __future__ import annotations

import json

import pytest

from ferrum_core.engine.outputs import StreamDelta
from ferrum_core.server.completions import Prepared
from ferrum_core.server.responses import _chunk_choice, _ChunkTemplate, _header
from ferrum_core.server.streams import Job

TEXTS = ["", " Paris", 'quote " and \\ backslash', "naïve 東京 \n\t", "\x00\u2028"]


def _prepared(chat: bool, include_usage: bool) -> Prepared:
    return Prepared(response_id="cmpl-abc", created=1700000000, model="m/odel \"x\"",
                    chat=chat, jobs=(Job((1, 2), "r"),), params=None, n=1,
                    num_logprobs=None, include_usage=include_usage)


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("reason", [None, "length", "eos", "stop", "abort"])
def test_template_chunks_equal_the_general_ones(chat: bool, include_usage: bool,
                                                reason: str | None) -> None:
    prepared = _prepared(chat, include_usage)
    template = _ChunkTemplate(prepared)
    for index, first in ((0, True), (3, False)):
        for text in TEXTS:
            delta = StreamDelta(request_id="r", text=text, token_ids=(7,),
                                finish_reason=reason)
            expected = _header(prepared, chunk=True)
            expected["choices"] = [_chunk_choice(None, prepared, index, delta, {}, first)]
            if include_usage:
                expected["usage"] = None
            event = template.render(index, delta, first)
            assert event.startswith("data: ") and event.endswith("\n\n")
            assert "\n" not in event[:-2]  # one SSE line whatever the text holds
            assert json.loads(event[6:]) == expected
