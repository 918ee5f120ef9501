"""`ferrum convert FILE.gguf OUT_DIR`: GGUF to a Hugging Face style directory."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

__all__ = ["convert"]


@click.command("convert")
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--force",
    is_flag=True,
    help="Replace OUT_DIR if an earlier `ferrum convert` wrote it (it holds .ferrum-convert.json).",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def convert(gguf_file: Path, out_dir: Path, force: bool, progress: bool, as_json: bool) -> None:
    """Dequantise GGUF_FILE (llama architecture) into OUT_DIR: config.json,
    float32 model.safetensors, tokenizer.json and tokenizer_config.json, loadable
    by Ferrum and by transformers."""
    from ferrum_core.models.cache import ReplaceRefusedError
    from ferrum_core.models.config import ModelConfig
    from ferrum_core.models.gguf_import import convert_gguf

    if force and gguf_file.resolve().is_relative_to(out_dir.resolve()):
        raise ReplaceRefusedError(f"{out_dir} holds the source {gguf_file}; refusing to replace it")
    started = time.perf_counter()
    out = convert_gguf(
        gguf_file, out_dir, progress and not as_json, if_exists="replace" if force else "error"
    )
    seconds = time.perf_counter() - started
    config = ModelConfig.from_dir(out)
    files = sorted(p.name for p in out.iterdir())
    size = sum((out / name).stat().st_size for name in files)
    if as_json:
        summary = {
            "source": str(gguf_file),
            "output": str(out),
            "model_type": config.model_type,
            "num_hidden_layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size,
            "tie_word_embeddings": config.tie_word_embeddings,
            "files": files,
            "bytes": size,
            "seconds": round(seconds, 3),
        }
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"Converted {gguf_file} -> {out} ({size / 2**20:.1f} MiB, {seconds:.1f} s)")
