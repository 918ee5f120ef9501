"""The ferrum-mlx tests reuse the core's tiny-model builders (``tests.tiny_models``,
``tests.models.gguf_builder``): put the repository root on the import path."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
