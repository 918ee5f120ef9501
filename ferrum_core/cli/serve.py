"""`ferrum serve`: the OpenAI-compatible server (FastAPI + uvicorn, imported only here)."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

import click

from ferrum_core.cli.engine_options import (
    DTYPES,
    KV_CACHE_DTYPE_HELP,
    KV_CACHE_DTYPES,
    engine_config,
    errors,
    tensor_parallel_option,
)

__all__ = ["serve", "is_loopback"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_template(path: str) -> str:
    from ferrum_core.errors import InvalidInputError

    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"--chat-template {path}: cannot read it ({exc})") from None


def _served_names(given: str | None, model: str | None, directory: str) -> tuple[str, ...]:
    """The name clients send (first: the one /v1/models lists), then accepted aliases:
    --served-model-name, else --model as given (vLLM's rule), else the default model's."""
    from ferrum_core.models.default_model import DEFAULT_MODEL_FILE

    default = DEFAULT_MODEL_FILE.split(".")[0] if model is None else model
    return tuple(dict.fromkeys(name for name in (given, default, directory) if name))


@click.command()
@click.option("--model", "-m", default=None, metavar="DIR|FILE.gguf|ORG/NAME",
              help="Model (default: the embedded default model).")
@click.option("--backend", "-b", default=None, help="Backend name (default: selected).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any non-loopback address needs an API key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="FERRUM_API_KEY", default=None, show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every endpoint but /health.")
@click.option("--served-model-name", default=None,
              help="Model name clients use (default: --model as given).")
@click.option("--chat-template", default=None, type=click.Path(dir_okay=False),
              metavar="FILE", help="Jinja chat template replacing the model's.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for the backend.")
@click.option("--kv-cache-dtype", type=click.Choice(KV_CACHE_DTYPES), default=None,
              help=KV_CACHE_DTYPE_HELP)
@tensor_parallel_option()
@click.option("--max-model-len", type=click.IntRange(min=2), default=None)
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=None)
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20,
              show_default=True, help="Larger request bodies get a 413.")
def serve(model: str | None, backend: str | None, host: str, port: int,
          api_key: str | None, served_model_name: str | None, chat_template: str | None,
          dtype: str, threads: int | None, kv_cache_dtype: str | None,
          max_model_len: int | None,
          max_num_seqs: int | None, max_body_bytes: int) -> None:
    """Serve the OpenAI API (/v1/models, /v1/completions, /v1/chat/completions,
    /health, /metrics) over one continuously batching engine.

    The port opens at once and the model loads meanwhile: until it is ready /health
    and every /v1/* route answer 503 (code engine_loading, with Retry-After). A model
    that fails to load ends the command with its error (exit 1)."""
    if not api_key:
        api_key = None
    if api_key is None and not is_loopback(host):
        raise click.UsageError(f"--host {host} is not a loopback address: set --api-key "
                               "(or FERRUM_API_KEY) before exposing the server")
    with errors():
        import uvicorn

        from ferrum_core.server import EngineSlot, ServerSettings, create_app

        template = _read_template(chat_template) if chat_template else None
        extra = {} if max_num_seqs is None else {"max_num_seqs": max_num_seqs}
        config = engine_config(dtype, threads, max_model_len, kv_cache_dtype, **extra)
        names = _served_names(served_model_name, model, "")
        settings = ServerSettings(served_model_names=names, api_key=api_key,
                                  max_body_bytes=max_body_bytes)
        slot = EngineSlot()
        server = uvicorn.Server(uvicorn.Config(
            create_app(slot, settings), host=host, port=port, timeout_graceful_shutdown=5,
            log_level=os.environ.get("FERRUM_SERVE_LOG_LEVEL", "warning")))
        sock = server.config.bind_socket()
        sock.listen(server.config.backlog)  # clients connect (and get 503) from now on

        def build() -> tuple[Any, tuple[str, ...]]:
            from ferrum_core.engine import AsyncLLM

            engine = AsyncLLM(model, backend, **config)
            if template is not None:
                engine.llm.tokenizer.chat_template = template
            print(f"ferrum serve: {names[0]} ready on {engine.llm.backend} "
                  f"({engine.llm.dtype.value})", file=sys.stderr, flush=True)
            return engine, (Path(engine.llm.model_path).name,)

        def failed(error: BaseException) -> None:
            server.should_exit = True

        bound = sock.getsockname()[1]
        print(f"ferrum serve: loading {names[0]}; serving at http://{host}:{bound}/v1",
              file=sys.stderr, flush=True)
        slot.load_in_background(build, on_failure=failed)
        try:
            server.run(sockets=[sock])
        finally:
            slot.close()
        if slot.error is not None:
            raise slot.error
