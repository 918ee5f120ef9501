"""Ferrum's shared conformance suite, installed as ``ferrum_core.conformance``.

The sources sit in the repository's top-level ``conformance/`` folder; the package
configuration maps that folder onto ``ferrum_core.conformance`` (pyproject.toml), so no
top-level ``conformance`` package lands in a user's environment. pytest is the extra
``ferrum-core[conformance]``.

Any backend, in-tree or third-party, proves itself with
``pytest --ferrum-backend NAME`` or ``ferrum conformance NAME``. The checks live in
:mod:`ferrum_core.conformance.checks` and are collected only when a backend is named; the
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
