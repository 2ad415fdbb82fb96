"""The relay benchmark runs end to end (``--quick``); no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Starts whole processes (crash, chaos, bench): left out of the inner loop, not of CI.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Two relay processes and a journal on a loaded 2-core machine; the run itself is ~3 s.
BENCH_TIMEOUT = 120.0


def test_quick_benchmark_runs_and_loses_nothing() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "relay_intake.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("machine: ") and "fsync p99 ms" in line for line in lines)
    names = ("intake sqlite fast", "intake sqlite portable", "POST→200", "POST→journal", "away")
    for name in names:
        (line,) = [line for line in lines if name in line]
        assert "lost 0" in line or "lost" not in line, line
    assert "journaled twice 0" in result.stdout
