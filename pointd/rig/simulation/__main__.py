"""``python -m pointd.rig.simulation --seed N --sales N``: run seeds, replay a failing one.

Each seed prints one line: its digest (SHA-256 of the whole trace: equal for equal seeds,
on any machine), the simulated and the real seconds, and PASS or FAIL. A failing seed
prints what failed, is shrunk to the shortest run that fails the same way, and that run's
whole trace is printed with the command that replays it. Exit 0 when every seed passed,
1 when one failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pointd.rig.simulation.shrink import run_once, shrink
from pointd.rig.simulation.store import SimOptions, SimReport

EXIT_OK = 0
EXIT_FAILED = 1


def _indices(text: str) -> frozenset[int]:
    return frozenset(int(part) for part in text.split(",") if part.strip())


def replay_command(options: SimOptions) -> str:
    """The command line that runs exactly ``options`` again."""
    words = ["python -m pointd.rig.simulation", f"--seed {options.seed}",
             f"--sales {options.sales}", f"--lanes {options.lanes}",
             f"--fault-interval {options.fault_interval:g}"]
    if options.skip_faults:
        words.append("--skip-faults " + ",".join(map(str, sorted(options.skip_faults))))
    if options.clean_sales:
        words.append("--clean-sales " + ",".join(map(str, sorted(options.clean_sales))))
    return " ".join([*words, "--trace"])


def line(report: SimReport) -> str:
    """One seed's result."""
    ratio = report.simulated_seconds / max(report.wall_seconds, 1e-9)
    return (f"seed {report.seed}: {report.sales} sales, {report.simulated_seconds:.0f} s "
            f"simulated in {report.wall_seconds:.2f} s ({ratio:.0f}x), digest "
            f"{report.digest[:16]}  {'PASS' if report.passed else 'FAIL'}")


def main(argv: Sequence[str]) -> int:
    """Run the seeds asked for; shrink and print the first that fails."""
    parser = argparse.ArgumentParser(prog="python -m pointd.rig.simulation",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="the (first) seed (default 1)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="how many seeds from --seed on (default 1)")
    parser.add_argument("--sales", type=int, default=200, help="sales per seed (default 200)")
    parser.add_argument("--lanes", type=int, default=4, help="lanes over two stores (default 4)")
    parser.add_argument("--fault-interval", type=float, default=30.0,
                        help="mean simulated seconds between faults (default 30)")
    parser.add_argument("--skip-faults", type=_indices, default=frozenset(), metavar="I,J",
                        help="leave out these scheduled faults (as a shrunk run names them)")
    parser.add_argument("--clean-sales", type=_indices, default=frozenset(), metavar="I,J",
                        help="run these sales without their scripted quirks")
    parser.add_argument("--trace", action="store_true", help="print the whole trace")
    parser.add_argument("--no-shrink", action="store_true",
                        help="report a failing seed without shrinking it")
    args = parser.parse_args(argv)
    if args.sales < 1 or args.lanes < 1 or args.seeds < 1 or args.fault_interval <= 0:
        parser.error("--sales, --lanes and --seeds must be at least 1, --fault-interval > 0")
    for seed in range(args.seed, args.seed + args.seeds):
        options = SimOptions(seed, args.sales, args.lanes, args.fault_interval,
                             skip_faults=args.skip_faults, clean_sales=args.clean_sales,
                             keep_trace=args.trace)
        report = run_once(options)
        print(line(report), flush=True)
        if args.trace:
            print("\n".join(report.trace_tail))
        if report.passed:
            continue
        for failure in report.failures:
            print(f"  FAIL {failure}")
        if not args.no_shrink:
            print("shrinking (each step reruns the seed) ...", flush=True)
            options, smallest = shrink(report, options)
            faults = len(smallest.schedule) - len(options.skip_faults)
            print(f"shortest failing run: {faults} fault(s) against the parts, "
                  f"{options.sales - len(options.clean_sales)} sale(s) with quirks, "
                  f"{smallest.trace_lines} trace lines")
            print("\n".join(smallest.trace_tail))
            for failure in smallest.failures:
                print(f"  FAIL {failure}")
        print(f"replay: {replay_command(options)}")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
