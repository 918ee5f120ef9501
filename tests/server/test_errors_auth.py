"""Bad requests get OpenAI-shaped errors with the right status; the API key guards all but
/health; a public host needs a key. Against a real `ferrum serve` (tiny llama, torch)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.server.conftest import API_KEY, Server

OK = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

BAD: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("completions", {**OK, "max_tokens": -1}, 400, "max_tokens"),
    ("completions", {**OK, "max_tokens": "3"}, 400, "max_tokens"),
    ("completions", {**OK, "temperature": 2.5}, 400, "temperature"),
    ("completions", {**OK, "temperature": -0.1}, 400, "temperature"),
    ("completions", {**OK, "temperature": "hot"}, 400, "temperature"),
    ("completions", {**OK, "top_p": 0}, 400, "top_p"),
    ("completions", {**OK, "n": 0}, 400, "n"),
    ("completions", {**OK, "stream": "yes"}, 400, "stream"),
    ("completions", {**OK, "prompt": 42}, 400, "prompt"),
    ("completions", {**OK, "prompt": []}, 400, "prompt"),
    ("completions", {**OK, "prompt": [1, -5]}, 400, None),
    ("completions", {**OK, "prompt": "word " * 400}, 400, "prompt"),
    ("completions", {**OK, "echo": True}, 400, "echo"),
    ("completions", {**OK, "best_of": 3}, 400, "best_of"),
    ("completions", {**OK, "logit_bias": {"5": 10}}, 400, "logit_bias"),
    ("completions", {**OK, "model": "gpt-4"}, 404, "model"),
    ("chat/completions", {**CHAT, "tools": [{"type": "function"}]}, 400, "tools"),
    ("chat/completions", {**CHAT, "response_format": {"type": "json_object"}}, 400,
     "response_format"),
    ("chat/completions", {**CHAT, "messages": []}, 400, "messages"),
    ("chat/completions", {**CHAT, "messages": [{"content": "no role"}]}, 400, "messages"),
    ("chat/completions", {**CHAT, "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ("chat/completions", {**CHAT, "presence_penalty": 3}, 400, "presence_penalty"),
    ("chat/completions", {**CHAT, "top_logprobs": 2}, 400, "top_logprobs"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD,
                         ids=[f"{p}-{i}" for i, (p, *_rest) in enumerate(BAD)])
def test_bad_request(tiny_server: Server, path: str, body: dict[str, Any], status: int,
                     param: str | None) -> None:
    response = httpx.post(f"{tiny_server.v1}/{path}", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param)
        assert param in error["message"]


def test_bodies_that_are_not_requests(tiny_server: Server) -> None:
    url = f"{tiny_server.v1}/completions"
    for content in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        response = httpx.post(url, content=content, timeout=30,
                              headers={"content-type": "application/json"})
        assert response.status_code == 400 and "error" in response.json()
    huge = httpx.post(url, json={**OK, "prompt": "x" * (1 << 21)}, timeout=60)
    assert huge.status_code == 413
    assert str(1 << 20) in huge.json()["error"]["message"]
    missing = httpx.get(f"{tiny_server.v1}/nothing-here", timeout=30)
    assert missing.status_code == 404 and "error" in missing.json()


def test_unknown_fields_are_ignored_and_the_server_keeps_serving(tiny_server: Server) -> None:
    response = httpx.post(f"{tiny_server.v1}/completions",
                          json={**OK, "some_future_field": {"x": 1}, "ignore_eos": True},
                          timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


def test_the_api_key_guards_everything_but_health(keyed_server: Server) -> None:
    base = keyed_server.base_url
    assert httpx.get(f"{base}/health", timeout=30).status_code == 200
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"),
                         ("POST", "/v1/completions"), ("POST", "/v1/chat/completions")):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = httpx.request(method, base + path, json=OK, headers=headers,
                                     timeout=30)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"]["type"] == "authentication_error"
    client: Any = keyed_server.client()
    out = client.completions.create(model="tiny-keyed", prompt="hello", max_tokens=2,
                                    extra_body={"ignore_eos": True})  # sampled: EOS may come
    assert out.usage.completion_tokens == 2
    assert httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {API_KEY}"},
                     timeout=30).status_code == 200


def test_the_chat_template_file_replaces_the_models(keyed_server: Server) -> None:
    from ferrum_core.models.tokenizer import Tokenizer

    assert keyed_server.model_dir is not None
    tokenizer = Tokenizer.from_dir(keyed_server.model_dir)
    client: Any = keyed_server.client()
    out = client.chat.completions.create(model="tiny-keyed", max_tokens=1,
                                         messages=[{"role": "user", "content": "quick fox"}])
    expected = tokenizer.encode("<<quick fox>>", add_special_tokens=False)
    assert out.usage.prompt_tokens == len(expected)
    model_text = tokenizer.apply_chat_template([{"role": "user", "content": "quick fox"}],
                                               add_generation_prompt=True)
    assert len(tokenizer.encode(model_text, add_special_tokens=False)) != len(expected)


def test_without_a_key_no_auth_is_asked(tiny_server: Server) -> None:
    assert httpx.get(f"{tiny_server.v1}/models", timeout=30).status_code == 200


def test_a_public_host_needs_a_key() -> None:
    from ferrum_core.cli.main import cli

    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"], env={"FERRUM_API_KEY": ""})
    assert result.exit_code == 2
    assert "--api-key" in result.output


def test_served_names() -> None:
    from ferrum_core.cli.serve import _served_names

    assert _served_names(None, None, "d") == ("SmolLM2-135M-Instruct", "d")
    assert _served_names(None, "Org/Name", "d") == ("Org/Name", "d")
    assert _served_names("mine", "/models/x", "x") == ("mine", "/models/x", "x")


def test_list_backends_does_not_import_the_server() -> None:
    code = ("import sys; from ferrum_core.cli.main import main\n"
            "try:\n    main(['list-backends'])\nexcept SystemExit:\n    pass\n"
            "print('LEAK' if {'fastapi', 'uvicorn'} & set(sys.modules) else 'CLEAN')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.stdout.strip().endswith("CLEAN"), out.stdout + out.stderr
