"""Benchmark of the relay's intake: signed notifications per second with durable writes.

Runs real relay processes (``python -m pointd.relay``) on loopback and drives them with
pre-signed Point intent notifications over keep-alive HTTP/1.1 connections, then reads
every store stream back and counts what was answered 2xx but not delivered (must be 0).

    python bench/relay_intake.py                 # SQLite, PostgreSQL x1, PostgreSQL x2
    python bench/relay_intake.py --seconds 5 --connections 64 --only sqlite

PostgreSQL runs are skipped when no server binaries are found (see tests/support/postgres.py,
which this benchmark reuses to start a throw-away server with fsync on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pointd.cloud.signature import sign  # noqa: E402
from tests.support import postgres  # noqa: E402

SECRET = "bench-webhook-secret"  # noqa: S105 - a throw-away secret for local runs
STORES = {f"bench-{n}": f"bench-token-{n}" for n in range(4)}
# Start-up and read-back bounds on a loaded machine; the measurement itself is --seconds.
START_TIMEOUT = 30.0
BODY = (
    '{"amount": 1500, "caller_id": 9876543, "client_id": 1234567890, '
    '"created_at": "2026-01-01 12:00:00", "id": "%s", '
    '"payment": {"id": %d, "state": "approved", "type": "credit_card"}, "state": "FINISHED", '
    '"additional_info": {"external_reference": "pd1_%s_1_B%d_1"}}'
)


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


@contextlib.asynccontextmanager
async def relay(config: Path) -> AsyncIterator[tuple[str, int]]:
    """A relay process; yields its host and port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pointd.relay",
        "--config",
        str(config),
        "--port",
        "0",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        found = None
        while found is None:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
            if not line:
                raise RuntimeError("relay exited during start-up")
            found = re.search(rb"listening on http://([0-9.]+):(\d+)/", line)
        drain = asyncio.create_task(_drain(process.stdout))
        yield found.group(1).decode(), int(found.group(2))
        drain.cancel()
    finally:
        process.terminate()
        await process.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def request_bytes(host: str, port: int, n: int) -> tuple[bytes, str]:
    """A signed intent notification as raw HTTP/1.1, and its request id."""
    store = list(STORES)[n % len(STORES)]
    intent_id = f"bench-{n:09d}"
    body = (BODY % (intent_id, 10**9 + n, store, n)).encode()
    request_id = f"rq-{n}"
    signature = sign(SECRET, data_id=intent_id, request_id=request_id, ts=str(int(time.time())))
    head = (
        f"POST /mp/webhook HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"x-request-id: {request_id}\r\nx-signature: {signature}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body, request_id


async def drive(
    targets: Sequence[tuple[str, int]], seconds: float, connections: int
) -> tuple[list[float], set[str], int]:
    """Send for ``seconds`` over ``connections`` keep-alive connections."""
    latencies: list[float] = []
    answered: set[str] = set()
    failures = 0
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def connection(index: int) -> None:
        nonlocal failures
        host, port = targets[index % len(targets)]
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                payload, request_id = request_bytes(host, port, next(counter))
                started = time.perf_counter()
                writer.write(payload)
                status_line = await reader.readline()
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if status_line.split()[1] == b"200":
                    answered.add(request_id)
                else:
                    failures += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(connections)))
    return latencies, answered, failures


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


async def scenario(name: str, dsn: str | None, replicas: int, args: argparse.Namespace) -> None:
    """Run one configuration and print its figures."""
    with tempfile.TemporaryDirectory(prefix="pointd-bench-") as directory:
        config = write_config(Path(directory), dsn, args.batch_wait)
        async with contextlib.AsyncExitStack() as stack:
            targets = [await stack.enter_async_context(relay(config)) for _ in range(replicas)]
            started = time.perf_counter()
            latencies, answered, failures = await drive(targets, args.seconds, args.connections)
            elapsed = time.perf_counter() - started
            host, port = targets[0]
            lost = answered - await delivered(f"http://{host}:{port}")
        latencies.sort()
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
        print(
            f"{name:<22} {len(answered) / elapsed:>8.0f}/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
            f"answered {len(answered):>7}  non-2xx {failures}  lost {len(lost)}",
            flush=True,
        )


async def main() -> int:
    """Run the selected scenarios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch-wait", type=float, default=0.002)
    parser.add_argument("--only", choices=["sqlite", "postgres"], default=None)
    args = parser.parse_args()
    print(
        f"relay intake, {args.connections} connections, {args.seconds:g} s, "
        f"batch_wait {args.batch_wait:g}, {os.cpu_count()} CPUs",
        flush=True,
    )
    if args.only in (None, "sqlite"):
        await scenario("sqlite", None, 1, args)
    if args.only in (None, "postgres"):
        if postgres.find_binaries() is None:
            print("postgres: skipped, no server binaries found")
            return 0
        server = postgres.start_server(durable=True)
        try:
            await scenario("postgres, 1 replica", server.fresh_database(), 1, args)
            await scenario("postgres, 2 replicas", server.fresh_database(), 2, args)
        finally:
            postgres.stop_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
