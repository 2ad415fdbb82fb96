"""The relay benchmarks run end to end (``--quick``); no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Starts whole processes (crash, chaos, bench): left out of the inner loop, not of CI.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Relay processes, load generators and a journal on a loaded 2-core machine; each run
# itself is a few seconds.
BENCH_TIMEOUT = 120.0


def quick_run(script: str) -> str:
    """The output of ``bench/<script> --quick``, which must exit 0."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_quick_benchmark_runs_and_loses_nothing() -> None:
    output = quick_run("relay_intake.py")
    lines = output.splitlines()
    assert any(line.startswith("machine: ") and "fsync p99 ms" in line for line in lines)
    names = ("intake sqlite fast", "intake sqlite portable", "POST→200", "POST→journal", "away")
    for name in names:
        (line,) = [line for line in lines if name in line]
        assert "lost 0" in line or "lost" not in line, line
    assert "journaled twice 0" in output


def test_quick_hostile_load_benchmark_runs_and_loses_nothing() -> None:
    lines = quick_run("relay_hostile.py").splitlines()
    assert any(line.strip().startswith("calibration: ") for line in lines)
    assert any(line.strip().startswith("command: ") for line in lines)
    for name in ("genuine alone (reference)", "genuine under hostile load", "hostile requests"):
        (line,) = [line for line in lines if line.startswith(name)]
        assert "failed 0" in line or "failed" not in line, line
    assert lines[-1].endswith("lost 0"), lines[-1]


@pytest.mark.slow
def test_quick_floor_serves_and_streams() -> None:
    lines = quick_run("relay_floor.py").splitlines()
    assert "floor: 3 of 3 streamed" in lines
    assert "floor durable: 3 of 3 streamed" in lines


@pytest.mark.slow
def test_quick_hop_against_the_floor_runs_and_loses_nothing() -> None:
    output = quick_run("relay_hop.py")
    lines = output.splitlines()
    assert any(line.strip().startswith("calibration: ") for line in lines)
    for name in ("floor (memory", "pointd sqlitex1 stream", "pointd sqlitex1 long-poll"):
        (line,) = [line for line in lines if line.startswith(name)]
        assert "lost 0  twice 0" in line, line
        assert "µs/event" in line
    assert any(line.startswith("pointd stream / floor: p50 x ") for line in lines)


@pytest.mark.slow
def test_quick_sustained_intake_against_the_floor_runs_and_loses_nothing() -> None:
    output = quick_run("relay_sustained.py")
    (summary,) = [line for line in output.splitlines() if line.startswith("sustained: ")]
    assert "floor durable" in summary
    assert "(lost 0)" in summary.split("pointd", 1)[1], summary
    assert " ratio x " in summary


@pytest.mark.slow
def test_quick_paired_relays_run_side_by_side() -> None:
    lines = quick_run("relay_paired.py").splitlines()
    assert any(line.strip().startswith("calibration: ") for line in lines)
    (round_line,) = [line for line in lines if line.startswith("round 1: ")]
    assert "baseline sparse" in round_line
    assert "candidate sparse" in round_line
    (summary,) = [line for line in lines if line.startswith("candidate / baseline: ")]
    assert "sparse x " in summary
    assert "intake x " in summary
    assert summary.endswith("(intake failures 0)"), summary
