"""The conformance report: check ids, per-check outcomes, the JSON document."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from ferrum_core.conformance.options import kv_tolerance
from ferrum_core.conformance.oracle import TOLERANCE
from pydantic import BaseModel, Field

from ferrum_core.types import DataType

__all__ = ["CheckResult", "ConformanceReport", "Summary", "check_id", "Outcomes"]

Outcome = Literal["passed", "failed", "skipped", "xfailed"]


class CheckResult(BaseModel):
    id: str
    outcome: Outcome
    reason: str = ""


class Summary(BaseModel):
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    xfailed: int = 0


class ConformanceReport(BaseModel):
    backend: str
    ferrum_version: str
    summary: Summary = Field(default_factory=Summary)
    checks: list[CheckResult] = Field(default_factory=list)
    dtype: str = DataType.FP32.value
    executor_options: dict[str, Any] = Field(default_factory=dict)
    tolerance: float = Field(
        default=TOLERANCE[DataType.FP32],
        description="largest max|got - want| / max(1, max|want|) the numeric checks accept",
    )
    tolerances: dict[str, float] = Field(
        default_factory=lambda: {d.value: t for d, t in TOLERANCE.items()},
        description="the tolerance of every dtype (the run uses the one of `dtype`)",
    )

    @classmethod
    def build(
        cls,
        backend: str,
        ferrum_version: str,
        results: list[CheckResult],
        *,
        dtype: DataType = DataType.FP32,
        executor_options: dict[str, Any] | None = None,
    ) -> ConformanceReport:
        summary = Summary()
        for result in results:
            setattr(summary, result.outcome, getattr(summary, result.outcome) + 1)
        return cls(
            backend=backend, ferrum_version=ferrum_version, summary=summary, checks=results,
            dtype=dtype.value, executor_options=dict(executor_options or {}),
            tolerance=max(TOLERANCE[dtype], kv_tolerance(dict(executor_options or {}))),
        )

    def settings_line(self) -> str:
        options = " ".join(f"{k}={v!r}" for k, v in sorted(self.executor_options.items()))
        return (f"dtype {self.dtype} (tolerance {self.tolerance:g} relative)"
                + (f", options {options}" if options else ""))


def check_id(item: pytest.Item) -> str:
    """``test_numerics.py::test_decode_logits[m]`` -> ``numerics.decode_logits[m]``."""
    module = getattr(item, "module", None)
    if module is None:
        return item.nodeid
    # A module may set GROUP to share an id group with another module.
    default = module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    group = getattr(module, "GROUP", None) or default
    return f"{group}.{item.name.removeprefix('test_')}"


def _crash_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None) or report.longreprtext
    lines = [line for line in str(message).splitlines() if line.strip()]
    text = " ".join(line.strip() for line in lines[:6])
    return text[:500]


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return _crash_message(report)


class Outcomes:
    """Folds setup / call / teardown reports into one result per check."""

    def __init__(self) -> None:
        self.results: dict[str, CheckResult] = {}

    def add(self, cid: str, report: pytest.TestReport) -> None:
        current = self.results.get(cid)
        if current is not None and current.outcome == "failed":
            return
        wasxfail = getattr(report, "wasxfail", None)
        if report.failed:
            phase = "" if report.when == "call" else f"error in {report.when}: "
            self.results[cid] = CheckResult(
                id=cid, outcome="failed", reason=phase + _crash_message(report)
            )
        elif report.skipped:
            if wasxfail is not None:
                self.results[cid] = CheckResult(id=cid, outcome="xfailed", reason=str(wasxfail))
            else:
                reason = _skip_reason(report)
                self.results[cid] = CheckResult(id=cid, outcome="skipped", reason=reason)
        elif report.when == "call":
            reason = ""
            if wasxfail is not None:
                reason = f"passed although listed as xfail ({wasxfail}); remove the entry"
            self.results[cid] = CheckResult(id=cid, outcome="passed", reason=reason)

    def ordered(self) -> list[CheckResult]:
        return list(self.results.values())
