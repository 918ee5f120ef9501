"""The pytest plugin (entry point ``pytest11: ferrum_conformance``).

It is loaded by every pytest run in an environment with ferrum-core installed,
so it does nothing unless ``--ferrum-backend NAME`` is given: only then are the
checks in :mod:`ferrum_core.conformance.checks` collected, their fixtures registered, the
xfail file applied and the report written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from ferrum_core.conformance import CHECKS_DIR
from ferrum_core.conformance.options import (
    DTYPE_CHOICES,
    kv_tolerance,
    parse_option,
    parse_options,
    preflight,
    run_dtype,
)
from ferrum_core.conformance.oracle import set_tolerance_floor
from ferrum_core.conformance.report import ConformanceReport, Outcomes, check_id
from ferrum_core.conformance.xfail import XfailTable, load_xfail

from ferrum_core.errors import FerrumError
from ferrum_core.types import DataType

__all__ = ["ConformanceSession", "configured_dtype", "requested_dtype", "requested_options"]


def _option_arg(text: str) -> str:
    try:
        parse_option(text)
    except FerrumError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ferrum", "Ferrum conformance suite")
    group.addoption(
        "--ferrum-backend",
        metavar="NAME",
        default=None,
        help="run the Ferrum conformance suite against this backend",
    )
    group.addoption(
        "--ferrum-model",
        metavar="DIR",
        default=None,
        help="model directory for the behavioural checks (default: a golden model)",
    )
    group.addoption(
        "--ferrum-xfail",
        metavar="FILE",
        default=None,
        help="xfail file of known gaps (default: conformance/xfail/NAME.toml)",
    )
    group.addoption(
        "--ferrum-json", metavar="FILE", default=None, help="write the JSON report to FILE"
    )
    group.addoption(
        "--ferrum-dtype",
        metavar="DTYPE",
        default=None,
        choices=DTYPE_CHOICES,
        help="dtype of every executor the suite builds (default: fp32 where declared); "
        "int8/int4 compare numerics with the GGUF goldens",
    )
    group.addoption(
        "--ferrum-option",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        type=_option_arg,
        help="executor option for every executor the suite builds (repeatable; "
        "the value is parsed as JSON when it parses)",
    )


def requested_dtype(config: pytest.Config) -> DataType | None:
    value = config.getoption("ferrum_dtype", None)
    return DataType(value) if value else None


def configured_dtype(config: pytest.Config) -> DataType:
    """The dtype of the run: ``--ferrum-dtype``, else fp32 where the backend declares it."""
    from ferrum_core.backends import get_backend

    try:
        caps = get_backend(str(config.getoption("ferrum_backend"))).capabilities
    except FerrumError:
        caps = None
    return run_dtype(requested_dtype(config), caps)


def requested_options(config: pytest.Config) -> dict[str, Any]:
    try:
        return parse_options(config.getoption("ferrum_option", None) or [])
    except FerrumError as exc:
        raise pytest.UsageError(str(exc)) from None


def _active(config: pytest.Config) -> bool:
    return bool(config.getoption("ferrum_backend", None))


def _in_checks(path: Path) -> bool:
    return path == CHECKS_DIR or CHECKS_DIR in path.parents


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # Without a backend the checks have nothing to run against: never collect them.
    if not _active(config) and _in_checks(collection_path.resolve()):
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    if not _active(config):
        return
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        # `pytest --ferrum-backend NAME` alone means "the suite", not the project's testpaths.
        config.args = [str(CHECKS_DIR)]
    # Import the checks by file, without putting their folder's parent on sys.path: in a
    # source checkout that parent holds the folder `conformance/`, which must not become a
    # second, top-level copy of ferrum_core.conformance.
    config.option.importmode = "importlib"
    from ferrum_core.conformance import fixtures

    try:
        preflight(str(config.getoption("ferrum_backend")), requested_dtype(config),
                  requested_options(config))
    except FerrumError as exc:
        raise pytest.UsageError(str(exc)) from None
    set_tolerance_floor(kv_tolerance(requested_options(config)))
    if not config.pluginmanager.is_registered(fixtures):
        config.pluginmanager.register(fixtures, "ferrum_conformance_fixtures")
    config.pluginmanager.register(ConformanceSession(config), "ferrum_conformance_session")


class ConformanceSession:
    """Per-run state: the xfail table, per-check outcomes, the report."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.backend = str(config.getoption("ferrum_backend"))
        self.options = requested_options(config)
        xfail_path = config.getoption("ferrum_xfail")
        self.xfail: XfailTable = load_xfail(Path(xfail_path) if xfail_path else None, self.backend)
        self.outcomes = Outcomes()
        self.ids: dict[str, str] = {}  # nodeid -> check id
        self.report: ConformanceReport | None = None

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            cid = check_id(item)
            self.ids[item.nodeid] = cid
            reason = self.xfail.reason_for(cid)
            if reason is not None:
                item.add_marker(pytest.mark.xfail(reason=reason, strict=False))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        cid = self.ids.get(report.nodeid)
        if cid is not None:
            self.outcomes.add(cid, report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from ferrum_core.version import __version__

        self.report = ConformanceReport.build(
            self.backend, __version__, self.outcomes.ordered(),
            dtype=configured_dtype(self.config), executor_options=self.options,
        )
        target = self.config.getoption("ferrum_json")
        if target:
            Path(target).write_text(self.report.model_dump_json(indent=2) + "\n")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.report is None:
            return
        s = self.report.summary
        terminalreporter.section(f"ferrum conformance: backend {self.backend}")
        terminalreporter.write_line(self.report.settings_line())
        terminalreporter.write_line(
            f"{s.passed} passed, {s.failed} failed, {s.skipped} skipped, {s.xfailed} xfailed"
        )
        for check in self.report.checks:
            if check.outcome == "failed":
                terminalreporter.write_line(f"FAILED {check.id}: {check.reason}")
        for key in self.xfail.unused():
            terminalreporter.write_line(f"xfail entry {key!r} matches no check")
