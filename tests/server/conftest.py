"""A real `ferrum serve` subprocess per configuration, on a free port, always terminated."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.tiny_models import build_tiny_model, require_torch_backend

API_KEY = "test-key-123"
CUSTOM_TEMPLATE = "{% for m in messages %}<<{{ m.content }}>>{% endfor %}"


@dataclass(frozen=True)
class Server:
    base_url: str  # http://127.0.0.1:PORT
    model: str  # the served model name
    model_dir: Path | None
    api_key: str | None

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def client(self, **kwargs: object) -> object:
        import openai

        return openai.OpenAI(base_url=self.v1, api_key=self.api_key or "unused",
                             max_retries=0, **kwargs)

    def async_client(self) -> object:
        import openai

        return openai.AsyncOpenAI(base_url=self.v1, api_key=self.api_key or "unused",
                                  max_retries=0, timeout=120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(args: list[str], home: Path, *, model: str, api_key: str | None = None
           ) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Start `ferrum serve ARGS` on a free port: (process, port, its output log)."""
    port = free_port()
    env = {**os.environ, "FERRUM_HOME": str(home)}
    env.pop("FERRUM_API_KEY", None)
    command = [sys.executable, "-m", "ferrum_core.cli.main", "serve", "--port", str(port),
               "--served-model-name", model, *args]
    if api_key is not None:
        command += ["--api-key", api_key]
    log = home / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    return process, port, log


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_server(args: list[str], home: Path, *, model: str, model_dir: Path | None,
                 api_key: str | None = None) -> Iterator[Server]:
    """Start `ferrum serve ARGS`, wait for /health (or for the process to die), yield it."""
    process, port, log = launch(args, home, model=model, api_key=api_key)
    server = Server(f"http://127.0.0.1:{port}", model, model_dir, api_key)
    try:
        while True:  # bounded by the process: it either answers or exits
            if process.poll() is not None:
                pytest.fail(f"ferrum serve exited {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    require_torch_backend()
    return build_tiny_model(tmp_path_factory.mktemp("server-model"), "llama")


@pytest.fixture(scope="session")
def serve_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fhome")


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: Path, serve_home: Path) -> Iterator[Server]:
    """No API key; the tiny llama on torch; a pool small enough to see blocks move."""
    yield from start_server(["--model", str(tiny_model_dir), "--backend", "torch",
                             "--max-num-seqs", "32", "--max-model-len", "256"],
                            serve_home, model="tiny", model_dir=tiny_model_dir)


@pytest.fixture(scope="session")
def keyed_server(tiny_model_dir: Path, serve_home: Path) -> Iterator[Server]:
    """An API key and a --chat-template file replacing the model's template."""
    template = serve_home / "template.jinja"
    template.write_text(CUSTOM_TEMPLATE, encoding="utf-8")
    yield from start_server(["--model", str(tiny_model_dir), "--backend", "torch",
                             "--chat-template", str(template)],
                            serve_home, model="tiny-keyed", model_dir=tiny_model_dir,
                            api_key=API_KEY)


@pytest.fixture(scope="session")
def default_server(serve_home: Path) -> Iterator[Server]:
    yield from start_server([], serve_home, model="default", model_dir=None)
