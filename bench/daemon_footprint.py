"""Benchmark: the daemon's CPU (% of one core) and memory (RSS), idle and while lanes sell.

A real ``pointd run`` subprocess (``bench/product_rig.py``: the cloud simulator and one
register emulator per lane on a pty in this process, ``pointd relay`` on SQLite as another
subprocess) is measured from /proc only, so the measurement adds nothing to the daemon:

* CPU — ``utime + stime`` of /proc/<pid>/stat (all threads) over the window, divided by
  the window's wall time: 100 % is one core;
* RSS — ``VmRSS`` of /proc/<pid>/status, sampled every second (mean and max), and
  ``VmHWM``, the peak since start;
* wake-ups — the run counts (third field) of /proc/<pid>/task/*/schedstat summed over
  threads, and voluntary context switches: how often the daemon was scheduled per second,
  which is what an idle daemon's CPU is made of.

Windows: *idle* (lanes configured, registers connected, relay connected, nothing sold),
then *selling* (every lane sells, hands over and sells again, with 50 ms simulator steps).
With ``--breakdown`` the idle window is repeated on variations (no relay; one lane; canary
every 5 s) to attribute the idle cost to its causes.

    python bench/daemon_footprint.py                  # 60 s idle, 60 s selling, 10 lanes
    python bench/daemon_footprint.py --breakdown      # plus the idle variations
    python bench/daemon_footprint.py --quick          # 5 s windows: proves it runs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from product_rig import ProductRig, RigOptions, sell_continuously  # noqa: E402
from run_record import add_run_arguments, describe_machine, print_machine, save_json  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_CPU_TARGET = 0.2  # % of one core
RSS_TARGET_MB = 50.0
# After HELLO the daemon still refreshes the terminal list and the relay consumer connects;
# the idle window starts once that settles.
SETTLE_SECONDS = 3.0
RSS_SAMPLE_INTERVAL = 1.0


@dataclass(frozen=True)
class ProcSnapshot:
    """What /proc says about a process at one instant."""

    at: float
    cpu_ticks: int
    runs: int
    voluntary_switches: int
    rss_kb: int
    hwm_kb: int
    threads: int


def read_proc(pid: int) -> ProcSnapshot:
    """CPU ticks, schedule counts and memory of ``pid`` from /proc."""
    at = time.monotonic()
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu_ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    status: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    runs = 0
    switches = 0
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    for task in tasks:
        try:
            runs += int((task / "schedstat").read_text().split()[2])
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    switches += int(line.split(":")[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between listing and reading
    return ProcSnapshot(
        at=at,
        cpu_ticks=cpu_ticks,
        runs=runs,
        voluntary_switches=switches,
        rss_kb=int(status["VmRSS"].split()[0]),
        hwm_kb=int(status["VmHWM"].split()[0]),
        threads=len(tasks),
    )


async def measure(pid: int, seconds: float, *, work: Any = None) -> dict[str, Any]:
    """CPU %, wake-ups/s and RSS of ``pid`` over ``seconds`` (while ``work`` runs, if given)."""
    start = read_proc(pid)
    rss = [start.rss_kb]
    task = asyncio.ensure_future(work) if work is not None else None
    loop = asyncio.get_running_loop()
    end_at = loop.time() + seconds
    while loop.time() < end_at:
        await asyncio.sleep(min(RSS_SAMPLE_INTERVAL, max(0.0, end_at - loop.time())))
        rss.append(read_proc(pid).rss_kb)
    end = read_proc(pid)
    result = await task if task is not None else None
    wall = end.at - start.at
    figures: dict[str, Any] = {
        "seconds": wall,
        "cpu_percent": (end.cpu_ticks - start.cpu_ticks) / CLOCK_TICKS / wall * 100,
        "cpu_tick_s": 1 / CLOCK_TICKS,
        "wakeups_per_s": (end.runs - start.runs) / wall,
        "voluntary_switches_per_s": (end.voluntary_switches - start.voluntary_switches) / wall,
        "rss_mb_mean": sum(rss) / len(rss) / 1024,
        "rss_mb_max": max(rss) / 1024,
        "hwm_mb": end.hwm_kb / 1024,
        "threads": end.threads,
    }
    if result is not None:
        figures["sales"] = result.sales
        figures["sales_per_s"] = result.sales / result.seconds
        figures["outcomes"] = result.outcomes
    return figures


async def run_case(
    options: RigOptions, idle_s: float, selling_s: float, settle_s: float = SETTLE_SECONDS
) -> dict[str, Any]:
    """Start the product, measure the idle window, then (if asked) a selling window."""
    with tempfile.TemporaryDirectory(prefix="pointd-bench-footprint-") as tmp:
        async with ProductRig(Path(tmp), options) as rig:
            await asyncio.sleep(settle_s)
            figures = {"idle": await measure(rig.pid, idle_s)}
            if selling_s > 0:
                # Sales stop starting at the window's end; the sales in flight finish after it.
                figures["selling"] = await measure(
                    rig.pid, selling_s, work=sell_continuously(rig, seconds=selling_s)
                )
            if not rig.running:
                raise RuntimeError(f"the daemon exited: {rig.daemon_log_tail()}")
    return figures


def line(name: str, figures: dict[str, Any]) -> str:
    """One printed row of figures."""
    text = (
        f"  {name:<34} cpu {figures['cpu_percent']:6.2f} % of a core  "
        f"wake-ups {figures['wakeups_per_s']:7.1f}/s  "
        f"RSS mean {figures['rss_mb_mean']:5.1f} MB max {figures['rss_mb_max']:5.1f} MB  "
        f"(peak {figures['hwm_mb']:5.1f} MB, {figures['threads']} threads)"
    )
    if "sales_per_s" in figures:
        text += f"  {figures['sales_per_s']:.1f} sales/s"
    return text


def main() -> int:
    """Measure idle and selling windows (and the idle breakdown) and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each window")
    parser.add_argument("--lanes", type=int, default=10, help="lanes configured and selling")
    parser.add_argument("--breakdown", action="store_true",
                        help="also measure idle without the relay, with one lane, and with "
                             "a 5 s canary, to attribute the idle cost")
    args = parser.parse_args()
    if args.seconds <= 0 or not 1 <= args.lanes <= 99:
        parser.error("--seconds must be positive and --lanes between 1 and 99")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    seconds = 5.0 if args.quick else args.seconds
    lanes = 2 if args.quick else args.lanes

    # --quick: the idle window stays 5 s; a shorter settle and selling window keep it brief.
    selling_s, settle_s = (3.0, 1.0) if args.quick else (seconds, SETTLE_SECONDS)
    machine = describe_machine()
    print_machine("daemon footprint: CPU and RSS of a real `pointd run`", machine)
    print(f"  clock tick {1000 / CLOCK_TICKS:.0f} ms: over {seconds:.0f} s the CPU figure "
          f"resolves {100 / CLOCK_TICKS / seconds:.3f} % of a core")
    results: dict[str, Any] = {"lanes": lanes, "window_s": seconds,
                               "selling_window_s": selling_s,
                               "targets": {"idle_cpu_percent": IDLE_CPU_TARGET,
                                           "rss_mb": RSS_TARGET_MB}}
    main_case = asyncio.run(run_case(RigOptions(lanes=lanes), seconds, selling_s, settle_s))
    results.update(main_case)
    print(f"\n{lanes} lanes, relay connected (canary every 60 s):")
    print(line("idle", main_case["idle"]))
    print(line(f"selling on {lanes} lanes", main_case["selling"]))
    idle = main_case["idle"]
    results["idle_within_target"] = (
        idle["cpu_percent"] <= IDLE_CPU_TARGET and idle["rss_mb_max"] <= RSS_TARGET_MB
    )
    print(f"  idle target ≤ {IDLE_CPU_TARGET} % and ≤ {RSS_TARGET_MB:.0f} MB: "
          + ("met" if results["idle_within_target"] else "MISSED"))

    if args.breakdown:
        variations = {
            "idle, no relay": RigOptions(lanes=lanes, relay=False),
            "idle, one lane": RigOptions(lanes=1),
            "idle, canary every 5 s": RigOptions(lanes=lanes, canary_interval=5.0),
        }
        results["breakdown"] = {}
        print("\nidle variations:")
        for name, options in variations.items():
            figures = asyncio.run(run_case(options, seconds, 0, settle_s))["idle"]
            results["breakdown"][name] = figures
            print(line(name, figures))

    if args.json is not None:
        path = save_json("daemon_footprint", args.json,
                         {"benchmark": "daemon_footprint", "machine": machine,
                          "quick": args.quick, "results": results})
        print(f"\nJSON written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
