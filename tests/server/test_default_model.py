"""The default model through `ferrum serve` and the openai client (slow: a real model)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.conftest import Server

QUESTION = "What is the capital of France?"


@pytest.mark.slow
def test_chat_completion_answers_paris(default_server: Server) -> None:
    client: Any = default_server.client()
    # the default model's own name is accepted next to --served-model-name
    out = client.chat.completions.create(model="SmolLM2-135M-Instruct", temperature=0,
                                         max_tokens=32,
                                         messages=[{"role": "user", "content": QUESTION}])
    assert "Paris" in out.choices[0].message.content
    assert out.usage.completion_tokens > 0


@pytest.mark.slow
def test_text_completion_answers_paris(default_server: Server) -> None:
    client: Any = default_server.client()
    out = client.completions.create(model="default", prompt=f"Q: {QUESTION}\nA:",
                                    temperature=0, max_tokens=32)
    assert "Paris" in out.choices[0].text
    assert out.usage.prompt_tokens > 0
