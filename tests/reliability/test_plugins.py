"""Plugins must not take the host down: probes, registrations, factories, names.

Each test builds throwaway distributions (tests/plugin_factory.py) and runs
discovery, selection or the CLI exactly as an installed plugin would.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from ferrum_core import probing as probing_module
from ferrum_core.backends import BackendState, create_executor, reset_registry
from ferrum_core.cli.main import cli
from ferrum_core.errors import (
    BackendUnavailableError,
    PluginError,
    RegistryError,
)
from ferrum_core.plugins import PluginState, discover
from ferrum_core.protocol.config import ExecutorConfig
from tests.plugin_factory import PluginFactory

HEADER = """
import sys
import threading
from ferrum_core.backends import ProbeResult
from ferrum_core.hookspecs import hookimpl
FERRUM_API_VERSION = 1
RELEASE = threading.Event()
"""


def only(*names: str) -> dict[str, str]:
    return {"FERRUM_PLUGINS": ",".join(names)}


def hook(*registrations: str, prelude: str = "") -> str:
    lines = "\n".join(f"    {r}" for r in registrations)
    return f"{HEADER}{prelude}\n@hookimpl\ndef ferrum_register_backends(register):\n{lines}\n"


def probing(dist: str, factory: PluginFactory, name: str, probe: str, prio: int = 20) -> str:
    """A plugin registering ``name`` with the probe expression ``probe``."""
    return factory.make(
        dist,
        hook(f"register({name!r}, factory=lambda: None, priority={prio}, probe={probe})"),
        declares=[name],
    )


def cli_json(env: dict[str, str]) -> dict[str, dict[str, object]]:
    result = CliRunner().invoke(cli, ["list-backends", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    return {b["name"]: b for b in data["backends"]} | {
        f"plugin:{p['entry_point']}": p for p in data["plugins"]
    }


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def release_hung_probes() -> Iterator[None]:
    """Let probes blocked on their module's ``RELEASE`` event finish after the test."""
    yield
    for name, module in list(sys.modules.items()):
        if name.startswith("ferrum_testplug_") and hasattr(module, "RELEASE"):
            module.RELEASE.set()


# -- 1. probes are guarded, parallel and time-limited ---------------------------------


@pytest.mark.parametrize(
    ("probe", "says"),
    [
        ("lambda: True", "bool"),
        ("lambda: None", "NoneType"),
        ("lambda: ProbeResult('yes')", "available"),
        ("lambda: ProbeResult(True, priority=1000)", "priority"),
        ("lambda: ProbeResult(True, 42)", "reason"),
    ],
)
def test_lying_probe_makes_its_backend_unavailable(
    plugin_factory: PluginFactory, probe: str, says: str
) -> None:
    liar = probing("liar-dist", plugin_factory, "liar", probe, prio=90)
    good = plugin_factory.backend("good-dist", [("good", 10, True)])
    out = cli_json(only(liar, good))
    assert out["liar"]["state"] == "unavailable"
    assert "ProbeResult" in str(out["liar"]["reason"]) and says in str(out["liar"]["reason"])
    assert out["good"]["selected"] is True
    reset_registry()
    assert discover(only(liar, good)).registry.select(None, {}).name == "good"


def test_probe_calling_sys_exit_does_not_end_the_host(plugin_factory: PluginFactory) -> None:
    quitter = probing("quit-dist", plugin_factory, "quitter", "lambda: sys.exit(3)", prio=90)
    good = plugin_factory.backend("good-dist", [("good", 10, True)])
    out = cli_json(only(quitter, good))
    assert out["quitter"]["state"] == "unavailable"
    assert "SystemExit" in str(out["quitter"]["reason"])
    registry = discover(only(quitter, good)).registry
    assert registry.select(None, {}).name == "good"
    with pytest.raises(BackendUnavailableError, match="SystemExit"):
        registry.select("quitter", {})


@pytest.mark.usefixtures("release_hung_probes")
def test_hanging_probe_times_out(
    plugin_factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probing_module, "PROBE_TIMEOUT_S", 0.2)
    hung = probing("hung-dist", plugin_factory, "hung", "lambda: RELEASE.wait()", prio=90)
    good = plugin_factory.backend("good-dist", [("good", 10, True)])
    out = cli_json(only(hung, good))
    assert out["hung"]["state"] == "unavailable"
    assert "did not answer within 0.2 s" in str(out["hung"]["reason"])
    assert out["good"]["selected"] is True
    registry = discover(only(hung, good)).registry
    with pytest.raises(BackendUnavailableError, match="did not answer"):
        registry.select("hung", {})
    assert registry.select(None, {}).name == "good"


def test_probes_run_in_parallel(
    plugin_factory: PluginFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each probe waits for the other: run one after the other, both break the barrier.
    monkeypatch.setattr(probing_module, "PROBE_TIMEOUT_S", 120.0)
    prelude = "BARRIER = threading.Barrier(2, timeout=10)\n" \
        "def meet():\n    BARRIER.wait()\n    return ProbeResult(True, 'met')\n"
    body = hook(
        "register('left', factory=lambda: None, priority=5, probe=meet)",
        "register('right', factory=lambda: None, priority=6, probe=meet)",
        prelude=prelude,
    )
    ep = plugin_factory.make("pair-dist", body, declares=["left", "right"])
    registry = discover(only(ep)).registry
    registry.probe_all()
    assert [(r.name, r.state, r.reason) for r in registry.records] == [
        ("left", BackendState.AVAILABLE, "met"), ("right", BackendState.AVAILABLE, "met")
    ]


def test_keyboard_interrupt_in_a_probe_still_interrupts(plugin_factory: PluginFactory) -> None:
    prelude = "def stop():\n    raise KeyboardInterrupt\n"
    body = hook("register('ki', factory=lambda: None, priority=5, probe=stop)", prelude=prelude)
    ep = plugin_factory.make("ki-dist", body, declares=["ki"])
    with pytest.raises(KeyboardInterrupt):
        discover(only(ep)).registry.probe_all()


def test_strict_mode_makes_a_faulty_probe_an_error(plugin_factory: PluginFactory) -> None:
    liar = probing("liar-dist", plugin_factory, "liar", "lambda: True")
    registry = discover({**only(liar), "FERRUM_STRICT_PLUGINS": "1"}).registry
    with pytest.raises(PluginError, match="liar-dist"):
        registry.probe_all()
    result = CliRunner().invoke(
        cli, ["list-backends"], env={**only(liar), "FERRUM_STRICT_PLUGINS": "1"}
    )
    assert result.exit_code == 1 and "ProbeResult" in result.output
    assert "Traceback" not in result.output


# -- 2. registrations are validated; factories are checked when used ------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ("'fast', factory=lambda: None, probe=lambda: None, priority=1, capabilities='gpu'",
         "capabilities"),
        ("'fast', factory=lambda: None, probe=lambda: None, priority=1000", "priority"),
        ("'fast', factory=lambda: None, probe=lambda: None, priority=-1", "priority"),
        ("'fast', factory=lambda: None, probe=lambda: None, priority=True", "priority"),
        ("'fast', factory=lambda: None, probe=lambda: None, priority='9'", "priority"),
        ("'Not A Name!', factory=lambda: None, probe=lambda: None, priority=1", "name"),
        ("'x' * 80, factory=lambda: None, probe=lambda: None, priority=1", "name"),
        ("'fast', factory='ferrum.Factory', probe=lambda: None, priority=1", "factory"),
        ("'fast', factory=lambda: None, probe=ProbeResult(True), priority=1", "probe"),
        ("'fast', factory=lambda: None, probe=lambda: None, priority=1, description=3",
         "description"),
    ],
)
def test_invalid_registration_fails_the_plugin(
    plugin_factory: PluginFactory, args: str, says: str
) -> None:
    bad = plugin_factory.make("bad-dist", hook(f"register({args})"), declares=["fast"])
    good = plugin_factory.backend("good-dist", [("good", 10, True)])
    found = discover(only(bad, good))
    rec = next(p for p in found.plugins if p.entry_point == bad)
    assert rec.state == PluginState.FAILED and says in rec.reason, rec.reason
    assert "\n" not in rec.reason
    assert [r.name for r in found.registry.records] == ["good"]
    with pytest.raises(PluginError, match="bad-dist"):
        discover({**only(bad, good), "FERRUM_STRICT_PLUGINS": "on"})


def test_hook_swallowing_the_rejection_still_fails(plugin_factory: PluginFactory) -> None:
    body = hook(
        "try:",
        "    register('fast', factory=lambda: None, probe=lambda: None, priority=1000)",
        "except Exception:",
        "    pass",
        "register('ok', factory=lambda: None, probe=lambda: ProbeResult(True), priority=1)",
    )
    ep = plugin_factory.make("sly-dist", body, declares=["fast", "ok"])
    found = discover(only(ep))
    rec = next(p for p in found.plugins if p.entry_point == ep)
    assert rec.state == PluginState.FAILED and "priority" in rec.reason
    assert found.registry.records == []


FACTORY_PRELUDE = """
from ferrum_core.protocol.config import ExecutorConfig

class NotAFactory:
    pass

class BadExecutorFactory:
    def validate_config(self, config):
        pass

    def create_executor(self, config):
        return "an executor, honest"

def broken_loader():
    import not_a_module_for_the_factory_q
"""


@pytest.mark.parametrize(
    ("factory", "says"),
    [
        ("NotAFactory", "create_executor"),
        ("lambda: None", "NoneType"),
        ("BadExecutorFactory", "ModelExecutor"),
        ("broken_loader", "not_a_module_for_the_factory_q"),
    ],
)
def test_bad_factory_is_a_plugin_error_naming_the_distribution(
    plugin_factory: PluginFactory, factory: str, says: str
) -> None:
    body = hook(
        f"register('lazy', factory={factory}, probe=lambda: ProbeResult(True), priority=1)",
        prelude=FACTORY_PRELUDE,
    )
    ep = plugin_factory.make("lazy-dist", body, declares=["lazy"])
    reset_registry(discover(only(ep)).registry)
    with pytest.raises(PluginError, match="lazy-dist") as caught:
        create_executor(ExecutorConfig(), "lazy")
    assert says in str(caught.value) and ep in str(caught.value)


# -- 3. who owns a backend name -------------------------------------------------------


def test_third_party_cannot_take_a_reserved_name(plugin_factory: PluginFactory) -> None:
    # "aaa" sorts before ferrum-cuda's entry point "cuda"; it used to win `torch`.
    evil = plugin_factory.backend("evil-torch", [("torch", 100, True)], entry_point="aaa")
    found = discover(only(evil, "cuda"))
    rec = next(p for p in found.plugins if p.entry_point == evil)
    assert rec.state == PluginState.FAILED
    assert "reserved" in rec.reason and "ferrum-cuda" in rec.reason
    assert found.registry.get("torch").descriptor.distribution == "ferrum-cuda"
    assert {r.descriptor.distribution for r in found.registry.records} == {"ferrum-cuda"}


def test_reserved_names_belong_to_their_distributions(plugin_factory: PluginFactory) -> None:
    mlx = plugin_factory.backend("ferrum-mlx", [("mlx", 80, True)])
    cpu = plugin_factory.backend("ferrum_cpu", [("cpu", 50, True)])  # normalised name
    wrong = plugin_factory.backend("ferrum-mlx-extras", [("cpu", 50, True)])
    found = discover(only(mlx, cpu, wrong))
    states = {p.entry_point: p.state for p in found.plugins}
    assert states[mlx] == states[cpu] == PluginState.LOADED
    assert states[wrong] == PluginState.FAILED
    assert found.registry.get("cpu").descriptor.distribution == "ferrum_cpu"


def test_undeclared_name_fails_the_plugin(plugin_factory: PluginFactory) -> None:
    ep = plugin_factory.backend("sneaky-dist", [("one", 1, True), ("two", 2, True)],
                                declares=["one"])
    found = discover(only(ep))
    rec = next(p for p in found.plugins if p.entry_point == ep)
    assert rec.state == PluginState.FAILED
    assert "'two'" in rec.reason and "ferrum.backends" in rec.reason
    assert found.registry.records == []


def test_clash_between_distributions_selects_neither(plugin_factory: PluginFactory) -> None:
    first = plugin_factory.backend("alpha-dist", [("same", 10, True)], entry_point="a_first")
    second = plugin_factory.backend("beta-dist", [("same", 20, True)], entry_point="b_second")
    other = plugin_factory.backend("other-dist", [("other", 1, True)])
    found = discover(only(first, second, other))
    same = [r for r in found.registry.records if r.name == "same"]
    assert [r.state for r in same] == [BackendState.DUPLICATE, BackendState.DUPLICATE]
    assert all("alpha-dist" in r.reason and "beta-dist" in r.reason for r in same)
    for pick in (lambda: found.registry.select("same", {}),
                 lambda: found.registry.select(None, {"FERRUM_BACKEND": "same"})):
        with pytest.raises(RegistryError, match=r"alpha-dist.*beta-dist"):
            pick()
    assert found.registry.select(None, {}).name == "other"
    out = cli_json(only(first, second, other))
    assert out["same"]["state"] == "duplicate" and out["other"]["selected"] is True
    with pytest.raises(PluginError, match=r"alpha-dist.*beta-dist"):
        discover({**only(first, second), "FERRUM_STRICT_PLUGINS": "1"})


def test_plugin_without_declarations_fails(plugin_factory: PluginFactory) -> None:
    ep = plugin_factory.backend("old-dist", [("old", 1, True)], declares=[])
    found = discover(only(ep))
    rec = next(p for p in found.plugins if p.entry_point == ep)
    assert rec.state == PluginState.FAILED and "ferrum.backends" in rec.reason
    assert "'old'" in rec.reason and "declare" in rec.reason
    assert not [r for r in found.registry.records if r.name == "old"]
    with pytest.raises(PluginError, match=r"ferrum\.backends"):
        discover({**only(ep), "FERRUM_STRICT_PLUGINS": "1"})


def test_legacy_plugin_cannot_take_a_declared_or_reserved_name(
    plugin_factory: PluginFactory,
) -> None:
    owner = plugin_factory.backend("owner-dist", [("owned", 5, True)])
    legacy_body = hook(
        "register('owned', factory=lambda: None, probe=lambda: ProbeResult(True), priority=9)"
    )
    legacy = plugin_factory.make("legacy-dist", legacy_body, entry_point="a_legacy")
    cuda = plugin_factory.make("legacy-cuda", legacy_body.replace("'owned'", "'cuda'"))
    found = discover(only(owner, legacy, cuda))
    states = {p.entry_point: (p.state, p.reason) for p in found.plugins}
    assert states[legacy][0] == PluginState.FAILED and "owner-dist" in states[legacy][1]
    assert states[cuda][0] == PluginState.FAILED and "reserved" in states[cuda][1]
    assert found.registry.select("owned", {}).descriptor.distribution == "owner-dist"


def test_in_tree_distributions_declare_their_backends() -> None:
    from importlib.metadata import entry_points

    declared = {(ep.name, ep.dist.name if ep.dist else "")
                for ep in entry_points(group="ferrum.backends")}
    assert {("cuda", "ferrum-cuda"), ("torch", "ferrum-cuda"),
            ("example", "ferrum-example-backend")} <= declared
