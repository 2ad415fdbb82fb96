"""Hop: webhook POST → the store's journal holds it, pointd against the floor, in one run.

Each phase runs its servers and its consumer as their own processes on loopback, and this
process sends pre-built signed Point intent notifications one at a time at a steady
``--rate`` (sparse traffic: each is delivered before the next is sent) from its own thread
and event loop, stamping ``time.monotonic_ns()`` just before each POST is written. The
consumer stamps the same clock (CLOCK_MONOTONIC is shared by every process) when the event
is where its phase says, and reports the stamps at the end:

* **floor** — ``bench/relay_floor.py``: Starlette + uvicorn, in-memory queue, SSE, httpx
  consumer; stamped when the consumer has parsed the event. Nothing durable.
* **floor durable** — the same, made durable on both sides the simple way: the server commits
  each notification (one SQLite transaction, WAL, ``synchronous=FULL``) before it answers and
  streams it, and the consumer commits each event it reads the same way before it stamps.
* **pointd stream** / **pointd long-poll** — ``pointd relay`` (SQLite, or PostgreSQL with
  ``--backend postgres``, on ``--replicas`` 1 or 2 relay processes sharing one server) and
  ``RelayConsumer`` on that leg, configured as ``pointd run`` configures it (the webhook
  secret, so each event's signature is checked again), whose handler is the daemon's own
  ``NotificationHandler`` on a real pointd journal: it reads each notification and journals
  the batch (``Journal.record_relay_batch``: seen keys and cursor, one fsynced
  transaction), then gives the engine the intent hint; stamped at that hint, i.e. when the
  commit returned (the engine's fetch that the hint starts is not part of the hop).
  Durable on both sides. With two
  replicas, notifications alternate between them and two stores are read, one from each
  replica, so half of each store's events cross replicas through ``LISTEN/NOTIFY``; every
  event must reach its own store's journal once.

Per phase it prints p50/p99/max of the hop, and the CPU per event (``utime + stime`` of
``/proc/<pid>/stat`` over the phase, divided by the events) of the consumer and of the
relay; then pointd's p50 and p99 as ratios to the floor's, against the targets (≤ 1.3x; CPU
≤ 0.5 ms per event for each side). It exits 1 if an event was lost or journaled twice.

    python bench/relay_hop.py                           # SQLite, 1,000 events at 50/s per phase
    python bench/relay_hop.py --backend postgres --replicas 2
    python bench/relay_hop.py --quick                   # a few events: proves it runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import relay_floor  # noqa: E402
import relay_intake  # noqa: E402
from run_record import (  # noqa: E402
    add_run_arguments,
    describe_machine,
    print_machine,
    save_json,
    summarize,
)

from pointd.app.notifications import NotificationHandler  # noqa: E402
from pointd.journal.store import Journal  # noqa: E402
from pointd.logging import configure_logging  # noqa: E402
from pointd.relay.client import Delivery, RelayConsumer  # noqa: E402

START_TIMEOUT = 30.0
DRAIN_TIMEOUT = 60.0
WARM_UP = 20
HOP_P_TARGET = 1.3
CPU_TARGET_US = 500.0
STORES = list(relay_intake.STORES)[:2]


# ---- the consumer processes ---------------------------------------------------------------


class _JournalCursor:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def get(self) -> int:
        return int(self._journal.relay_cursor() or 0)


@dataclass
class _StampingEngine:
    """The engine side of the daemon's ``NotificationHandler``: the handler gives an intent
    hint once the batch's commit has returned (``Journal.record_relay_batch``), which is
    where the hop ends; the engine's fetch of that intent from Mercado Pago is not part of
    the hop, so the hint is stamped and dropped. Bench intents are ``bench-<n>``, sent with
    the x-request-id ``rq-<n>``."""

    stamps: dict[str, int] = field(default_factory=dict)

    async def submit(self, event: object, *, notification_key: str | None = None) -> object:
        raise RuntimeError(f"a bench notification became a core event: {event!r}")

    def hint_intent(self, intent_id: str, external_reference: str | None = None) -> bool:
        self.stamps[f"rq-{int(intent_id.removeprefix('bench-'))}"] = time.monotonic_ns()
        return True

    def hint_payment(self, payment_id: str) -> bool:
        raise RuntimeError(f"a bench notification named a payment: {payment_id}")


async def consumer_main(args: argparse.Namespace) -> None:
    """A consumer process: prints ``ready`` once connected, then answers each ``report`` on
    stdin with the stamps so far; exits when stdin closes."""
    configure_logging(level="warning", stream=sys.stderr)  # stdout carries the reports
    stamps: dict[str, int] = {}
    counts: dict[str, int] = {}  # the pointd handler's: "duplicate" is an event journaled twice
    ready = asyncio.Event()
    running: asyncio.Task[None]
    consumer: RelayConsumer | None = None
    if args.consumer == "floor":
        log = relay_floor.open_log(Path(args.journal)) if args.journal else None

        def on_floor_event(event: dict[str, Any]) -> None:
            headers = str(event["headers"])
            if log is not None:
                relay_floor.append(log, int(str(event["id"])), headers, str(event["body_b64"]))
            stamps[json.loads(headers).get("x-request-id")] = time.monotonic_ns()

        running = asyncio.create_task(relay_floor.consume(args.url, on_floor_event, ready))
    else:
        journal = Journal.open(args.journal)
        handler = NotificationHandler(_StampingEngine(stamps), journal, counts)
        consumer = RelayConsumer(
            args.url,
            args.store,
            relay_intake.STORES[args.store],
            handler,
            _JournalCursor(journal),
            webhook_secret=relay_intake.SECRET,
            delivery=args.delivery,
            on_health_change=lambda health: ready.set(),
        )
        running = asyncio.create_task(consumer.run())
    await asyncio.wait_for(ready.wait(), START_TIMEOUT)
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while await reader.readline():
        print(json.dumps({"stamps": stamps, "repeats": counts.get("duplicate", 0)}), flush=True)
    if consumer is not None:
        consumer.stop()
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


@dataclass
class ConsumerProcess:
    """A running consumer: its process, and a way to ask for its stamps."""

    process: asyncio.subprocess.Process

    async def report(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(b"report\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), START_TIMEOUT)
        report: dict[str, Any] = json.loads(line)
        return report

    def cpu_seconds(self) -> float:
        return relay_intake.proc_cpu_seconds(self.process.pid)


@contextlib.asynccontextmanager
async def consumer_process(*arguments: str) -> AsyncIterator[ConsumerProcess]:
    """A consumer process, once it says it is connected."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--consumer",
        *arguments,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    assert process.stdin is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        if line.strip() != b"ready":
            raise RuntimeError(f"consumer did not start: {line!r}")
        yield ConsumerProcess(process)
    finally:
        process.stdin.close()  # the consumer's cue to exit
        await relay_intake.stop_process(process, signal.SIGTERM)


# A server process a phase sends to: where it listens and its pid.
Server = relay_intake.RelayProcess


@contextlib.asynccontextmanager
async def floor_process(durable: Path | None = None) -> AsyncIterator[Server]:
    """``bench/relay_floor.py serve`` on a free port."""
    command = [sys.executable, str(ROOT / "bench" / "relay_floor.py"), "serve"]
    if durable is not None:
        command += ["--durable", str(durable)]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        found = re.search(rb"http://([0-9.]+):(\d+)/", line)
        if found is None:
            raise RuntimeError(f"floor did not start: {line!r}")
        yield Server(found.group(1).decode(), int(found.group(2)), process.pid)
    finally:
        await relay_intake.stop_process(process, signal.SIGINT)


# ---- one phase --------------------------------------------------------------------------


@dataclass
class Phase:
    """One phase's figures."""

    name: str
    hops_ns: list[int] = field(default_factory=list)
    consumer_cpu_us: float = 0.0
    relay_cpu_us: float = 0.0
    lost: int = 0
    repeats: int = 0

    def figures(self) -> dict[str, Any]:
        summary = summarize(self.hops_ns) if self.hops_ns else {}
        return {
            "name": self.name,
            **{key: round(value, 1) for key, value in summary.items()},
            "consumer_cpu_us_per_event": round(self.consumer_cpu_us, 1),
            "relay_cpu_us_per_event": round(self.relay_cpu_us, 1),
            "lost": self.lost,
            "journaled_twice": self.repeats,
        }

    def line(self) -> str:
        if not self.hops_ns:
            return f"{self.name:<34} no events"
        s = summarize(self.hops_ns)
        return (
            f"{self.name:<34} p50 {s['p50_us'] / 1000:6.2f} ms  p99 {s['p99_us'] / 1000:6.2f} ms  "
            f"max {s['max_us'] / 1000:6.2f} ms  consumer {self.consumer_cpu_us:6.0f} µs/event  "
            f"relay {self.relay_cpu_us:6.0f} µs/event  lost {self.lost}  twice {self.repeats}"
        )


def send_paced(targets: Sequence[Server], payloads: Sequence[tuple[str, bytes]], rate: float,
               sent: dict[str, int]) -> None:
    """Mercado Pago's side, on its own thread and loop: each payload in turn at ``rate``/s,
    alternating between the targets, stamping each just before it is written."""

    async def paced() -> None:
        connections = [await asyncio.open_connection(t.host, t.port) for t in targets]
        started = time.perf_counter()
        try:
            for k, (rid, payload) in enumerate(payloads):
                delay = started + k / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                reader, writer = connections[k % len(connections)]
                sent[rid] = time.monotonic_ns()
                if await relay_intake.exchange(reader, writer, payload) != b"200":
                    raise RuntimeError(f"notification {rid} was refused")
        finally:
            for _reader, writer in connections:
                writer.close()

    asyncio.run(paced())


async def run_phase(
    name: str,
    servers: Sequence[Server],
    consumers: Sequence[ConsumerProcess],
    payloads: Sequence[tuple[str, bytes]],
    rate: float,
) -> Phase:
    """Warm up, then send ``payloads`` and wait until every consumer holds its share."""
    phase = Phase(name)
    warm, measured = payloads[:WARM_UP], payloads[WARM_UP:]
    for part, counted in ((warm, False), (measured, True)):
        sent: dict[str, int] = {}
        cpu_before = [c.cpu_seconds() for c in consumers], [s.cpu_seconds() for s in servers]
        thread = threading.Thread(target=send_paced, args=(servers, part, rate, sent))
        thread.start()
        await asyncio.to_thread(thread.join)
        stamps: dict[str, int] = {}
        repeats = 0
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            reports = [await c.report() for c in consumers]
            stamps = {rid: t for r in reports for rid, t in r["stamps"].items()}
            repeats = sum(int(r["repeats"]) for r in reports)
            if set(sent) <= set(stamps) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if not counted:
            continue
        events = len(part)
        phase.consumer_cpu_us = 1e6 * sum(
            c.cpu_seconds() - before for c, before in zip(consumers, cpu_before[0], strict=True)
        ) / events
        phase.relay_cpu_us = 1e6 * sum(
            s.cpu_seconds() - before for s, before in zip(servers, cpu_before[1], strict=True)
        ) / events
        phase.hops_ns = [stamps[rid] - at for rid, at in sent.items() if rid in stamps]
        phase.lost = sum(1 for rid in sent if rid not in stamps)
        phase.repeats = repeats
    return phase


def payloads_for(server: Server, first: int, count: int, stores: Sequence[str]) -> list[
    tuple[str, bytes]
]:
    return [
        (f"rq-{n}", relay_intake.request_bytes(server.host, server.port, n, store))
        for n in range(first, first + count)
        for store in [stores[n % len(stores)]]
    ]


async def floor_phase(count: int, rate: float, *, durable: bool = False) -> Phase:
    name = "floor durable (1 commit each side)" if durable else "floor (memory, SSE, httpx)"
    with tempfile.TemporaryDirectory(prefix="pointd-floor-") as directory:
        log = Path(directory) / "relay.sqlite3" if durable else None
        journal = ["--journal", str(Path(directory) / "journal.sqlite3")] if durable else []
        async with (
            floor_process(log) as server,
            consumer_process("floor", "--url", server.url, *journal) as consumer,
        ):
            return await run_phase(
                name, [server], [consumer], payloads_for(server, 0, count, STORES[:1]), rate
            )


@contextlib.asynccontextmanager
async def pointd_relays(args: argparse.Namespace, directory: Path) -> AsyncIterator[list[Server]]:
    """``--replicas`` relay processes on ``--backend`` (a throw-away PostgreSQL server)."""
    async with relay_intake.backend_dsn(args.backend) as dsn:
        config = relay_intake.write_config(directory, dsn, 0.0)
        async with contextlib.AsyncExitStack() as stack:
            yield [
                await stack.enter_async_context(
                    relay_intake.relay(config, portable=False, cpu=None, profile=None)
                )
                for _ in range(args.replicas)
            ]


async def pointd_phase(args: argparse.Namespace, delivery: Delivery, count: int) -> Phase:
    stores = STORES[: args.replicas]
    name = f"pointd {args.backend}x{args.replicas} {delivery}"
    with tempfile.TemporaryDirectory(prefix="pointd-hop-") as directory:
        async with (
            pointd_relays(args, Path(directory)) as servers,
            contextlib.AsyncExitStack() as stack,
        ):
            consumers = [
                await stack.enter_async_context(
                    consumer_process(
                        "pointd", "--url", servers[k].url, "--store", store,
                        "--journal", str(Path(directory) / f"journal-{store}.sqlite3"),
                        "--delivery", str(delivery),
                    )
                )
                for k, store in enumerate(stores)
            ]
            payloads = payloads_for(servers[0], 0, count, stores)
            return await run_phase(name, servers, consumers, payloads, args.rate)


async def run(args: argparse.Namespace) -> int:
    machine = describe_machine()
    print_machine("relay hop: webhook POST → journal, pointd against the floor", machine)
    print(f"  {args.count} events per phase at {args.rate:g}/s (+{WARM_UP} warm-up), "
          f"backend {args.backend}, replicas {args.replicas}", flush=True)
    print(f"  fsync of 4 KiB appends now: {relay_intake.fsync_probe(Path(tempfile.gettempdir()))}",
          flush=True)
    count = args.count + WARM_UP
    phases = [await floor_phase(count, args.rate)]
    print(phases[-1].line(), flush=True)
    phases.append(await floor_phase(count, args.rate, durable=True))
    print(phases[-1].line(), flush=True)
    for delivery in (Delivery.STREAM, Delivery.LONG_POLL)[: 1 if args.stream_only else 2]:
        phases.append(await pointd_phase(args, delivery, count))
        print(phases[-1].line(), flush=True)
    floor, durable = summarize(phases[0].hops_ns), summarize(phases[1].hops_ns)
    stream = summarize(phases[2].hops_ns)
    p50_ratio = stream["p50_us"] / floor["p50_us"]
    p99_ratio = stream["p99_us"] / floor["p99_us"]
    print(f"pointd stream / floor durable: p50 x {stream['p50_us'] / durable['p50_us']:.2f}, "
          f"p99 x {stream['p99_us'] / durable['p99_us']:.2f}")
    verdicts = {
        "hop p50 ≤ 1.3x floor": p50_ratio <= HOP_P_TARGET,
        "hop p99 ≤ 1.3x floor": p99_ratio <= HOP_P_TARGET,
        "consumer CPU ≤ 0.5 ms/event": phases[2].consumer_cpu_us <= CPU_TARGET_US,
        "relay CPU ≤ 0.5 ms/event": phases[2].relay_cpu_us <= CPU_TARGET_US,
    }
    print(f"pointd stream / floor: p50 x {p50_ratio:.2f}, p99 x {p99_ratio:.2f}")
    for target, met in verdicts.items():
        print(f"  {target}: {'met' if met else 'missed'}")
    if args.json is not None:
        path = save_json("relay_hop", args.json, {
            "machine": machine, "phases": [p.figures() for p in phases],
            "ratios": {"p50": p50_ratio, "p99": p99_ratio,
                       "p50_durable": stream["p50_us"] / durable["p50_us"],
                       "p99_durable": stream["p99_us"] / durable["p99_us"]},
            "targets": verdicts,
        })
        print(f"figures saved to {path}")
    broken = sum(p.lost + p.repeats for p in phases)
    return 1 if broken else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="events per phase")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--replicas", type=int, choices=[1, 2], default=1)
    parser.add_argument("--stream-only", action="store_true", help="leave out the long-poll leg")
    parser.add_argument("--consumer", choices=["floor", "pointd"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--journal", help=argparse.SUPPRESS)
    parser.add_argument("--delivery", default="stream", help=argparse.SUPPRESS)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    factory = relay_floor.loop_factory()
    if args.consumer is not None:
        # pointd's consumer runs on asyncio's own loop, as `pointd run` does; the floor's
        # consumer keeps uvloop (the floor is the stack at its best).
        consumer_loop = factory if args.consumer == "floor" else None
        with asyncio.Runner(loop_factory=consumer_loop) as runner:
            runner.run(consumer_main(args))
        return 0
    if args.replicas == 2 and args.backend != "postgres":
        parser.error("two replicas share PostgreSQL: add --backend postgres")
    if args.quick:
        args.count = 20
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
