"""The code stays as clean as it was left: ruff on everything, mypy strict on pointd/."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A cold mypy run over pointd/ took 13 s on the 2-core machine (2026-12-02); the bound is for
# a machine shared with the rest of the suite on every core, which can be many times slower.
STATIC_CHECK_TIMEOUT = 600


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=STATIC_CHECK_TIMEOUT,
        check=False,
    )


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", "pointd", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_nothing_in_pointd() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_asyncio_wait_for_in_pointd() -> None:
    # On Python 3.11 asyncio.wait_for swallows a cancellation that lands just as its inner
    # task finishes, so a loop built on it can outlive the daemon's stop (a failed daemon
    # that never exited: tests/systemd/test_notify.py). asyncio.timeout has no such race.
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "pointd").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "asyncio.wait_for(" in line
    ]
    assert offenders == [], "asyncio.wait_for (use asyncio.timeout): " + ", ".join(offenders)
