"""The README's test command: lint, type-check, then the whole pytest suite.

pytest exits 5 when it collected no test. That is never a pass here (it would
hide a run that ran nothing), so it is reported as such and turned into 1.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(title: str, argv: list[str]) -> int:
    print(f"==> {title}: {' '.join(argv)}", flush=True)
    return subprocess.call(argv, cwd=ROOT)


def main() -> int:
    if run("ruff", [str(BIN / "ruff"), "check", "."]) != 0:
        return 1
    if run("mypy", [str(BIN / "mypy")]) != 0:
        return 1
    return pytest_outcome(run("pytest", [sys.executable, "-m", "pytest", *sys.argv[1:]]))


def pytest_outcome(code: int) -> int:
    """pytest's exit code as this run's: 5 (no test collected) is a failure, not a pass."""
    if code == 5:
        print("pytest collected no tests: treating as a failure", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
