"""Plugin discovery, fault isolation, strict mode, FERRUM_PLUGINS and selection."""

from __future__ import annotations

import pytest

from ferrum_core.backends import BackendState
from ferrum_core.errors import (
    BackendSelectionError,
    BackendUnavailableError,
    PluginError,
    RegistryError,
    UnknownBackendError,
)
from ferrum_core.plugins import PluginState, discover, strict_mode
from tests.plugin_factory import PluginFactory


def only(*names: str) -> dict[str, str]:
    return {"FERRUM_PLUGINS": ",".join(names)}


def plugin(found, ep):  # type: ignore[no-untyped-def]
    return next(p for p in found.plugins if p.entry_point == ep)


def backend(found, name, state=None):  # type: ignore[no-untyped-def]
    return next(
        r for r in found.registry.records if r.name == name and (state is None or r.state == state)
    )


def test_good_plugin_registers_backends_with_distribution(plugin_factory: PluginFactory) -> None:
    ep = plugin_factory.backend("acme-fast", [("acme", 40, True), ("acme-lite", 5, False)])
    found = discover(only(ep))
    rec = plugin(found, ep)
    assert (rec.state, rec.distribution, rec.version) == (PluginState.LOADED, "acme-fast", "1.0")
    found.registry.probe_all()
    acme = backend(found, "acme")
    assert acme.state == BackendState.AVAILABLE and acme.descriptor.distribution == "acme-fast"
    lite = backend(found, "acme-lite")
    assert lite.state == BackendState.UNAVAILABLE and lite.reason == "probe says so"


def test_zero_plugins(plugin_factory: PluginFactory) -> None:
    found = discover(only("nothing-matches"))
    assert found.registry.records == []
    assert all(p.state == PluginState.DISABLED for p in found.plugins)
    with pytest.raises(BackendUnavailableError, match="no backend is available"):
        found.registry.select(None, {})


def test_import_error_is_reported_and_others_still_load(plugin_factory: PluginFactory) -> None:
    bad = plugin_factory.make("broken-dist", "import definitely_not_a_module_xyz\n")
    good = plugin_factory.backend("fine-dist", [("fine", 1, True)])
    found = discover(only(bad, good))
    rec = plugin(found, bad)
    assert rec.state == PluginState.FAILED
    assert "ModuleNotFoundError" in rec.reason and "definitely_not_a_module_xyz" in rec.reason
    assert "\n" not in rec.reason
    assert plugin(found, good).state == PluginState.LOADED
    assert found.registry.select(None, {}).name == "fine"


def test_raising_hook_is_reported_and_its_partial_registrations_dropped(
    plugin_factory: PluginFactory,
) -> None:
    body = """
    from ferrum_core.backends import ProbeResult
    from ferrum_core.hookspecs import hookimpl
    FERRUM_API_VERSION = 1

    @hookimpl
    def ferrum_register_backends(register):
        register("half", factory=lambda: None, probe=lambda: ProbeResult(True), priority=1)
        raise ValueError("hook blew up\\nsecond line")
    """
    bad = plugin_factory.make("raising-dist", body, declares=["half"])
    good = plugin_factory.backend("ok-dist", [("ok", 1, True)])
    found = discover(only(bad, good))
    rec = plugin(found, bad)
    assert rec.state == PluginState.FAILED and rec.reason == "ValueError: hook blew up second line"
    assert [r.name for r in found.registry.records] == ["ok"]


@pytest.mark.parametrize("where", ["module", "register"])
def test_api_version_mismatch_is_incompatible(plugin_factory: PluginFactory, where: str) -> None:
    if where == "module":
        ep = plugin_factory.backend("future-dist", [("future", 1, True)], api=2)
    else:
        body = """
        from ferrum_core.backends import ProbeResult
        from ferrum_core.hookspecs import hookimpl
        FERRUM_API_VERSION = 1

        @hookimpl
        def ferrum_register_backends(register):
            register("future", factory=lambda: None, probe=lambda: ProbeResult(True),
                     priority=1, api_version=7)
        """
        ep = plugin_factory.make("future-dist", body, declares=["future"])
    found = discover(only(ep))
    rec = plugin(found, ep)
    assert rec.state == PluginState.INCOMPATIBLE
    assert "version" in rec.reason
    assert found.registry.records == []


def test_duplicate_backend_names_both_distributions(plugin_factory: PluginFactory) -> None:
    first = plugin_factory.backend("alpha-dist", [("same", 10, True)], entry_point="a_first")
    second = plugin_factory.backend("beta-dist", [("same", 20, True)], entry_point="b_second")
    found = discover(only(first, second))
    same = [r for r in found.registry.records if r.name == "same"]
    assert [r.state for r in same] == [BackendState.DUPLICATE] * 2  # neither wins silently
    assert all("alpha-dist" in r.reason and "beta-dist" in r.reason for r in same)
    with pytest.raises(RegistryError, match=r"alpha-dist .*beta-dist"):
        found.registry.get("same")
    with pytest.raises(BackendUnavailableError, match="no backend is available"):
        found.registry.select(None, {})


def test_strict_mode_turns_faults_into_errors(plugin_factory: PluginFactory) -> None:
    bad = plugin_factory.make("broken-dist", "raise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match="boom"):
        discover({**only(bad), "FERRUM_STRICT_PLUGINS": "1"})
    first = plugin_factory.backend("alpha-dist", [("same", 10, True)], entry_point="a1")
    second = plugin_factory.backend("beta-dist", [("same", 20, True)], entry_point="b1")
    with pytest.raises(PluginError, match="alpha-dist"):
        discover({**only(first, second), "FERRUM_STRICT_PLUGINS": "yes"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), ("On", True), ("0", False), ("", False),
     ("no", False)],
)
def test_strict_mode_values(value: str, expected: bool) -> None:
    assert strict_mode({"FERRUM_STRICT_PLUGINS": value}) is expected


def test_ferrum_plugins_limits_loading(plugin_factory: PluginFactory) -> None:
    a = plugin_factory.backend("a-dist", [("a", 1, True)])
    b = plugin_factory.backend("b-dist", [("b", 2, True)])
    found = discover(only(a))
    assert plugin(found, b).state == PluginState.DISABLED
    assert "FERRUM_PLUGINS" in plugin(found, b).reason
    assert [r.name for r in found.registry.records] == ["a"]


def test_selection_order(plugin_factory: PluginFactory) -> None:
    ep = plugin_factory.backend(
        "sel-dist", [("high", 50, True), ("low", 10, True), ("off", 99, False)]
    )
    reg = discover(only(ep)).registry
    assert reg.select(None, {}).name == "high"  # priority among available
    assert reg.select(None, {"FERRUM_BACKEND": "low"}).name == "low"  # env beats priority
    assert reg.select("high", {"FERRUM_BACKEND": "low"}).name == "high"  # explicit beats env
    with pytest.raises(BackendUnavailableError, match="probe says so"):
        reg.select("off", {})
    with pytest.raises(UnknownBackendError, match="nope"):
        reg.select("nope", {})


def test_tie_at_top_priority_is_an_error_naming_both(plugin_factory: PluginFactory) -> None:
    ep = plugin_factory.backend(
        "tie-dist", [("left", 30, True), ("right", 30, True), ("x", 1, True)]
    )
    reg = discover(only(ep)).registry
    with pytest.raises(BackendSelectionError, match="left and right"):
        reg.select(None, {})
    assert reg.select("x", {}).name == "x"
    assert reg.mark_selected({}) is None


def test_probe_priority_override_and_raising_probe(plugin_factory: PluginFactory) -> None:
    body = """
    from ferrum_core.backends import ProbeResult
    from ferrum_core.hookspecs import hookimpl
    FERRUM_API_VERSION = 1

    def bad_probe():
        raise OSError("driver missing")

    @hookimpl
    def ferrum_register_backends(register):
        register("dyn", factory=lambda: None, priority=15,
                 probe=lambda: ProbeResult(True, "metal", priority=80))
        register("flaky", factory=lambda: None, priority=90, probe=bad_probe)
    """
    ep = plugin_factory.make("dyn-dist", body, declares=["dyn", "flaky"])
    reg = discover(only(ep)).registry
    reg.probe_all()
    assert reg.get("dyn").priority == 80
    flaky = reg.get("flaky")
    assert flaky.state == BackendState.UNAVAILABLE and "driver missing" in flaky.reason
    assert reg.select(None, {}).name == "dyn"


def test_same_entry_point_name_in_two_distributions(plugin_factory: PluginFactory) -> None:
    plugin_factory.backend("alpha-dist", [("same", 10, True)], entry_point="samename")
    plugin_factory.backend("beta-dist", [("same", 20, True)], entry_point="samename")
    found = discover(only("samename"))
    assert [p.state for p in found.plugins if p.entry_point == "samename"] == [
        PluginState.LOADED, PluginState.LOADED
    ]
    dup = backend(found, "same", BackendState.DUPLICATE)
    assert "alpha-dist" in dup.reason and "beta-dist" in dup.reason


def test_entry_point_naming_an_object_and_a_misspelled_hook(plugin_factory: PluginFactory) -> None:
    body = """
    from ferrum_core.backends import ProbeResult
    from ferrum_core.hookspecs import hookimpl
    FERRUM_API_VERSION = 1

    class Plugin:
        @hookimpl
        def ferrum_register_backends(self, register):
            register("objy", factory=lambda: None, probe=lambda: ProbeResult(True), priority=1)

    PLUGIN = Plugin()
    """
    ep = plugin_factory.make("obj-dist", body, declares=["objy"])
    dist_info = next(plugin_factory.root.glob("obj_dist-*.dist-info"))
    first, rest = (dist_info / "entry_points.txt").read_text().split("\n", 2)[1:]
    (dist_info / "entry_points.txt").write_text(f"[ferrum]\n{first}:PLUGIN\n{rest}")
    typo = plugin_factory.make("typo-dist", """
    from ferrum_core.hookspecs import hookimpl
    FERRUM_API_VERSION = 1

    @hookimpl
    def ferrum_register_backend(register):
        pass
    """)
    empty = plugin_factory.backend("empty-dist", [])
    found = discover(only(ep, typo, empty))
    assert plugin(found, ep).state == PluginState.LOADED
    assert [r.name for r in found.registry.records] == ["objy"]
    assert plugin(found, typo).state == PluginState.FAILED
    assert "ferrum_register_backend" in plugin(found, typo).reason
    assert plugin(found, empty).reason == "registered no backends"
