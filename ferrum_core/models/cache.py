"""``$FERRUM_HOME`` and atomic directory writes.

A converted model is built in a temporary directory next to its target and
renamed into place while a file lock is held: a reader sees either no
directory or a complete one, and two processes never convert the same model
at once (the second waits, then finds the first one's result).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from filelock import FileLock

from ferrum_core.errors import ModelLoadError

__all__ = ["ferrum_home", "write_dir_atomically"]

IfExists = Literal["error", "skip", "replace"]


def ferrum_home() -> Path:
    """The cache directory: ``$FERRUM_HOME`` or ``~/.cache/ferrum``."""
    return Path(os.environ.get("FERRUM_HOME") or "~/.cache/ferrum").expanduser()


def _lock_for(target: Path) -> FileLock:
    # Locks live in FERRUM_HOME so that converting into a user's directory
    # leaves no lock file beside it.
    key = hashlib.sha256(str(target).encode()).hexdigest()[:16]
    locks = ferrum_home() / "locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
    except OSError:
        locks = target.parent
    return FileLock(str(locks / f"{target.name}-{key}.lock"))


def _has_content(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def write_dir_atomically(
    target: str | Path, build: Callable[[Path], None], *, if_exists: IfExists = "error"
) -> bool:
    """Run ``build(tmp_dir)`` and rename ``tmp_dir`` to ``target``.

    Returns False (and builds nothing) when ``target`` already has content and
    ``if_exists`` is ``"skip"``; ``"error"`` raises :class:`ModelLoadError`
    instead and ``"replace"`` swaps the old directory out.
    """
    target = Path(target).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise ModelLoadError(f"{target} exists and is not a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"cannot create {target.parent} ({exc.strerror})") from None
    with _lock_for(target):
        if _has_content(target):
            if if_exists == "skip":
                return False
            if if_exists == "error":
                raise ModelLoadError(f"{target} already exists and is not empty")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build(tmp)
            tmp.chmod(0o755)  # mkdtemp creates 0700
            if target.exists():
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True
