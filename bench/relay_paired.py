"""Relay CPU of two source trees served side by side in one run: a change's ratio on a busy VM.

On this shared 2-core VM the relay's CPU per event moves by ±10 % from one run to the next
(other engineers' suites), more than most single changes save, so a before/after pair of
``bench/relay_hop.py`` runs cannot tell them apart. Here both relays run at once, each
``python -m pointd.relay`` from its own tree (``--baseline`` and ``--candidate``, a checkout
or ``git archive`` of each), on the same backend kind, so that whatever loads the machine
loads both alike; the figure is the candidate's CPU as a ratio to the baseline's:

* **sparse** — a ``RelayConsumer`` per relay (the daemon's handler: one fsynced journal
  transaction per batch, as ``bench/relay_hop.py``) reads its store's stream; this process
  sends signed Point intent notifications one at a time, alternating between the relays,
  ``--rate`` per relay, so each relay sees the sparse traffic of the hop benchmark; CPU per
  event is ``utime + stime`` of the relay process over each round, divided by its events;
* **intake** — both relays offered ``--intake-rate`` open loop at the same time for
  ``--seconds`` (``bench/relay_intake.py``'s generator); CPU per answered request.

Rounds alternate which relay is sent to first. A first round of each is a warm-up and is not
counted. With the same tree twice (an A/A run) the ratio shows the method's own spread.

    python bench/relay_paired.py --baseline /tmp/main-tree            # candidate: this tree
    python bench/relay_paired.py --baseline A --candidate B --backend postgres
    python bench/relay_paired.py --quick                              # this tree against itself
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import relay_hop  # noqa: E402
import relay_intake  # noqa: E402
from run_record import add_run_arguments, describe_machine, print_machine, save_json  # noqa: E402

from pointd.relay.cli import loop_factory  # noqa: E402

STORE = relay_hop.STORES[0]
# Leaves the relays time to answer and push the last notification of a round.
SETTLE = 0.3


@dataclass
class Side:
    """One relay of the pair: its tree, its process, and its CPU and counts so far."""

    name: str
    tree: Path
    server: relay_intake.RelayProcess | None = None
    cpu: dict[str, float] = field(default_factory=lambda: {"sparse": 0.0, "intake": 0.0})
    counted: dict[str, int] = field(default_factory=lambda: {"sparse": 0, "intake": 0})

    def relay(self) -> relay_intake.RelayProcess:
        assert self.server is not None
        return self.server

    def per_unit_us(self, phase: str) -> float:
        return 1e6 * self.cpu[phase] / max(1, self.counted[phase])


@contextlib.asynccontextmanager
async def serving(sides: Sequence[Side], backend: str) -> AsyncIterator[None]:
    """Each side's relay (its own storage) and the consumer reading its store's stream."""
    async with contextlib.AsyncExitStack() as stack:
        for side in sides:
            scratch = tempfile.TemporaryDirectory(prefix="pointd-pair-")
            directory = Path(stack.enter_context(scratch))
            dsn = await stack.enter_async_context(relay_intake.backend_dsn(backend))
            config = relay_intake.write_config(directory, dsn, 0.0)
            side.server = await stack.enter_async_context(
                relay_intake.relay(config, portable=False, cpu=None, profile=None, root=side.tree)
            )
            await stack.enter_async_context(
                relay_hop.consumer_process(
                    "pointd", "--url", side.relay().url, "--store", STORE,
                    "--journal", str(directory / "journal.sqlite3"), "--delivery", "stream",
                )
            )
        yield


async def sparse_round(sides: Sequence[Side], first: int, count: int, rate: float) -> list[float]:
    """``count`` notifications to each relay, alternating; each relay's CPU seconds."""
    target = sides[0].relay()
    payloads = [
        (f"rq-{n}", relay_intake.request_bytes(target.host, target.port, n, STORE))
        for n in range(first, first + count * len(sides))
    ]
    before = [side.relay().cpu_seconds() for side in sides]
    servers = [side.relay() for side in sides]
    sender = threading.Thread(
        target=relay_hop.send_paced, args=(servers, payloads, rate * len(sides), {})
    )
    sender.start()
    await asyncio.to_thread(sender.join)
    await asyncio.sleep(SETTLE)
    return [side.relay().cpu_seconds() - b for side, b in zip(sides, before, strict=True)]


async def intake_round(
    sides: Sequence[Side], first: int, rate: float, seconds: float, connections: int
) -> list[tuple[float, int, int]]:
    """Both relays offered ``rate`` at once; each one's CPU seconds, answers and failures."""
    count = int(rate * seconds * 1.2) + 1
    loads = [
        [relay_intake.request_bytes(s.relay().host, s.relay().port, first + k * count + i)
         for i in range(count)]
        for k, s in enumerate(sides)
    ]
    before = [side.relay().cpu_seconds() for side in sides]
    results = await asyncio.gather(
        *(relay_intake.drive(s.relay(), load, seconds, connections, rate)
          for s, load in zip(sides, loads, strict=True))
    )
    return [
        (side.relay().cpu_seconds() - b, len(answered), failures)
        for side, b, (_latencies, answered, failures, _elapsed) in zip(
            sides, before, results, strict=True
        )
    ]


async def run(args: argparse.Namespace) -> int:
    machine = describe_machine()
    print_machine("relay CPU, baseline and candidate side by side", machine)
    sides = [Side("baseline", args.baseline), Side("candidate", args.candidate)]
    print(f"  baseline {args.baseline}, candidate {args.candidate}, backend {args.backend}; "
          f"sparse: {args.count} events per relay per round at {args.rate:g}/s each; intake: "
          f"{args.intake_rate:g}/s each for {args.seconds:g} s; {args.rounds} rounds + warm-up",
          flush=True)
    failures = 0
    first = 0
    async with serving(sides, args.backend):
        for n in range(args.rounds + 1):
            order = sides if n % 2 == 0 else sides[::-1]
            spent = await sparse_round(order, first, args.count, args.rate)
            first += args.count * len(order)
            intake = await intake_round(order, first, args.intake_rate, args.seconds,
                                        args.connections)
            first += 10 * int(args.intake_rate * args.seconds * 1.2 + 1)
            failures += sum(failed for _cpu, _answered, failed in intake)
            if n == 0:
                continue  # warm-up
            for side, cpu, (intake_cpu, answered, _failed) in zip(order, spent, intake,
                                                                 strict=True):
                side.cpu["sparse"] += cpu
                side.counted["sparse"] += args.count
                side.cpu["intake"] += intake_cpu
                side.counted["intake"] += answered
            print(f"round {n}: " + "   ".join(
                f"{side.name} sparse {1e6 * cpu / args.count:6.0f} µs/event, intake "
                f"{1e6 * intake_cpu / max(1, answered):5.0f} µs/request ({answered} answered)"
                for side, cpu, (intake_cpu, answered, _failed) in zip(order, spent, intake,
                                                                     strict=True)
            ), flush=True)
    baseline, candidate = sides
    ratios = {
        phase: candidate.per_unit_us(phase) / max(1e-9, baseline.per_unit_us(phase))
        for phase in ("sparse", "intake")
    }
    for side in sides:
        print(f"{side.name:<10} sparse {side.per_unit_us('sparse'):6.0f} µs/event   intake "
              f"{side.per_unit_us('intake'):5.0f} µs/request")
    print(f"candidate / baseline: sparse x {ratios['sparse']:.3f}, intake x {ratios['intake']:.3f}"
          f"   (intake failures {failures})")
    if args.json is not None:
        figures: dict[str, Any] = {
            side.name: {"tree": str(side.tree),
                        "sparse_cpu_us_per_event": round(side.per_unit_us("sparse"), 1),
                        "intake_cpu_us_per_request": round(side.per_unit_us("intake"), 1),
                        "events": side.counted["sparse"], "requests": side.counted["intake"]}
            for side in sides
        }
        path = save_json("relay_paired", args.json, {
            "benchmark": "relay_paired", "quick": args.quick, "machine": machine,
            "results": figures, "ratios": ratios, "intake_failures": failures,
        })
        print(f"figures saved to {path}")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=ROOT, help="source tree (default: this)")
    parser.add_argument("--candidate", type=Path, default=ROOT, help="source tree (default: this)")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=4, help="counted rounds (after a warm-up)")
    parser.add_argument("--count", type=int, default=400, help="sparse events per relay per round")
    parser.add_argument("--rate", type=float, default=50.0, help="sparse events/s per relay")
    parser.add_argument("--intake-rate", type=float, default=700.0, help="requests/s per relay")
    parser.add_argument("--seconds", type=float, default=8.0, help="intake seconds per round")
    parser.add_argument("--connections", type=int, default=32, help="intake connections each")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    for tree in (args.baseline, args.candidate):
        if not (tree / "pointd" / "relay" / "__main__.py").is_file():
            parser.error(f"{tree} is not a pointd source tree (no pointd/relay/__main__.py)")
    if args.quick:
        args.rounds, args.count, args.intake_rate, args.seconds = 1, 10, 50.0, 1.0
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
