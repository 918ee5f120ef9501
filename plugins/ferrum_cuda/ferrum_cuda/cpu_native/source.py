"""The C sources of the CPU kernels: package data under ``csrc/``, read and hashed here.

``csrc/ferrum_cpu.c`` is the one translation unit; it includes the hand-written
``elementwise.c``, ``attention.c``, ``gemm.c`` and ``step.c``, which include
the ``gen_*`` files that :mod:`ferrum_cuda.cpu_native.generate` writes. No
torch here: ``ferrum info`` reads the digest without loading a model.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

__all__ = ["CSRC", "ENTRY", "LAYER_FIELDS", "source_digest", "source_files"]

CSRC = Path(__file__).with_name("csrc")
ENTRY = "ferrum_cpu.c"

# Pointers per layer in the table passed to ferrum_decode_step, in this order
# (gen_layer_fields.h numbers them). ``next_norm``: the next layer's input norm, or the
# final norm after the last layer.
LAYER_FIELDS = ("wqkv", "bqkv", "wo", "bo", "wgu", "bgu", "wd", "bd", "post_norm",
                "next_norm", "kpool", "vpool")  # fmt: skip


@cache
def source_files() -> dict[str, bytes]:
    """Every ``.c`` / ``.h`` file of ``csrc/`` by name (sorted), as shipped."""
    files = sorted(p for p in CSRC.iterdir() if p.suffix in (".c", ".h") and p.is_file())
    return {p.name: p.read_bytes() for p in files}


def source_digest() -> str:
    """sha256 over the names and bytes of :func:`source_files` (hex)."""
    digest = hashlib.sha256()
    for name, data in source_files().items():
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()
