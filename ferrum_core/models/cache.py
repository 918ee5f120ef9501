"""``$FERRUM_HOME`` and atomic directory writes.

A converted model is built in a temporary directory next to its target and
renamed into place while a file lock is held: a reader sees either no
directory or a complete one, and two processes never convert the same model
at once (the second waits, then finds the first one's result). Temporaries
carry their writer's pid: the next write removes those of a dead writer.
Every directory written here holds :data:`WRITE_MARKER`, and only a
directory holding it may be replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from filelock import FileLock

from ferrum_core.cache_trust import file_sha256, make_temp_dir, remove_stale_temps, temp_name
from ferrum_core.errors import ModelLoadError

__all__ = [
    "WRITE_MARKER",
    "ReplaceRefusedError",
    "ferrum_home",
    "recorded_hashes",
    "write_dir_atomically",
]

WRITE_MARKER = ".ferrum-convert.json"


class ReplaceRefusedError(ModelLoadError):
    """Replacing a directory that no conversion wrote (no :data:`WRITE_MARKER`)."""


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


def written_here(path: Path) -> bool:
    """Whether ``path`` is a directory this module wrote (it holds the marker)."""
    marker = path / WRITE_MARKER
    try:
        record = json.loads(marker.read_text()) if not marker.is_symlink() else None
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("written_by") == "ferrum"


def _seal(tmp: Path, marker: Mapping[str, str] | None) -> None:
    """Nothing in the directory writable by group or others; then the marker, which
    records every file's sha256 (``files``) so a reader can verify what it loads."""
    for path in (*tmp.rglob("*"), tmp):
        if not path.is_symlink():
            path.chmod((0o755 if path.is_dir() else path.stat().st_mode & 0o755) | 0o600)
    files = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*"))
             if p.is_file() and not p.is_symlink()}
    record = {"written_by": "ferrum", **(marker or {}), "files": files}
    (tmp / WRITE_MARKER).write_text(json.dumps(record, indent=1) + "\n")
    (tmp / WRITE_MARKER).chmod(0o644)


def recorded_hashes(path: Path) -> dict[str, str] | None:
    """``{relative path: sha256}`` the marker of a directory this module wrote records."""
    marker = path / WRITE_MARKER
    try:
        record = json.loads(marker.read_text()) if not marker.is_symlink() else None
    except (OSError, ValueError):
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        return None
    return dict(files)


def write_dir_atomically(
    target: str | Path,
    build: Callable[[Path], None],
    *,
    if_exists: IfExists = "error",
    marker: Mapping[str, str] | None = None,
) -> bool:
    """Run ``build(tmp_dir)`` and rename ``tmp_dir`` to ``target``.

    Returns False (and builds nothing) when ``target`` already has content and
    ``if_exists`` is ``"skip"``; ``"error"`` raises :class:`ModelLoadError`
    instead and ``"replace"`` swaps the old directory out, only if it holds
    :data:`WRITE_MARKER` (else :class:`ReplaceRefusedError`, nothing deleted).
    ``marker`` adds fields (e.g. the source) to the marker written.
    """
    target = Path(target).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise ModelLoadError(f"{target} exists and is not a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"cannot create {target.parent} ({exc.strerror})") from None
    if target.parent == target or Path.cwd().is_relative_to(target):
        raise ReplaceRefusedError(f"{target}: refusing to write over the current directory")
    with _lock_for(target):
        remove_stale_temps(target.parent, target.name)
        if _has_content(target):
            if if_exists == "skip":
                return False
            if if_exists == "error":
                raise ModelLoadError(f"{target} already exists and is not empty")
            if not written_here(target):
                raise ReplaceRefusedError(
                    f"{target} was not written by a conversion (no {WRITE_MARKER});"
                    " refusing to replace it: remove it yourself or choose another directory"
                )
        try:
            tmp = make_temp_dir(target.parent, target.name)
        except OSError as exc:
            raise ModelLoadError(f"cannot write into {target.parent} ({exc.strerror})") from None
        try:
            build(tmp)
            _seal(tmp, marker)
            if target.exists():
                old = target.with_name(temp_name(target.name, "old"))
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except OSError as exc:  # a full disk, a read-only or vanishing directory
            shutil.rmtree(tmp, ignore_errors=True)
            where = f"{exc.filename}: " if exc.filename else ""
            raise ModelLoadError(f"cannot write {target} ({where}{exc.strerror or exc})") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True
