"""`ferrum conformance NAME`: exit codes, xfail files, the run settings in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ferrum_core.cli.main import cli
from tests.test_conformance_liars import liars  # noqa: F401  (the fixture)

pytest.importorskip("ferrum_example_backend")


@pytest.mark.usefixtures("liars")
def test_cli_exits_1_when_a_check_fails() -> None:
    result = CliRunner().invoke(cli, ["conformance", "liar-batch", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["summary"]["failed"] == 1
    assert {"backend", "ferrum_version", "summary", "checks"} <= set(report)
    assert set(report["summary"]) == {"passed", "failed", "skipped", "xfailed"}


@pytest.mark.usefixtures("liars")
def test_xfail_file_records_a_known_gap(tmp_path: Path) -> None:
    xfail = tmp_path / "liar-batch.toml"
    xfail.write_text(
        '[xfail]\n"capabilities.max_batch_size" = "batches of 8 or more are not supported yet"\n'
    )
    result = CliRunner().invoke(cli, ["conformance", "liar-batch", "--xfail", str(xfail), "--json"])
    assert result.exit_code == 0, result.stdout
    report = json.loads(result.stdout)
    check = next(c for c in report["checks"] if c["id"] == "capabilities.max_batch_size")
    assert check["outcome"] == "xfailed"
    assert "not supported yet" in check["reason"]
    assert report["summary"]["failed"] == 0 and report["summary"]["xfailed"] == 1


def test_report_states_dtype_options_and_tolerance() -> None:
    args = ["conformance", "example", "--json", "--option", "threads=2",
            "--option", "cpu_kernels=false", "--option", "label=plain text"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["dtype"] == "fp32"
    assert report["executor_options"] == {"threads": 2, "cpu_kernels": False,
                                          "label": "plain text"}
    assert report["tolerance"] == 2e-3
    assert report["tolerances"]["int8"] == 0.15 and report["tolerances"]["int4"] == 0.3
    table = CliRunner().invoke(cli, ["conformance", "example", "--dtype", "fp32"])
    assert "dtype fp32 (tolerance 0.002 relative)" in table.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--dtype", "fp12"], 2, "Invalid value for '--dtype'"),
        (["--option", "threads"], 2, "'threads' is not of the form key=value"),
        (["--option", "=2"], 2, "is not of the form key=value"),
        (["--option", "a=1", "--option", "a=2"], 2, "'a' is given twice"),
        (["--dtype", "int8"], 1, "does not declare dtype int8 (it declares fp32)"),
    ],
)
def test_bad_settings_are_one_line_errors(args: list[str], code: int, message: str) -> None:
    result = CliRunner().invoke(cli, ["conformance", "example", *args])
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not result.stdout
