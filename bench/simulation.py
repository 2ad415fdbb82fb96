"""The deterministic simulation's speed, and an exploration of many seeds.

``python bench/simulation.py --total-sales 100000`` runs seeds from ``--seed`` on (each
``--sales`` sales over two stores, four lanes, faults every 30 simulated seconds,
``pointd.rig.simulation``) until the total is reached, ``--jobs`` of them at a time in
separate processes, and prints simulated sales per second of real time, seeds per minute and
the ratio of simulated to real time (for the whole run and per process), with the CPU
calibration ``run_record.describe_machine`` measures at the start of the run (sales per
second times calibration is the figure that compares across machines). Real time is the
reference: a ratio above 1 is faster than the store itself. The seeds run are the same
whatever ``--jobs`` is, so a run's result does not depend on how it was spread. A failing
seed is reported with its replay command (``python -m pointd.rig.simulation --seed N ...``)
and makes the exit code 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from run_record import (  # noqa: E402
    add_run_arguments,
    describe_machine,
    print_machine,
    save_json,
)

from pointd.rig.simulation.__main__ import line, replay_command  # noqa: E402
from pointd.rig.simulation.shrink import run_once  # noqa: E402
from pointd.rig.simulation.store import SimOptions  # noqa: E402

QUICK_TOTAL = 40


def _run_seed(seed: int, sales: int) -> tuple[str, float, str | None]:
    """One seed in this process: its line, its simulated seconds, its replay if it failed."""
    options = SimOptions(seed, sales=sales)
    report = run_once(options)
    return line(report), report.simulated_seconds, (
        None if report.passed else replay_command(options))


def explore(first_seed: int, sales: int, total: int, jobs: int = 1) -> dict[str, Any]:
    """Run ``ceil(total / sales)`` seeds from ``first_seed``, ``jobs`` at a time; the figures."""
    seeds = list(range(first_seed, first_seed + math.ceil(total / sales)))
    started = time.perf_counter()
    simulated = 0.0
    failed: list[str] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for text, seconds, replay in pool.map(_run_seed, seeds, [sales] * len(seeds)):
            simulated += seconds
            print(f"  {text}", flush=True)
            if replay is not None:
                failed.append(replay)
    wall = time.perf_counter() - started
    made = len(seeds) * sales
    return {
        "seeds": len(seeds), "first_seed": first_seed, "sales": made,
        "sales_per_seed": sales, "jobs": jobs,
        "wall_seconds": round(wall, 1), "simulated_seconds": round(simulated, 1),
        "sales_per_second": round(made / wall, 1),
        "seeds_per_minute": round(len(seeds) * 60 / wall, 1),
        "simulated_per_real": round(simulated / wall, 1),
        "simulated_per_real_per_job": round(simulated / wall / jobs, 1),
        "failed_seeds": failed,
    }


def main(argv: list[str]) -> int:
    """``python bench/simulation.py [--total-sales N] [--sales N] [--seed N] [--jobs N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="the first seed (default 1)")
    parser.add_argument("--sales", type=int, default=200, help="sales per seed (default 200)")
    parser.add_argument("--total-sales", type=int, default=100_000,
                        help="stop once this many sales were simulated (default 100000)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run at a time, each in its own process (default 1)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.sales < 1 or args.total_sales < 1 or args.jobs < 1:
        parser.error("--sales, --total-sales and --jobs must be at least 1")
    total = QUICK_TOTAL if args.quick else args.total_sales
    sales = min(args.sales, total)
    machine = describe_machine()
    print_machine("pointd deterministic simulation: seeds explored", machine)
    calibration = float(machine["calibration_ms"])  # printed with the machine
    figures = explore(args.seed, sales, total, args.jobs)
    figures["calibration_ms"] = round(calibration, 1)
    figures["sales_per_second_per_calibration_ms"] = round(
        figures["sales_per_second"] * calibration, 1)
    print(f"\n{figures['sales']} sales in {figures['seeds']} seeds: "
          f"{figures['sales_per_second']} simulated sales/s, {figures['seeds_per_minute']} "
          f"seeds/min, {figures['simulated_per_real']}x real time "
          f"({figures['simulated_per_real_per_job']}x per process, {args.jobs} at a time; "
          f"{figures['sales_per_second_per_calibration_ms']} sales/s x calibration ms)")
    for command in figures["failed_seeds"]:
        print(f"FAILED: {command}")
    if args.json is not None:
        figures["machine"] = machine
        print(f"figures written to {save_json('simulation', args.json, figures)}")
    return 1 if figures["failed_seeds"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
