"""`ferrum conformance NAME`: run the shared conformance suite against one backend.

The suite is a pytest plugin shipped as ``ferrum_core.conformance`` (pytest comes with
the ``ferrum-core[conformance]`` extra); this
command runs pytest in-process over its checks and prints the report (a
summary table, or the JSON document with ``--json``). ``--dtype`` and
``--option key=value`` reach every executor the suite builds. Exit status 1
when any check fails or the settings are refused, 2 for a malformed option.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ferrum_core.errors import FerrumError

__all__ = ["conformance", "require_pytest", "run_suite", "suite_args"]


def suite_args(
    backend: str,
    model: str | None,
    xfail: str | None,
    report: Path,
    quiet: bool,
    *,
    dtype: str | None = None,
    options: Sequence[str] = (),
) -> list[str]:
    from ferrum_core.conformance import CHECKS_DIR, PACKAGE_DIR

    args = [
        str(CHECKS_DIR),
        "--ferrum-backend", backend,
        "--ferrum-json", str(report),
        "--rootdir", str(PACKAGE_DIR),
        "--confcutdir", str(PACKAGE_DIR),
        # Ignore the caller's own pytest configuration: the suite defines what runs.
        "-c", os.devnull,
        "-p", "no:cacheprovider",
        "--import-mode", "importlib",
        "-q" if quiet else "-v",
    ]
    if model:
        args += ["--ferrum-model", model]
    if xfail:
        args += ["--ferrum-xfail", xfail]
    if dtype:
        args += ["--ferrum-dtype", dtype]
    for option in options:
        args += ["--ferrum-option", option]
    return args


def run_suite(
    backend: str,
    model: str | None = None,
    xfail: str | None = None,
    *,
    quiet: bool = True,
    dtype: str | None = None,
    options: Sequence[str] = (),
) -> tuple[int, str | None]:
    """Run the suite; return pytest's exit code and the JSON report (None if none was written)."""
    import pytest

    with tempfile.TemporaryDirectory(prefix="ferrum-conformance-") as tmp:
        report = Path(tmp) / "report.json"
        args = suite_args(backend, model, xfail, report, quiet, dtype=dtype, options=options)
        if not _plugin_autoloaded():
            args += ["-p", "ferrum_core.conformance.plugin"]
        # pytest's progress goes to stderr so that stdout carries only the report.
        with contextlib.redirect_stdout(sys.stderr):
            code = int(pytest.main(args))
        return code, report.read_text() if report.is_file() else None


def require_pytest() -> None:
    """The suite runs on pytest, which is the extra ``ferrum-core[conformance]``."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        raise FerrumError(
            "ferrum conformance needs pytest, which is not installed: "
            "pip install 'ferrum-core[conformance]'"
        ) from None


def _plugin_autoloaded() -> bool:
    """Is the ``pytest11`` entry point active (unless autoloading is switched off)?"""
    from importlib.metadata import entry_points

    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    plugin = "ferrum_core.conformance.plugin"
    return any(ep.value == plugin for ep in entry_points(group="pytest11"))


def _summary_table(report_json: str) -> str:
    from ferrum_core.conformance.report import ConformanceReport

    report = ConformanceReport.model_validate_json(report_json)
    width = max([len(c.id) for c in report.checks] + [5])
    lines = [f"backend {report.backend} (ferrum {report.ferrum_version}), "
             f"{report.settings_line()}", ""]
    for check in report.checks:
        reason = f"  {check.reason}" if check.reason else ""
        lines.append(f"{check.id:<{width}}  {check.outcome:<8}{reason}")
    s = report.summary
    lines += ["", f"{s.passed} passed, {s.failed} failed, {s.skipped} skipped, {s.xfailed} xfailed"]
    return "\n".join(lines)


def _check_options(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    from ferrum_core.conformance.options import parse_options

    try:
        parse_options(value)
    except FerrumError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command()
@click.argument("backend")
@click.option(
    "--model", type=click.Path(exists=True, file_okay=False), default=None,
    help="Model directory for the behavioural checks (default: a golden model).",
)
@click.option(
    "--xfail", type=click.Path(exists=True, dir_okay=False), default=None,
    help="TOML file of known gaps (default: the suite's xfail/BACKEND.toml).",
)
@click.option(
    "--dtype", type=click.Choice(["fp32", "fp16", "bf16", "int8", "int4"]), default=None,
    help="Dtype of every executor (default: fp32 where declared); int8/int4 judge numerics "
    "on GGUF goldens.",
)
@click.option(
    "--option", "options", multiple=True, metavar="KEY=VALUE", callback=_check_options,
    help="Executor option for every executor (repeatable; the value is parsed as JSON when "
    "it parses, e.g. threads=2, cpu_kernels=false).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def conformance(
    backend: str,
    model: str | None,
    xfail: str | None,
    dtype: str | None,
    options: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run the conformance suite against BACKEND."""
    require_pytest()
    from ferrum_core.conformance.options import parse_dtype, parse_options, preflight

    # unknown or unavailable backend, undeclared dtype, refused option: one line, exit 1
    preflight(backend, parse_dtype(dtype) if dtype else None, parse_options(options))
    code, report = run_suite(backend, model, xfail, dtype=dtype, options=options)
    if report is None:
        raise FerrumError(f"the conformance suite did not run (pytest exit code {code})")
    click.echo(report if as_json else _summary_table(report), nl=not as_json)
    from ferrum_core.conformance.report import ConformanceReport

    if ConformanceReport.model_validate_json(report).summary.failed or code not in (0, 1):
        sys.exit(1)
