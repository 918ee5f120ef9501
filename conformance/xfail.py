"""Per-backend xfail files: known gaps, each with its reason.

Format (TOML)::

    [xfail]
    "numerics.decode_logits[qwen3_qknorm]" = "qk-norm not implemented yet"
    "capabilities.dtype[bf16]" = "bf16 matmuls are emulated and too slow"

A key is a check id, a check id without its ``[...]`` part (every variant), or
an ``fnmatch`` pattern such as ``"unified.*"``.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ferrum_core.conformance import XFAIL_DIR

from ferrum_core.errors import ConfigError

__all__ = ["XfailTable", "default_xfail_path", "load_xfail"]


@dataclass
class XfailTable:
    entries: dict[str, str] = field(default_factory=dict)
    source: Path | None = None
    used: set[str] = field(default_factory=set)

    def reason_for(self, check_id: str) -> str | None:
        base = check_id.split("[", 1)[0]
        for key, reason in self.entries.items():
            if key in (check_id, base) or fnmatch.fnmatchcase(check_id, key):
                self.used.add(key)
                return reason
        return None

    def unused(self) -> list[str]:
        return sorted(set(self.entries) - self.used)


def default_xfail_path(backend: str) -> Path:
    return XFAIL_DIR / f"{backend}.toml"


def load_xfail(path: Path | None, backend: str) -> XfailTable:
    """The table at ``path``, else the backend's default file, else an empty table."""
    if path is None:
        path = default_xfail_path(backend)
        if not path.is_file():
            return XfailTable()
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read xfail file {path}: {exc}") from exc
    table = data.get("xfail", {})
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in table.items()
    ):
        raise ConfigError(f"{path}: [xfail] must map check ids to non-empty reason strings")
    return XfailTable(entries=dict(table), source=Path(path))
