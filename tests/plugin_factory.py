"""Throwaway plugins: a module plus a `*.dist-info` with `entry_points.txt` on sys.path.

To `importlib.metadata` that is a real installed distribution, so discovery
runs exactly as it does for `pip install`ed plugins. ``declares`` writes the
``[ferrum.backends]`` section: the backend names the distribution may register.
"""

from __future__ import annotations

import itertools
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

_counter = itertools.count()

GOOD_BODY = """
from ferrum_core.backends import ProbeResult
from ferrum_core.hookspecs import hookimpl

FERRUM_API_VERSION = {api}


def _factory():
    raise RuntimeError("factory not used in this test")


@hookimpl
def ferrum_register_backends(register):
{registrations}
"""


@dataclass
class PluginFactory:
    root: Path
    monkeypatch: pytest.MonkeyPatch

    def make(
        self,
        dist: str,
        body: str,
        *,
        entry_point: str | None = None,
        version: str = "1.0",
        declares: list[str] | None = None,
    ) -> str:
        """Write a distribution whose entry point loads ``body``; return the entry-point name.

        ``declares=None`` writes no ``[ferrum.backends]`` section (a legacy plugin).
        """
        n = next(_counter)
        module = f"ferrum_testplug_{n}"
        ep_name = entry_point or f"plug{n}"
        (self.root / f"{module}.py").write_text(textwrap.dedent(body))
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        )
        text = f"[ferrum]\n{ep_name} = {module}\n"
        if declares is not None:
            text += "\n[ferrum.backends]\n" + "".join(f"{n} = {module}\n" for n in declares)
        (info / "entry_points.txt").write_text(text)
        return ep_name

    def backend(
        self,
        dist: str,
        backends: list[tuple[str, int, bool]],
        *,
        api: int = 1,
        entry_point: str | None = None,
        reason: str = "probe says so",
        declares: list[str] | None = None,
    ) -> str:
        """A well-formed plugin registering ``(name, priority, available)`` backends.

        It declares the names it registers unless ``declares`` says otherwise.
        """
        lines = [
            f"    register({name!r}, factory=_factory, priority={prio},"
            f" probe=lambda: ProbeResult({avail}, {reason!r}))"
            for name, prio, avail in backends
        ] or ["    pass"]
        body = GOOD_BODY.format(api=api, registrations="\n".join(lines))
        names = [name for name, _, _ in backends] if declares is None else declares
        return self.make(dist, body, entry_point=entry_point, declares=names)


@pytest.fixture
def plugin_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PluginFactory:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("FERRUM_BACKEND", raising=False)
    monkeypatch.delenv("FERRUM_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("FERRUM_PLUGINS", raising=False)
    yield PluginFactory(root, monkeypatch)
    for name in [m for m in sys.modules if m.startswith("ferrum_testplug_")]:
        del sys.modules[name]
