"""`ferrum --version`, `list-backends`, `info`: output, JSON schema, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ferrum_core.backends import reset_registry
from ferrum_core.cli.main import cli
from tests.plugin_factory import PluginFactory

PLUGIN_KEYS = {"entry_point", "distribution", "version", "state", "reason"}
BACKEND_KEYS = {"name", "plugin", "distribution", "version", "state", "reason", "priority",
                "selected"}


@pytest.fixture(autouse=True)
def _fresh_registry():  # type: ignore[no-untyped-def]
    reset_registry()
    yield
    reset_registry()


def run(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.output.startswith("ferrum, version ")


def test_list_backends_json_schema_with_several_plugins(plugin_factory: PluginFactory) -> None:
    a = plugin_factory.backend("a-dist", [("alpha", 30, True), ("gamma", 5, False)])
    b = plugin_factory.backend("b-dist", [("beta", 20, True)])
    broken = plugin_factory.make("broken-dist", "import not_there_at_all_q\n")
    result = run("list-backends", "--json", env={"FERRUM_PLUGINS": f"{a},{b},{broken}"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"ferrum_version", "api_version", "plugins", "backends"}
    assert data["api_version"] == 1
    assert all(set(p) == PLUGIN_KEYS for p in data["plugins"])
    assert all(set(b) == BACKEND_KEYS for b in data["backends"])
    by_name = {b["name"]: b for b in data["backends"]}
    assert by_name["alpha"]["selected"] is True and by_name["beta"]["selected"] is False
    assert by_name["gamma"]["state"] == "unavailable"
    assert by_name["beta"]["distribution"] == "b-dist" and by_name["beta"]["plugin"] == b
    states = {p["entry_point"]: p["state"] for p in data["plugins"]}
    assert states[broken] == "failed" and states[a] == "loaded"
    assert states.get("cuda", "disabled") == "disabled"  # installed but filtered out


def test_list_backends_zero_plugins_and_table() -> None:
    result = run("list-backends", "--json", env={"FERRUM_PLUGINS": "none-such"})
    assert json.loads(result.output)["backends"] == []
    table = run("list-backends", env={"FERRUM_PLUGINS": "none-such"})
    assert table.exit_code == 0 and "no backends registered" in table.output


def test_list_backends_table_marks_selected_and_broken(plugin_factory: PluginFactory) -> None:
    a = plugin_factory.backend("a-dist", [("alpha", 30, True)])
    broken = plugin_factory.make("broken-dist", "raise RuntimeError('kaput')\n")
    result = run("list-backends", env={"FERRUM_PLUGINS": f"{a},{broken}"})
    assert result.exit_code == 0
    line = next(x for x in result.output.splitlines() if "alpha" in x)
    assert line.startswith("*")
    assert "kaput" in result.output and "failed" in result.output


def test_strict_mode_in_cli_is_one_line_exit_1(plugin_factory: PluginFactory) -> None:
    broken = plugin_factory.make("broken-dist", "raise RuntimeError('kaput')\n")
    env = {"FERRUM_PLUGINS": broken, "FERRUM_STRICT_PLUGINS": "1"}
    result = CliRunner().invoke(cli, ["list-backends"], env=env)
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "kaput" in result.output
    assert "Traceback" not in result.output


def test_info_json_and_unknown_backend(plugin_factory: PluginFactory) -> None:
    body = """
    from ferrum_core.backends import ProbeResult
    from ferrum_core.hookspecs import hookimpl
    from ferrum_core.protocol import AttentionType, ExecutorCapabilities, MemoryRequirements
    from ferrum_core.types import DataType
    FERRUM_API_VERSION = 1
    CAPS = ExecutorCapabilities(
        max_batch_size=4, max_sequence_length=128,
        attention_mechanisms=(AttentionType.GROUPED_QUERY,),
        supports_dynamic_batching=True, supports_continuous_batching=False,
        supports_speculative_decoding=False, supported_dtypes=(DataType.FP32,),
        supported_devices=("cpu",),
        memory_requirements=MemoryRequirements(parameter_memory=0,
            activation_memory_per_token=0, kv_cache_memory_per_token=0, overhead_memory=0))

    @hookimpl
    def ferrum_register_backends(register):
        register("capsy", factory=lambda: None, probe=lambda: ProbeResult(True, "ok"),
                 priority=3, capabilities=CAPS, description="test backend")
    """
    ep = plugin_factory.make("capsy-dist", body, declares=["capsy"])
    env = {"FERRUM_PLUGINS": ep}
    result = run("info", "capsy", "--json", env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["capabilities"]["max_batch_size"] == 4
    assert data["capabilities"]["supported_dtypes"] == ["fp32"]
    assert data["state"] == "available" and data["distribution"] == "capsy-dist"
    assert "max_batch_size: 4" in run("info", "capsy", env=env).output
    reset_registry()
    missing = CliRunner().invoke(cli, ["info", "nope"], env=env)
    assert missing.exit_code == 1
    assert "unknown backend 'nope'" in missing.output and "Traceback" not in missing.output


def test_info_prints_registered_details(plugin_factory: PluginFactory) -> None:
    body = """
    from ferrum_core.plugin import ProbeResult, hookimpl
    FERRUM_API_VERSION = 1

    def _details():
        return {"isa": "avx2", "build_cached": False, "flags": ["-O3"]}

    def _broken():
        raise RuntimeError("no compiler here")

    @hookimpl
    def ferrum_register_backends(register):
        ok = lambda: ProbeResult(True, "ok")
        register("facty", factory=lambda: None, probe=ok, priority=3, details=_details)
        register("brokeny", factory=lambda: None, probe=ok, priority=2, details=_broken)
        register("plainy", factory=lambda: None, probe=ok, priority=1)
    """
    ep = plugin_factory.make("facty-dist", body, declares=["facty", "brokeny", "plainy"])
    env = {"FERRUM_PLUGINS": ep}
    data = json.loads(run("info", "facty", "--json", env=env).output)
    assert data["details"] == {"isa": "avx2", "build_cached": False, "flags": ["-O3"]}
    assert "  isa: avx2" in run("info", "facty", env=env).output
    broken = run("info", "brokeny", "--json", env=env)
    assert broken.exit_code == 0
    error = json.loads(broken.output)["details"]["error"]
    assert "brokeny" in error and "RuntimeError: no compiler here" in error
    assert json.loads(run("info", "plainy", "--json", env=env).output)["details"] is None


def test_register_rejects_a_details_that_is_not_callable(plugin_factory: PluginFactory) -> None:
    body = """
    from ferrum_core.plugin import ProbeResult, hookimpl
    FERRUM_API_VERSION = 1

    @hookimpl
    def ferrum_register_backends(register):
        register("bad", factory=lambda: None, probe=lambda: ProbeResult(True, "ok"),
                 priority=3, details={"isa": "avx2"})
    """
    ep = plugin_factory.make("bad-dist", body, declares=["bad"])
    data = json.loads(run("list-backends", "--json", env={"FERRUM_PLUGINS": ep}).output)
    plugin = next(p for p in data["plugins"] if p["entry_point"] == ep)
    assert plugin["state"] == "failed" and "details" in plugin["reason"]


def test_usage_error_exits_2() -> None:
    assert CliRunner().invoke(cli, ["info"]).exit_code == 2
    assert CliRunner().invoke(cli, ["no-such-command"]).exit_code == 2


def test_list_backends_imports_no_array_library() -> None:
    code = (
        "import sys\n"
        "from ferrum_core.cli.main import main\n"
        "try:\n"
        "    main(['list-backends', '--json'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'mlx', 'onnxruntime', 'onnx', 'transformers',\n"
        "               'numpy') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    heavy = proc.stderr.strip().splitlines()[-1]
    assert heavy.startswith("HEAVY=")
    assert not {"torch", "mlx", "onnxruntime", "onnx", "transformers"} & set(
        heavy[len("HEAVY="):].split(",")
    ), heavy


def test_duplicate_name_in_table_info_and_notes(plugin_factory: PluginFactory) -> None:
    a = plugin_factory.backend("alpha-dist", [("same", 10, True)])
    b = plugin_factory.backend("beta-dist", [("same", 20, True)])
    old = plugin_factory.backend("old-dist", [("old", 1, True)], declares=[])
    env = {"FERRUM_PLUGINS": f"{a},{b},{old}"}
    table = run("list-backends", env=env)
    assert table.exit_code == 0
    rows = [x for x in table.output.splitlines() if x.split()[:1] == ["same"]]
    assert len(rows) == 2 and all("duplicate" in x and "beta-dist" in x for x in rows)
    assert "'old', which old-dist does not declare" in table.output
    reset_registry()
    info = CliRunner().invoke(cli, ["info", "same"], env=env)
    assert info.exit_code == 1 and "alpha-dist" in info.output and "beta-dist" in info.output
    assert "Traceback" not in info.output
