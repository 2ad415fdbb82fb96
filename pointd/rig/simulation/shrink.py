"""The shortest run that still fails the same way: faults and sales' quirks left out.

A failing seed's run has many faults, most of them beside the point. ``shrink`` reruns the
seed with scheduled faults left out (halves first, then one at a time) and then with sales
stripped of their scripted quirks, keeping each removal after which the run still fails with
the same signature (the rules broken, the kinds of finding). What is left is replayed with
the whole trace kept. Every rerun is the same seed, so the result is itself replayable:
``--skip-faults`` and ``--clean-sales`` name what was left out.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pointd.rig.simulation.store import SimOptions, SimReport, Simulation

# Reruns a shrink may make: each is a whole run of the seed.
MAX_RUNS = 80


def run_once(options: SimOptions) -> SimReport:
    """One run in a temporary state directory."""
    with tempfile.TemporaryDirectory(prefix="pointd-sim-") as state_dir:
        return Simulation(options, Path(state_dir)).run()


def _reduce(items: Sequence[int], still_fails: Callable[[frozenset[int]], bool],
            budget: list[int]) -> frozenset[int]:
    """The items that can be dropped together, found by halves and then one by one."""
    dropped: frozenset[int] = frozenset()
    chunk = max(1, len(items) // 2)
    while chunk >= 1 and budget[0] > 0:
        for start in range(0, len(items), chunk):
            if budget[0] <= 0:
                break
            candidate = dropped | frozenset(items[start:start + chunk])
            if candidate != dropped and still_fails(candidate):
                dropped = candidate
        if chunk == 1:
            break
        chunk //= 2
    return dropped


def shrink(failing: SimReport, options: SimOptions, *,
           run: Callable[[SimOptions], SimReport] = run_once,
           max_runs: int = MAX_RUNS) -> tuple[SimOptions, SimReport]:
    """The smallest variant of ``options`` that fails like ``failing``, and its run (the
    trace kept whole)."""
    signature = failing.signature()
    budget = [max_runs]

    def fails_with(candidate: SimOptions) -> bool:
        budget[0] -= 1
        report = run(candidate)
        return not report.passed and report.signature() == signature

    faults = [fault.index for fault in failing.schedule]
    skip = _reduce(faults, lambda drop: fails_with(
        dataclasses.replace(options, skip_faults=drop)), budget)
    options = dataclasses.replace(options, skip_faults=skip)
    clean = _reduce(list(range(options.sales)), lambda drop: fails_with(
        dataclasses.replace(options, clean_sales=drop)), budget)
    options = dataclasses.replace(options, clean_sales=clean, keep_trace=True)
    return options, run(options)
