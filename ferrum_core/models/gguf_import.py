"""Convert a llama-architecture GGUF file into a Hugging Face style directory.

Tensors are read through :class:`~ferrum_core.models.gguf_tensors.GgufTensors`
(the same reader that offers a backend the GGUF's own blocks): dequantised to
float32 (``gguf.quants``), llama.cpp's q/k row permutation undone, names
mapped to ``transformers``' so that ``AutoModelForCausalLM.from_pretrained(out_dir)``
loads the result as is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ferrum_core.errors import ConfigError, ModelLoadError
from ferrum_core.models.cache import IfExists, write_dir_atomically
from ferrum_core.models.config import ModelConfig
from ferrum_core.models.expected import expected_tensors
from ferrum_core.models.gguf_metadata import (
    generation_config,
    hf_config,
    tokenizer_config,
)
from ferrum_core.models.gguf_tensors import GgufTensors, hf_tensor_name, unpermute_rows
from ferrum_core.models.gguf_tokenizer import build_gguf_tokenizer
from ferrum_core.models.safetensors_io import write_safetensors

__all__ = ["convert_gguf", "hf_tensor_name", "unpermute_rows"]

# Malformed (but parseable) metadata: a string where a number belongs, a key missing...
_METADATA_ERRORS = (KeyError, IndexError, ValueError, TypeError, AttributeError)


CONVERTER_VERSION = "2"
"""Bump when the converter's output changes, so stale caches are not reused
(2: ``gguf_stored_types.json`` and the write marker)."""

STORED_TYPES_FILE = "gguf_stored_types.json"
"""Written beside the converted weights: parameters per GGUF type (``{"Q4_1": n, ...}``)."""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _config(src: Path, tensors: GgufTensors) -> tuple[dict[str, Any], ModelConfig]:
    if not tensors.has("model.embed_tokens.weight"):
        raise ModelLoadError(f"{src}: GGUF file has no 'token_embd.weight'")
    vocab_rows = tensors.shape("model.embed_tokens.weight")[0]
    try:
        config_dict = hf_config(tensors.metadata, tensors.gguf_names, vocab_rows)
        return config_dict, ModelConfig.from_dict(config_dict)
    except ConfigError as exc:
        raise ModelLoadError(f"{src}: inconsistent GGUF metadata ({exc})") from None
    except ModelLoadError as exc:
        raise ModelLoadError(f"{src}: {exc}") from None
    except _METADATA_ERRORS as exc:
        raise ModelLoadError(f"{src}: malformed GGUF metadata ({exc!r})") from None


def _check_tensors(src: Path, tensors: GgufTensors, expected: dict[str, tuple[int, ...]]) -> None:
    if tensors.unmapped:
        raise ModelLoadError(
            f"{src}: GGUF tensor {tensors.unmapped[0]!r} has no Hugging Face llama equivalent"
        )
    for name, shape in expected.items():
        if not tensors.has(name):
            raise ModelLoadError(f"{src}: GGUF file lacks the tensor for {name!r}")
        got = tensors.shape(name)
        if got != shape:
            raise ModelLoadError(
                f"{src}: GGUF tensor for {name!r} has shape {list(got)}, expected {list(shape)}"
            )
    extra = sorted(set(tensors.names()) - set(expected))
    if extra:
        raise ModelLoadError(f"{src}: unexpected GGUF tensors for this config: {extra[:5]}")


def _write_tokenizer_files(src: Path, out: Path, meta: dict[str, Any]) -> None:
    try:
        tokenizer = build_gguf_tokenizer(meta)
        tokenizer_json = tokenizer_config(meta)
        generation = generation_config(meta)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{src}: {exc}") from None
    except _METADATA_ERRORS as exc:
        raise ModelLoadError(f"{src}: malformed GGUF tokenizer metadata ({exc!r})") from None
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", tokenizer_json)
    _write_json(out / "generation_config.json", generation)


def _build(src: Path, out: Path, progress: bool) -> None:
    from tqdm import tqdm

    with GgufTensors(src) as tensors:
        config_dict, config = _config(src, tensors)
        expected = expected_tensors(config)
        _check_tensors(src, tensors, expected)
        _write_tokenizer_files(src, out, tensors.metadata)
        _write_json(out / "config.json", config_dict)
        # How the GGUF stores its parameters, so `--dtype auto` need not re-parse the GGUF.
        _write_json(out / STORED_TYPES_FILE, tensors.types(elements=True))

        names = list(expected)
        bar = tqdm(names, desc=f"Converting {src.name}", unit="tensor", disable=not progress)

        def arrays() -> Iterator[np.ndarray]:
            for name in bar:
                yield tensors.get(name)  # dequantised, q/k rows un-permuted

        specs = [(name, np.dtype(np.float32), expected[name]) for name in names]
        write_safetensors(out / "model.safetensors", specs, arrays(), metadata={"format": "pt"})
        bar.close()


def convert_gguf(
    src: str | Path,
    out_dir: str | Path,
    progress: bool = True,
    *,
    if_exists: IfExists = "error",
) -> Path:
    """Write ``out_dir`` (config.json, generation_config.json, model.safetensors in
    float32 with HF names, tokenizer.json, tokenizer_config.json) from ``src``.

    The directory appears atomically; ``if_exists`` says what to do when it is
    already there (``"error"``, ``"skip"`` or ``"replace"``).
    """
    source = Path(src).expanduser()
    if not source.is_file():
        raise ModelLoadError(f"{source}: GGUF file not found")
    target = Path(out_dir).expanduser().absolute()
    marker = {"source": str(source.resolve()), "converter_version": CONVERTER_VERSION}
    write_dir_atomically(target, lambda tmp: _build(source, tmp, progress),
                         if_exists=if_exists, marker=marker)
    return target
