"""Built ONNX models cached under ``$FERRUM_HOME/onnx``, keyed by weight content and options.

A model is built in memory first (so an unsupported family or block type
fails before anything is written), saved into a private temporary directory
(graph + one external-data file), recorded with the sha256 of both files and
renamed into place. A cached model is loaded only when its directory and files
are this user's, writable by nobody else, and hash to what was recorded; a
corrupt or foreign one is rebuilt. File digests are remembered against each
file's full stat (``remembered_sha256``), so an unchanged file is hashed once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferrum_core.plugin import (
    ferrum_home,
    file_sha256,
    make_temp_dir,
    remembered_sha256,
    remove_stale_temps,
    secure_dir,
    trust_problem,
    write_private_file,
)

__all__ = ["CachedModel", "cache_key", "load_or_build"]

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
RECORD_FILE = "record.json"
CACHE_VERSION = 1


def cache_root() -> Path:
    return ferrum_home() / "onnx"


def cache_key(weight_files: list[Path], raw_config: dict[str, Any],
              options: dict[str, Any]) -> str:  # fmt: skip
    """Hex key over the weight files' content, the model config and the build options."""
    memo = cache_root() / "hashes"
    digest = hashlib.sha256()
    payload = {
        "version": CACHE_VERSION,
        "weights": sorted(remembered_sha256(f, memo) for f in weight_files),
        "config": raw_config,
        "options": options,
    }
    digest.update(json.dumps(payload, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:40]


class CachedModel:
    """The directory of one built model; :meth:`problem` says why it must not be loaded."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.model = directory / MODEL_FILE
        self.data = directory / DATA_FILE
        self.record = directory / RECORD_FILE

    def problem(self) -> str | None:
        problem = trust_problem(self.directory, directory=True)
        for path in (self.record, self.model, self.data):
            problem = problem or trust_problem(path)
        if problem is not None:
            return problem
        try:
            wanted = json.loads(self.record.read_bytes())["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{self.record} is not a build record"
        memo = cache_root() / "hashes"
        for path in (self.model, self.data):
            if remembered_sha256(path, memo) != wanted.get(path.name):
                return f"{path} is not the model that was built (sha256 differs)"
        return None

    def size(self) -> int:
        return self.model.stat().st_size + self.data.stat().st_size


def load_or_build(key: str, build: Callable[[], Any]) -> tuple[CachedModel, bool]:
    """The cached model for ``key``, built with ``build()`` (an onnx ModelProto) when
    missing or untrustworthy; returns ``(model, built_now)``."""
    root = cache_root()
    cached = CachedModel(root / key)
    if cached.problem() is None:
        return cached, False
    proto = build()  # may raise (unsupported family / block type): nothing written yet
    refused = secure_dir(root)
    if refused is not None:
        from ferrum_core.errors import ModelLoadError

        raise ModelLoadError(f"cannot cache the built ONNX model: {refused}")
    remove_stale_temps(root)
    tmp = make_temp_dir(root, key)
    try:
        import onnx

        onnx.save_model(proto, str(tmp / MODEL_FILE), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
        for name in (MODEL_FILE, DATA_FILE):
            (tmp / name).chmod(0o644)
        record = {"sha256": {n: file_sha256(tmp / n) for n in (MODEL_FILE, DATA_FILE)},
                  "key": key, "version": CACHE_VERSION}
        write_private_file(tmp / RECORD_FILE, json.dumps(record).encode())
        tmp.chmod(0o755)
        if cached.directory.exists() or cached.directory.is_symlink():
            old = make_temp_dir(root, key)
            with contextlib.suppress(FileNotFoundError):
                os.replace(cached.directory, old / "stale")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, cached.directory)
        except OSError:  # another process put its build in place first: use it if sound
            if cached.problem() is not None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cached, True
