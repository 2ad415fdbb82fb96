"""Benchmark of the relay: signed durable intake throughput, and the hop into a store's journal.

Runs real relay processes (``python -m pointd.relay``) on loopback. The load generator is
this process: raw asyncio streams over keep-alive HTTP/1.1 connections, every request
signed and serialised before the clock starts, so that the generator's own work per
request is a write and a read. Each figure is printed with the CPU seconds the relay
process and the generator used, to show which of them was the bottleneck.

Intake: ``--connections`` connections send for ``--seconds`` (closed loop; with ``--rate``,
paced to that many requests per second in total). Afterwards every store stream is read
back and each request answered 2xx but not delivered counts as lost (must be 0).

Hop: notifications sent one at a time at a steady ``--hop-rate`` while a
``pointd.relay.client.RelayConsumer`` reads its store (streaming); the time is from just
before the POST is written until the consumer's handler has committed the event to a real
pointd journal (``Journal.record_relay_batch``: the batch's seen keys and cursor, one
fsync). Then the consumer goes away for
``--away`` notifications, comes back, and every one must reach the journal exactly once.

    python bench/relay_intake.py                       # fast (httptools+uvloop) and portable
    python bench/relay_intake.py --impl fast --seconds 10 --connections 64 --pin
    python bench/relay_intake.py --only hop --hop-count 2000
    python bench/relay_intake.py --profile /tmp/relay.prof --impl fast --only intake
    python bench/relay_intake.py --backend postgres    # needs PostgreSQL server binaries
    python bench/relay_intake.py --quick               # a few requests: proves it runs

PostgreSQL runs reuse tests/support/postgres.py to start a throw-away server with fsync on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import pstats
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pointd.cloud.signature import sign  # noqa: E402
from pointd.journal.store import Journal  # noqa: E402
from pointd.relay.client import RelayConsumer, RelayEvent  # noqa: E402
from tests.support import postgres  # noqa: E402

SECRET = "bench-webhook-secret"  # noqa: S105 - a throw-away secret for local runs
STORES = {f"bench-{n}": f"bench-token-{n}" for n in range(4)}
HOP_STORE = "bench-0"
RESULTS = ROOT / "bench" / "results"
# Start-up, shutdown and read-back bounds on a loaded machine; the measurements are separate.
START_TIMEOUT = 30.0
# The hop phase waits this long for the last notifications to reach the journal.
DRAIN_TIMEOUT = 60.0
BODY = (
    '{"amount": 1500, "caller_id": 9876543, "client_id": 1234567890, '
    '"created_at": "2026-01-01 12:00:00", "id": "%s", '
    '"payment": {"id": %d, "state": "approved", "type": "credit_card"}, "state": "FINISHED", '
    '"additional_info": {"external_reference": "pd1_%s_1_B%d_1"}}'
)


@dataclass
class Figures:
    """One scenario's results."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The figures as one printed line."""
        parts = [f"{self.name:<30}"]
        for key, value in self.values.items():
            parts.append(f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}")
        return "  ".join(parts)


def write_config(directory: Path, dsn: str | None, batch_wait: float) -> Path:
    """A relay.toml for the bench stores, secrets in 0600 files."""
    for name, value in (("secret", SECRET), ("dsn", dsn or "unused")):
        (directory / name).write_text(value)
        (directory / name).chmod(0o600)
    storage = (
        'backend = "postgres"\npostgres_dsn_file = "./dsn"\n'
        if dsn
        else 'backend = "sqlite"\nsqlite_path = "./relay.sqlite3"\n'
    )
    stores = "".join(
        f'[[stores]]\nid = "{s}"\ntoken_sha256 = "{hashlib.sha256(t.encode()).hexdigest()}"\n'
        for s, t in STORES.items()
    )
    config = directory / "relay.toml"
    config.write_text(
        '[intake]\nwebhook_secret_file = "./secret"\n'
        f"[storage]\n{storage}batch_wait = {batch_wait}\n" + stores
    )
    return config


@dataclass
class RelayProcess:
    """A running relay: where it listens and its pid (for CPU accounting)."""

    host: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://{self.host}:{self.port}"

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds used so far, all threads."""
        return proc_cpu_seconds(self.pid)


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process used so far, all threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stop_process(process: asyncio.subprocess.Process, how: signal.Signals) -> None:
    """Send ``how`` and wait for the exit; kill what does not exit within START_TIMEOUT."""
    if process.returncode is None:
        process.send_signal(how)
    try:
        await asyncio.wait_for(process.wait(), START_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()


@contextlib.asynccontextmanager
async def relay(
    config: Path,
    *,
    portable: bool,
    cpu: int | None,
    profile: Path | None,
    root: Path = ROOT,
) -> AsyncIterator[RelayProcess]:
    """A relay process run from the tree at ``root``; yields where it listens."""
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "cProfile", "-o", str(profile)]
    command += ["-m", "pointd.relay", "--config", str(config), "--port", "0"]
    command += ["--log-level", "warning"] + (["--portable"] if portable else [])
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    if cpu is not None:
        os.sched_setaffinity(process.pid, {cpu})
    drain: asyncio.Task[None] | None = None
    try:
        found = None
        while found is None:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
            if not line:
                raise RuntimeError("relay exited during start-up")
            found = re.search(rb"listening on http://([0-9.]+):(\d+)/", line)
        drain = asyncio.create_task(_drain(process.stdout))
        yield RelayProcess(found.group(1).decode(), int(found.group(2)), process.pid)
    finally:
        # SIGINT, not SIGTERM: uvicorn re-raises the signal it caught once it has shut
        # down, and only KeyboardInterrupt lets cProfile write its file.
        await stop_process(process, signal.SIGINT)
        if drain is not None:
            drain.cancel()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def request_bytes(host: str, port: int, n: int, store: str | None = None) -> bytes:
    """Signed intent notification number ``n`` as raw HTTP/1.1 (its x-request-id is rq-n)."""
    store = store or list(STORES)[n % len(STORES)]
    intent_id = f"bench-{n:09d}"
    body = (BODY % (intent_id, 10**9 + n, store, n)).encode()
    request_id = f"rq-{n}"
    signature = sign(SECRET, data_id=intent_id, request_id=request_id, ts=str(int(time.time())))
    head = (
        f"POST /mp/webhook HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"x-request-id: {request_id}\r\nx-signature: {signature}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    """Send one request on a keep-alive connection; return its status code."""
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return head[9:12]


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values, in milliseconds."""
    index = min(len(ordered) - 1, max(0, int(len(ordered) * fraction + 0.999999) - 1))
    return ordered[index] * 1000


async def drive(
    target: RelayProcess,
    payloads: list[bytes],
    seconds: float,
    connections: int,
    rate: float | None,
) -> tuple[list[float], set[int], int, float]:
    """Send pre-built requests for ``seconds``; latencies, indices answered 200, failures."""
    latencies: list[float] = []
    answered: set[int] = set()
    failures = 0
    next_index = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def connection() -> None:
        nonlocal failures, next_index
        reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            while next_index < len(payloads):
                index = next_index
                next_index += 1
                if rate is not None:
                    delay = started + index / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                sent = time.perf_counter()
                if sent >= deadline:
                    break
                status = await exchange(reader, writer, payloads[index])
                latencies.append(time.perf_counter() - sent)
                if status == b"200":
                    answered.add(index)
                else:
                    failures += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return latencies, answered, failures, time.perf_counter() - started


async def delivered(base: str) -> set[str]:
    """Request ids found in every bench store's stream."""
    found: set[str] = set()
    async with httpx.AsyncClient(base_url=base, timeout=START_TIMEOUT) as client:
        for store, token in STORES.items():
            after = 0
            while True:
                page = (
                    await client.get(
                        f"/stores/{store}/events",
                        params={"after": after, "limit": 500},
                        headers={"authorization": f"Bearer {token}"},
                    )
                ).json()
                if not page["events"]:
                    break
                found.update(e["headers"]["x-request-id"] for e in page["events"])
                after = page["cursor"]
    return found


@contextlib.asynccontextmanager
async def backend_dsn(backend: str) -> AsyncIterator[str | None]:
    """None for SQLite, or a fresh database on a throw-away durable PostgreSQL server."""
    if backend == "sqlite":
        yield None
        return
    server = postgres.start_server(durable=True)
    try:
        yield server.fresh_database()
    finally:
        postgres.stop_server(server)


async def intake_scenario(args: argparse.Namespace, portable: bool) -> Figures:
    """Drive one relay and count what was answered, delivered and lost."""
    name = f"intake {args.backend} {'portable' if portable else 'fast'}"
    if args.rate:
        name += f" @{args.rate:g}/s"
    if args.relay_root != ROOT:
        name += f" [{args.relay_root}]"
    with tempfile.TemporaryDirectory(prefix="pointd-bench-") as directory:
        async with backend_dsn(args.backend) as dsn:
            config = write_config(Path(directory), dsn, args.batch_wait)
            profile = args.profile if args.profile and not portable else None
            async with relay(
                config,
                portable=portable,
                cpu=0 if args.pin else None,
                profile=profile,
                root=args.relay_root,
            ) as target:
                expected = int((args.rate or args.ceiling) * args.seconds * 1.1) + 100
                payloads = [request_bytes(target.host, target.port, n) for n in range(expected)]
                relay_cpu, own_cpu = target.cpu_seconds(), own_cpu_seconds()
                latencies, answered, failures, elapsed = await drive(
                    target, payloads, args.seconds, args.connections, args.rate
                )
                relay_cpu, own_cpu = target.cpu_seconds() - relay_cpu, own_cpu_seconds() - own_cpu
                found = await delivered(target.url)
                commits = await commit_figures(target.url)
            if profile is not None:
                print_profile(profile)
    lost = {n for n in answered if f"rq-{n}" not in found}
    latencies.sort()
    return Figures(
        name,
        {
            "rate/s": round(len(answered) / elapsed),
            "p50 ms": percentile(latencies, 0.50),
            "p99 ms": percentile(latencies, 0.99),
            "max ms": latencies[-1] * 1000 if latencies else 0.0,
            "answered": len(answered),
            "non-2xx": failures,
            "lost": len(lost),
            "relay cpu %": 100 * relay_cpu / elapsed,
            "generator cpu %": 100 * own_cpu / elapsed,
            **commits,
        },
    )


async def commit_figures(base: str) -> dict[str, float]:
    """Mean group-commit size and duration, from the relay's /metrics."""
    async with httpx.AsyncClient(base_url=base, timeout=START_TIMEOUT) as client:
        text = (await client.get("/metrics")).text
    values = {
        name: float(value)
        for name, value in re.findall(r"^(pointd_relay_\w+) ([0-9.e+-]+)$", text, re.MULTILINE)
    }
    commits = values.get("pointd_relay_commit_seconds_count", 0.0) or 1.0
    return {
        "items/commit": values.get("pointd_relay_committed_items_total", 0.0) / commits,
        "ms/commit": 1000 * values.get("pointd_relay_commit_seconds_sum", 0.0) / commits,
    }


def own_cpu_seconds() -> float:
    """This process's user plus system CPU seconds so far."""
    times = os.times()
    return times.user + times.system


def print_profile(path: Path) -> None:
    """The relay's hottest functions by own time (main thread: the event loop)."""
    for _ in range(50):
        if path.exists():
            break
        time.sleep(0.1)
    if not path.exists():
        print(f"profile: {path} was not written")
        return
    print(f"profile of the relay's event-loop thread ({path}), top by own time:")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(18)


class _JournalCursor:
    """The consumer's cursor kept in the journal, as the daemon keeps it."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def get(self) -> int:
        value = self._journal.relay_cursor()
        return int(value) if value else 0


async def hop_scenario(args: argparse.Namespace) -> list[Figures]:
    """POST → relay → long-polling consumer → fsynced journal row; then an away period."""
    count, away, rate = args.hop_count, args.away, args.hop_rate
    with tempfile.TemporaryDirectory(prefix="pointd-bench-hop-") as directory:
        async with backend_dsn(args.backend) as dsn:
            config = write_config(Path(directory), dsn, args.batch_wait)
            journal = Journal.open(Path(directory) / "journal.sqlite3")
            async with relay(
                config, portable=False, cpu=0 if args.pin else None, profile=None
            ) as target:
                sent_at: dict[str, float] = {}
                answers: list[float] = []
                journaled_at: dict[str, float] = {}
                repeats = 0

                async def handler(events: Sequence[RelayEvent], cursor: int) -> None:
                    nonlocal repeats
                    keys = [f"relay:{event.id}" for event in events]
                    recorded = journal.record_relay_batch(keys, cursor)
                    now = time.perf_counter()
                    for event, fresh in zip(events, recorded, strict=True):
                        if not fresh:
                            repeats += 1
                            continue
                        journaled_at[event.headers["x-request-id"]] = now

                def consumer() -> RelayConsumer:
                    return RelayConsumer(
                        target.url,
                        HOP_STORE,
                        STORES[HOP_STORE],
                        handler,
                        _JournalCursor(journal),
                        canary_interval=3600.0,
                    )

                payloads = [
                    request_bytes(target.host, target.port, n, HOP_STORE)
                    for n in range(count + away)
                ]

                def send(indices: range) -> None:
                    """Mercado Pago's side, on its own thread and event loop: the consumer's
                    journal fsyncs block the main loop, as they block the daemon's, and must
                    not delay reading the relay's answer."""

                    async def paced() -> None:
                        reader, writer = await asyncio.open_connection(target.host, target.port)
                        started = time.perf_counter()
                        try:
                            for k, n in enumerate(indices):
                                delay = started + k / rate - time.perf_counter()
                                if delay > 0:
                                    await asyncio.sleep(delay)
                                sent_at[f"rq-{n}"] = sent = time.perf_counter()
                                if await exchange(reader, writer, payloads[n]) != b"200":
                                    raise RuntimeError(f"notification {n} was refused")
                                answers.append(time.perf_counter() - sent)
                        finally:
                            writer.close()

                    asyncio.run(paced())

                first = consumer()
                running = asyncio.create_task(first.run())
                await first.poll_once(wait=0)  # connected before the clock starts
                relay_cpu, own_cpu = target.cpu_seconds(), own_cpu_seconds()
                t0 = time.perf_counter()
                await asyncio.to_thread(send, range(count))
                await _until(lambda: len(journaled_at) >= count)
                elapsed = time.perf_counter() - t0
                relay_cpu, own_cpu = target.cpu_seconds() - relay_cpu, own_cpu_seconds() - own_cpu
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
                await first.close()

                await asyncio.to_thread(send, range(count, count + away))  # the store is away
                back = time.perf_counter()
                second = consumer()
                running = asyncio.create_task(second.run())
                await _until(lambda: len(journaled_at) >= count + away)
                caught_up = time.perf_counter() - back
                second.stop()
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
                await second.close()
            missing = [n for n in range(count + away) if f"rq-{n}" not in journaled_at]
            journal.close()
    hops = sorted(journaled_at[f"rq-{n}"] - sent_at[f"rq-{n}"] for n in range(count))
    answered = sorted(answers[:count])
    return [
        Figures(
            f"hop POST→200 @{rate:g}/s",
            {
                "notifications": count,
                "p50 ms": percentile(answered, 0.50),
                "p99 ms": percentile(answered, 0.99),
                "max ms": answered[-1] * 1000,
            },
        ),
        Figures(
            f"hop POST→journal {args.backend} @{rate:g}/s",
            {
                "notifications": count,
                "p50 ms": percentile(hops, 0.50),
                "p99 ms": percentile(hops, 0.99),
                "max ms": hops[-1] * 1000,
                "relay cpu %": 100 * relay_cpu / elapsed,
                "bench cpu %": 100 * own_cpu / elapsed,
            },
        ),
        Figures(
            "hop, consumer away",
            {
                "sent while away": away,
                "catch-up ms": caught_up * 1000,
                "lost": len(missing),
                "journaled twice": repeats,
            },
        ),
    ]


async def _until(condition: Any) -> None:
    deadline = time.perf_counter() + DRAIN_TIMEOUT
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("notifications did not all reach the journal")
        await asyncio.sleep(0.005)


def fsync_probe(directory: Path, count: int = 200) -> dict[str, float]:
    """fsync latency of 4 KiB appends in ``directory`` now: the floor under every durable
    commit, and on a shared machine the figure that moves most between runs."""
    timings: list[float] = []
    with tempfile.NamedTemporaryFile(dir=directory) as probe:
        for _ in range(count):
            probe.write(b"x" * 4096)
            probe.flush()
            started = time.perf_counter()
            os.fsync(probe.fileno())
            timings.append(time.perf_counter() - started)
    timings.sort()
    return {
        "fsync p50 ms": round(percentile(timings, 0.5), 3),
        "fsync p99 ms": round(percentile(timings, 0.99), 3),
    }


def _pressure(resource: str) -> str:
    """Linux PSI: the share of time some task waited for ``resource`` (other load)."""
    try:
        return Path(f"/proc/pressure/{resource}").read_text().splitlines()[0]
    except OSError:
        return "unavailable"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "httptools": importlib.util.find_spec("httptools") is not None,
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "load average": [round(load, 2) for load in os.getloadavg()],
        "cpu pressure": _pressure("cpu"),
        "io pressure": _pressure("io"),
        **fsync_probe(Path(tempfile.gettempdir())),
    }


async def run(args: argparse.Namespace) -> int:
    """Run the selected scenarios and print (and optionally save) their figures."""
    if args.pin:
        os.sched_setaffinity(0, {1})
    print(f"machine: {json.dumps(machine())}", flush=True)
    print(
        f"settings: backend {args.backend}, {args.connections} connections, "
        f"{args.seconds:g} s, batch_wait {args.batch_wait:g}, pin {args.pin}",
        flush=True,
    )
    if args.backend == "postgres" and postgres.find_binaries() is None:
        print("postgres: skipped, no server binaries found")
        return 0
    results: list[Figures] = []
    if args.only in (None, "intake"):
        for portable in {"fast": [False], "portable": [True], "both": [False, True]}[args.impl]:
            results.append(await intake_scenario(args, portable))
            print(results[-1].line(), flush=True)
    if args.only in (None, "hop"):
        for figures in await hop_scenario(args):
            results.append(figures)
            print(figures.line(), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "results": [{"name": f.name, **f.values} for f in results],
                },
                indent=2,
            )
        )
    lost = sum(int(f.values.get("lost", 0)) for f in results)
    return 1 if lost else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="intake run length")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=None, help="pace intake to this total")
    parser.add_argument(
        "--ceiling",
        type=float,
        default=8000.0,
        help="requests pre-built per second of a closed-loop run",
    )
    parser.add_argument("--batch-wait", type=float, default=0.0)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--impl", choices=["fast", "portable", "both"], default="both")
    parser.add_argument("--only", choices=["intake", "hop"], default=None)
    parser.add_argument("--hop-count", type=int, default=1000)
    parser.add_argument("--hop-rate", type=float, default=200.0)
    parser.add_argument("--away", type=int, default=500, help="notifications sent while away")
    parser.add_argument("--pin", action="store_true", help="relay on CPU 0, generator on CPU 1")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the fast relay")
    parser.add_argument(
        "--json",
        type=Path,
        nargs="?",
        const=RESULTS / f"relay_intake-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json",
        default=None,
        help="also write the figures as JSON (default bench/results/relay_intake-<date>.json)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run: proves it works")
    parser.add_argument(
        "--relay-root",
        type=Path,
        default=ROOT,
        help="run the intake relay from another checkout (before/after comparisons)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.connections, args.ceiling = 0.3, 4, 2000.0
        args.hop_count, args.away, args.hop_rate = 20, 10, 200.0
    # uvloop, when installed, keeps the generator's own cost per request down.
    factory = None
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop  # noqa: PLC0415

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
