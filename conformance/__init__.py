"""Ferrum's shared conformance suite.

Any backend, in-tree or third-party, proves itself with
``pytest --ferrum-backend NAME`` or ``ferrum conformance NAME``. The checks live in
:mod:`conformance.checks` and are collected only when a backend is named; the
oracle (tiny golden models and their expected logits) travels in ``golden/``.
This package imports neither torch nor transformers.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CHECKS_DIR", "GOLDEN_DIR", "XFAIL_DIR"]

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKS_DIR = PACKAGE_DIR / "checks"
GOLDEN_DIR = PACKAGE_DIR / "golden"
XFAIL_DIR = PACKAGE_DIR / "xfail"
