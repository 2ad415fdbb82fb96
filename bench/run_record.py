"""What every pointd benchmark states about its run: machine, date, command, and its figures.

A figure without the machine and the exact command that produced it cannot be compared with
anything, so each benchmark prints ``describe_machine()`` before its figures and, with
``--json``, saves the same description next to them (bench/results/ is git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or the platform's guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine() -> dict[str, Any]:
    """Machine, interpreter, date and the exact command of this run."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": usable,
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "load_average": load,
        "command": shlex.join(["python", *sys.argv]),
    }


def print_machine(title: str, machine: dict[str, Any]) -> None:
    """The header every benchmark prints before its figures."""
    print(title)
    print(
        f"  {machine['date']}  nproc {machine['nproc']}  cpu {machine['cpu_model']}  "
        f"python {machine['python']}  kernel {machine['kernel']}  "
        f"load {machine['load_average']}"
    )
    print(f"  command: {machine['command']}")


CALIBRATION_LOOPS = 1_000_000


def calibration_ms() -> float:
    """A fixed pure-Python workload (10^6 loop steps), best of 5 runs, in milliseconds."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for n in range(CALIBRATION_LOOPS):
            total += n * n % 7
        best = min(best, time.perf_counter() - started)
    return best * 1000


def summarize(samples_ns: list[int]) -> dict[str, float]:
    """p50, p99 (nearest rank), max and mean of durations, in microseconds."""
    if not samples_ns:
        raise ValueError("no samples to summarize")
    ordered = sorted(samples_ns)
    p99_index = max(0, math.ceil(0.99 * len(ordered)) - 1)
    return {
        "n": len(ordered),
        "p50_us": statistics.median(ordered) / 1000,
        "p99_us": ordered[p99_index] / 1000,
        "max_us": ordered[-1] / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
    }


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes: --quick and --json."""
    parser.add_argument(
        "--quick", action="store_true", help="a few iterations only: proves the benchmark runs"
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also write the figures as JSON (default path: bench/results/<name>-<date>.json)",
    )


def save_json(name: str, requested: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to the requested path, or to a dated file in bench/results/."""
    if requested:
        path = Path(requested)
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
