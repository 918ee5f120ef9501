"""Fixtures of the ferrum-cuda tests: tiny models per family, built once per session."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from torch_tiny import TinyModel, make_tiny

_CACHE: dict[str, TinyModel] = {}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], TinyModel]:
    """``tiny(family)`` -> a cached tiny model of that family."""

    def get(family: str) -> TinyModel:
        if family not in _CACHE:
            _CACHE[family] = make_tiny(family, tmp_path_factory.mktemp(family))
        return _CACHE[family]

    return get
