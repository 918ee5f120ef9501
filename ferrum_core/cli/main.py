"""`ferrum`: a thin CLI. Parses, calls the library, prints.

Subcommands live in their own modules and are imported only when invoked, so
``ferrum list-backends`` never imports the engine or an array library.
A :class:`FerrumError` becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from ferrum_core.errors import FerrumError
from ferrum_core.version import __version__

__all__ = ["cli", "main"]

_COMMANDS: dict[str, tuple[str, str]] = {
    "list-backends": ("ferrum_core.cli.backends_cmd:list_backends", "List plugins and backends."),
    "info": ("ferrum_core.cli.backends_cmd:info", "Show a backend's capabilities."),
    "convert": ("ferrum_core.cli.convert:convert", "Convert a GGUF file to an HF directory."),
    "generate": ("ferrum_core.cli.generate:generate", "Generate text from a prompt."),
    "chat": ("ferrum_core.cli.generate:chat", "Chat interactively with a model."),
    "bench": ("ferrum_core.cli.bench_cmd:bench", "Measure throughput and latency."),
    "serve": ("ferrum_core.cli.serve:serve", "Serve the OpenAI API (chat and text completions)."),
    "conformance": ("ferrum_core.cli.conformance:conformance", "Run the conformance suite."),
}


def _one_line(message: str) -> str:
    return " ".join(message.split())


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target[0]} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in sorted(_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FerrumError as exc:
            raise click.ClickException(_one_line(str(exc)) or type(exc).__name__) from exc


@click.group(cls=LazyGroup)
@click.version_option(__version__, "--version", prog_name="ferrum")
def cli() -> None:
    """Ferrum: pluggable LLM inference (torch/CUDA, ONNX Runtime, MLX backends)."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="ferrum")


if __name__ == "__main__":
    main()
