"""503 while the engine cannot serve (here: a real AsyncLLM after close), in-process."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from ferrum_core.server import ServerSettings, create_app


def test_a_closed_engine_answers_503(tiny_model_dir: Path) -> None:
    from ferrum_core.engine import AsyncLLM

    engine = AsyncLLM(str(tiny_model_dir), "torch")
    app = create_app(engine, ServerSettings(served_model_names=("tiny",)))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        engine.close()
        assert client.get("/health").status_code == 503
        response = client.post("/v1/completions",
                               json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "engine_unavailable"
