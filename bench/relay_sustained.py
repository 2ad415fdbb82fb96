"""Intake sustained: signed durable notifications/s for 20 s, nothing lost, backlog flat,
pointd's relay against the floor's durable variant (one commit per notification), in one run.

For each server — ``bench/relay_floor.py serve --durable`` (Starlette + uvicorn, one SQLite
commit per notification, WAL, ``synchronous=FULL``) and ``pointd relay`` (SQLite, or
PostgreSQL on ``--replicas`` 1 or 2 relay processes sharing one server) — this process first
finds the closed-loop capacity (``--connections`` keep-alive connections for 3 s), then
offers ``--load`` times that rate *open loop* for ``--seconds``: requests fall due at a steady
rate whether or not earlier ones were answered, and wait in the generator when every
connection is busy. The backlog (due but not yet answered) is sampled every second; the run
holds when the answered rate is within 3 % of the offered one and the backlog's trend (least
squares) grows by less than 1 % of the rate per second. A run that does not hold is
repeated at 85 % of its rate (at most three times). Afterwards every store stream (the
floor: its table) is read back: anything answered 200 and not stored is lost (exit 1).

The floor with nothing durable (``bench/relay_floor.py serve``: the same Starlette + uvicorn
intake, the notification only put on a queue) is sustained the same way first. It is not
the target's reference; it is the stack's own ceiling on this machine, printed beside the
target so that a target above it is seen to ask for another stack, not a better commit.

Requests are pre-built and signed before the clock starts (the floor ignores the
signature); the generator shares the machine's two cores with the server, the same way for
both, and its CPU is printed.

    python bench/relay_sustained.py                          # SQLite, 20 s
    python bench/relay_sustained.py --backend postgres --replicas 2
    python bench/relay_sustained.py --quick                  # a second each: proves it runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import relay_floor  # noqa: E402
import relay_intake  # noqa: E402
from relay_hop import Server, floor_process, pointd_relays  # noqa: E402
from run_record import add_run_arguments, describe_machine, print_machine, save_json  # noqa: E402

PROBE_SECONDS = 3.0
TARGET_RATIO = 3.0
RATE_TOLERANCE = 0.03
SLOPE_TOLERANCE = 0.01
RETRY_FACTOR = 0.85
ATTEMPTS = 3


@dataclass
class Run:
    """One open-loop run at an offered rate."""

    offered: float
    answered: int
    elapsed: float
    backlog: list[int]
    slope: float
    failures: int
    generator_cpu: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.answered / self.elapsed

    @property
    def held(self) -> bool:
        return (
            self.failures == 0
            and self.rate >= (1 - RATE_TOLERANCE) * self.offered
            and self.slope < SLOPE_TOLERANCE * self.offered
        )


def trend(samples: Sequence[int]) -> float:
    """Least-squares slope of per-second samples, per second."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(samples) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(samples))
    return num / sum((x - mean_x) ** 2 for x in range(n))


async def offer(
    servers: Sequence[Server],
    payloads: Sequence[bytes],
    seconds: float,
    connections: int,
    rate: float | None,
) -> tuple[set[int], int, float, list[int]]:
    """Send for ``seconds``: closed loop when ``rate`` is None, else open loop at ``rate``;
    return indices answered 200, failures, elapsed time and the backlog each second."""
    answered: set[int] = set()
    failures = 0
    due = 0  # requests due so far (open loop) or taken (closed loop)
    started = time.perf_counter()
    deadline = started + seconds
    backlog: list[int] = []

    def now_due() -> int:
        if rate is None:
            return due
        return min(len(payloads), int((time.perf_counter() - started) * rate) + 1)

    async def connection(k: int) -> None:
        nonlocal failures, due
        target = servers[k % len(servers)]
        reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            while time.perf_counter() < deadline:
                if rate is None:
                    index, due = due, due + 1
                else:
                    while due >= now_due():
                        await asyncio.sleep(max(0.0005, (due + 1) / rate - (
                            time.perf_counter() - started)))
                        if time.perf_counter() >= deadline:
                            return
                    index, due = due, due + 1
                if index >= len(payloads):
                    return
                status = await relay_intake.exchange(reader, writer, payloads[index])
                if status == b"200":
                    answered.add(index)
                else:
                    failures += 1
        finally:
            writer.close()

    async def sample() -> None:
        while time.perf_counter() < deadline:
            await asyncio.sleep(1.0)
            backlog.append(now_due() - len(answered) - failures)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(connection(k) for k in range(connections)))
    elapsed = time.perf_counter() - started
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    return answered, failures, elapsed, backlog


async def sustain(
    name: str, servers: Sequence[Server], args: argparse.Namespace
) -> tuple[float, Run, list[Run], set[int]]:
    """Capacity, then open-loop runs until one holds; the indices answered overall."""
    ceiling = int(args.ceiling * (PROBE_SECONDS + args.seconds * ATTEMPTS) * 1.1) + 100
    payloads = [
        relay_intake.request_bytes(servers[0].host, servers[0].port, n) for n in range(ceiling)
    ]
    answered_all: set[int] = set()
    probe, _f, elapsed, _b = await offer(
        servers, payloads, PROBE_SECONDS, args.connections, None
    )
    answered_all |= probe
    capacity = len(probe) / elapsed
    print(f"{name:<28} closed-loop capacity {capacity:7.0f}/s", flush=True)
    rate = capacity * args.load
    offset = len(payloads) // 4  # fresh notifications for the sustained runs
    runs: list[Run] = []
    for _attempt in range(ATTEMPTS):
        cpu0 = relay_intake.own_cpu_seconds()
        server0 = sum(s.cpu_seconds() for s in servers)
        answered, failures, elapsed, backlog = await offer(
            servers, payloads[offset:], args.seconds, args.connections, rate
        )
        answered_all |= {offset + n for n in answered}
        offset += int(rate * args.seconds * 1.05) + 1
        run = Run(rate, len(answered), elapsed, backlog, trend(backlog), failures,
                  relay_intake.own_cpu_seconds() - cpu0,
                  sum(s.cpu_seconds() for s in servers) - server0)
        runs.append(run)
        print(f"{name:<28} offered {run.offered:7.0f}/s  answered {run.rate:7.0f}/s  "
              f"backlog {backlog[:1]}…{backlog[-1:]} trend {run.slope:+.1f}/s  "
              f"failures {failures}  server CPU {100 * run.server_cpu / elapsed:4.0f} %  "
              f"generator CPU {100 * run.generator_cpu / elapsed:4.0f} %  "
              f"{'holds' if run.held else 'does not hold'}", flush=True)
        if run.held or offset + rate * args.seconds * 1.05 > len(payloads):
            break
        rate *= RETRY_FACTOR
    held = [r for r in runs if r.held]
    return capacity, (held[-1] if held else runs[-1]), runs, answered_all


async def floor_count(server: Server) -> int:
    async with httpx.AsyncClient(timeout=relay_intake.START_TIMEOUT) as client:
        return int((await client.get(f"{server.url}/count")).json()["events"])


async def run(args: argparse.Namespace) -> int:
    machine = describe_machine()
    print_machine("relay intake sustained: pointd against the floor's durable variant", machine)
    print(f"  {args.seconds:g} s open loop at {args.load:g} x capacity, {args.connections} "
          f"connections, backend {args.backend}, replicas {args.replicas}", flush=True)
    results: dict[str, Any] = {}
    async with floor_process() as memory_floor:
        _cap, memory_run, memory_runs, _answered = await sustain(
            "floor (memory, no disk)", [memory_floor], args
        )
    with tempfile.TemporaryDirectory(prefix="pointd-floor-") as directory:
        async with floor_process(Path(directory) / "floor.sqlite3") as floor:
            _cap, floor_run, floor_runs, floor_answered = await sustain(
                "floor durable (1 commit each)", [floor], args
            )
            floor_lost = max(0, len(floor_answered) - await floor_count(floor))
    name = f"pointd {args.backend} x{args.replicas}"
    with tempfile.TemporaryDirectory(prefix="pointd-sustained-") as directory:
        async with pointd_relays(args, Path(directory)) as servers:
            _cap, pointd_run, pointd_runs, pointd_answered = await sustain(name, servers, args)
            stored = await relay_intake.delivered(servers[0].url)
    pointd_lost = sum(1 for n in pointd_answered if f"rq-{n}" not in stored)
    ratio = pointd_run.rate / floor_run.rate
    met = pointd_run.held and floor_run.held and ratio >= TARGET_RATIO and not pointd_lost
    print(f"sustained: floor durable {floor_run.rate:.0f}/s (lost {floor_lost}), {name} "
          f"{pointd_run.rate:.0f}/s (lost {pointd_lost}); ratio x {ratio:.2f} "
          f"(target >= {TARGET_RATIO:g}): {'met' if met else 'missed'}", flush=True)
    ceiling = memory_run.rate / floor_run.rate
    print(f"ceiling: the floor with nothing durable held {memory_run.rate:.0f}/s "
          f"({'held' if memory_run.held else 'did not hold'}), x {ceiling:.2f} the durable "
          f"floor; the target asks for {TARGET_RATIO * floor_run.rate:.0f}/s", flush=True)
    results = {
        "machine": machine,
        "floor_memory": [vars(r) | {"rate": r.rate, "held": r.held} for r in memory_runs],
        "ceiling_ratio": ceiling,
        "floor": [vars(r) | {"rate": r.rate, "held": r.held} for r in floor_runs],
        "pointd": [vars(r) | {"rate": r.rate, "held": r.held} for r in pointd_runs],
        "ratio": ratio, "lost": {"floor": floor_lost, "pointd": pointd_lost}, "met": met,
    }
    if args.json is not None:
        print(f"figures saved to {save_json('relay_sustained', args.json, results)}")
    return 1 if pointd_lost else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--load", type=float, default=0.9, help="offered rate / capacity")
    parser.add_argument("--ceiling", type=float, default=8000.0,
                        help="requests pre-built per second of the run")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--replicas", type=int, choices=[1, 2], default=1)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.replicas == 2 and args.backend != "postgres":
        parser.error("two replicas share PostgreSQL: add --backend postgres")
    if args.quick:
        args.seconds, args.connections, args.ceiling = 1.0, 4, 1000.0
    with asyncio.Runner(loop_factory=relay_floor.loop_factory()) as runner:
        return runner.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
