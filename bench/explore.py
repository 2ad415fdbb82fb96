"""Benchmark of the exhaustive explorer: states and transitions per depth, and their cost.

``pointd.core.explore`` walks every sequence of moves to a depth (docs/sale-lifecycle.md).
This runs it to ``--depth`` (8 by default) or until ``--max-minutes`` (30) have passed,
whichever comes first, and prints per depth the new states, the transitions tried and the
time so far. Two measurements of the same run make the time comparable across machines:

- a CPU calibration: the best of 5 runs of a fixed pure-Python loop (10^6 steps), in ms;
- a reference: the core alone, ``machine.step`` over one approved sale's eight events
  (request, create, three observations, verification, handover), best of 5 runs of 2,000
  sales, as core steps per second.

The figures are the ratios: seconds per depth in calibrations, and the explorer's
transitions per second as a fraction of the reference's core steps per second (each
transition is one core step plus the invariants, the world's bookkeeping and dedup).

    python bench/explore.py                    # depth 8, or 30 minutes
    python bench/explore.py --depth 7 --json   # also bench/results/explore-<date>.json
    python bench/explore.py --quick            # depth 3: proves it runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_record import (  # noqa: E402 - after the path set-up
    add_run_arguments,
    describe_machine,
    print_machine,
    save_json,
)
from pointd.core import explore, machine  # noqa: E402
from pointd.core.events import (  # noqa: E402
    HandoverConfirmed,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    PaymentVerified,
    SaleRequested,
)
from pointd.core.records import CoreState  # noqa: E402
from pointd.core.reference import ExternalReference  # noqa: E402

REFERENCE_SALES = 2000


def _sale_events(n: int) -> list[Any]:
    sale = f"S{n}"
    intent, payment = f"I{n}", f"P{n}"
    reference = str(ExternalReference(explore.STORE, explore.LANE, sale, 1))
    poll = ObservationSource.POLL
    return [
        SaleRequested(sale, explore.LANE, f"c{n}", explore.AMOUNT, explore.TERMINAL, None),
        IntentCreated(sale, 1, intent),
        IntentObserved(intent, "ON_TERMINAL", None, None, poll, reference),
        IntentObserved(intent, "PROCESSING", None, None, poll, reference),
        IntentObserved(intent, "FINISHED", payment, "approved", poll, reference),
        PaymentVerified(payment, "approved", "accredited", explore.AMOUNT, "BRL",
                        explore.COLLECTOR, reference),
        HandoverConfirmed(sale),
    ]


def reference_steps_per_second(sales: int) -> float:
    """Core steps per second over ``sales`` approved sales, best of 5 runs."""
    events = [event for n in range(sales) for event in _sale_events(n)]
    best = float("inf")
    for _ in range(5):
        state = CoreState.empty(explore.STORE)
        started = time.perf_counter()
        for event in events:
            state = machine.step(state, event, now=explore.NOW, policy=explore.POLICY).state
        best = min(best, time.perf_counter() - started)
    assert all(s.is_final for s in state.sales.values()), "the reference sales must finish"
    return len(events) / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--max-minutes", type=float, default=30.0)
    add_run_arguments(parser)
    args = parser.parse_args()
    depth = 3 if args.quick else args.depth
    machine_info = describe_machine()
    print_machine("explorer: states per depth", machine_info)
    calibration = float(machine_info["calibration_ms"])  # printed with the machine
    reference = reference_steps_per_second(50 if args.quick else REFERENCE_SALES)
    print(f"reference: {reference:,.0f} core steps/s (machine.step over approved sales)")
    print(f"{'depth':>5} {'new states':>11} {'transitions':>12} {'seconds':>9} "
          f"{'calibrations':>13}")

    def show(level: int, states: int, transitions: int, elapsed: float) -> None:
        print(f"{level:>5} {states:>11} {transitions:>12} {elapsed:>9.1f} "
              f"{elapsed * 1000 / calibration:>13.0f}", flush=True)

    deadline = time.monotonic() + args.max_minutes * 60
    report = explore.explore(depth, progress=show, deadline=deadline)
    # The transitions of the depths finished, over the time they took (not the cut-off one).
    finished = report.per_depth[-1][3] if report.per_depth else 0.0
    rate = report.transitions / finished if finished else 0.0
    if report.stopped:
        print(f"stopped after {args.max_minutes:g} minutes, during depth {report.depth + 1}")
    print(f"explored {report.states:,} states, {report.transitions:,} transitions to depth "
          f"{report.depth} in {report.seconds:.1f} s: {rate:,.0f} transitions/s = "
          f"{rate / reference:.3f} of the reference's core steps/s")
    print("violation: " + ("none" if report.violation is None else report.violation.report()))
    results = {
        "calibration_ms": calibration,
        "reference_steps_per_s": reference,
        "depth_reached": report.depth,
        "stopped_by_time": report.stopped,
        "states": report.states,
        "transitions": report.transitions,
        "seconds": report.seconds,
        "transitions_per_s_over_reference": rate / reference if reference else 0.0,
        "per_depth": [
            {"depth": level, "new_states": states, "transitions": transitions,
             "seconds": elapsed, "calibrations": elapsed * 1000 / calibration}
            for level, states, transitions, elapsed in report.per_depth
        ],
        "violation": None if report.violation is None else report.violation.rule,
    }
    if args.json is not None:
        path = save_json("explore", args.json, {"benchmark": "explore", "quick": args.quick,
                                                "machine": machine_info, "results": results})
        print(f"figures written to {path}")
    return 0 if report.violation is None else 1


if __name__ == "__main__":
    sys.exit(main())
