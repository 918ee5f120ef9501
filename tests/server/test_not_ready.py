"""503 while the engine cannot serve: a real `ferrum serve` process while its model loads
(the port opens first), a load that fails, and a closed engine in-process."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from ferrum_core.server import ServerSettings, create_app
from tests.server.conftest import API_KEY, launch, stop

KEYED = {"Authorization": f"Bearer {API_KEY}"}
BODY = {"model": "loading", "prompt": "hello", "max_tokens": 2, "ignore_eos": True}


def _calls(base: str) -> Iterator[tuple[str, httpx.Response]]:
    """One round of the routes a client may try while the server starts."""
    yield "health", httpx.get(f"{base}/health", timeout=30)
    yield "models", httpx.get(f"{base}/v1/models", headers=KEYED, timeout=30)
    yield "completions", httpx.post(f"{base}/v1/completions", json=BODY, headers=KEYED,
                                    timeout=60)
    yield "no key", httpx.post(f"{base}/v1/completions", json=BODY, timeout=30)


def _assert_loading(route: str, response: httpx.Response) -> None:
    assert response.headers.get("retry-after", "").isdigit(), (route, response.text)
    error = response.json()["error"]
    assert error["code"] == "engine_loading", (route, error)
    assert error["type"] == "service_unavailable_error"
    assert "loading" in error["message"]


def test_the_port_opens_before_the_model_loads(tiny_model_dir: Path, serve_home: Path
                                               ) -> None:
    """Poll from the moment the port opens: every route answers 503 (401 without the key)
    until /health says 200, then serves; no connection error once the port is open.
    Loading the backend (torch) and the model takes seconds, so a server that loaded
    before opening its port would never show a 503 and fails here."""
    process, port, log = launch(["--model", str(tiny_model_dir), "--backend", "torch"],
                                serve_home, model="loading", api_key=API_KEY)
    base = f"http://127.0.0.1:{port}"
    seen: dict[str, list[int]] = {"health": [], "models": [], "completions": [],
                                  "no key": []}
    try:
        opened = False
        while not seen["health"] or seen["health"][-1] != 200:
            assert process.poll() is None, log.read_text()
            try:
                for route, response in _calls(base):
                    opened = True
                    seen[route].append(response.status_code)
                    if response.status_code == 503:
                        _assert_loading(route, response)
                time.sleep(0.05)  # many rounds while loading, without starving the load
            except httpx.TransportError as exc:
                assert not opened, f"connection error after the port opened: {exc!r}"
                time.sleep(0.01)
        for route, response in _calls(base):  # ready: every route serves
            seen[route].append(response.status_code)
    finally:
        stop(process)
    assert seen["health"].count(503) >= 1, seen  # the port was open while loading
    for route in ("health", "models", "completions"):
        codes = seen[route]
        first_ok = codes.index(200)
        assert set(codes[:first_ok]) == {503}, (route, codes)
        assert set(codes[first_ok:]) == {200}, (route, codes)
    assert seen["models"].count(503) >= 1 and seen["completions"].count(503) >= 1, seen
    assert set(seen["no key"]) == {401}, seen  # the key is checked before readiness


def test_a_model_that_fails_to_load_ends_the_server(tiny_model_dir: Path, tmp_path: Path,
                                                    serve_home: Path) -> None:
    """Weights that cannot be read fail in the background load: the process prints the
    one-line error and exits 1 (it does not keep answering 503)."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"\x00" * 64)
    process, _, log = launch(["--model", str(broken), "--backend", "torch"], serve_home,
                             model="broken")
    try:
        returncode = process.wait(timeout=300)
    finally:
        stop(process)
    output = log.read_text()
    assert returncode == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "safetensors" in errors[0].lower(), output


def test_a_closed_engine_answers_503(tiny_model_dir: Path) -> None:
    from ferrum_core.engine import AsyncLLM

    engine = AsyncLLM(str(tiny_model_dir), "torch")
    app = create_app(engine, ServerSettings(served_model_names=("tiny",)))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        engine.close()
        health: Any = client.get("/health")
        assert health.status_code == 503
        assert health.json()["error"]["code"] == "engine_unavailable"
        response = client.post("/v1/completions",
                               json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "engine_unavailable"
