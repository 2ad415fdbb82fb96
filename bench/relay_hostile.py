"""Benchmark: genuine signed notifications keep their latency while hostile clients flood the relay.

Runs a real ``pointd relay`` process (SQLite, ``synchronous=FULL``) on loopback. A genuine
sender (this process) posts signed Point intent notifications at a steady ``--rate`` over
``--connections`` keep-alive connections and times each POST until its 200 (durable). It
does so twice, in the same run: first alone (the *reference*), then while ``--workers``
hostile processes, each with ``--hostile-connections`` connections, post bodies crafted to
make a JSON reader work hard (tests/security/hostile_bodies.py) at ``--body-limit`` bytes,
as fast as the relay answers them. Their mix: unsigned webhooks, webhooks with a
well-formed forged ``x-signature`` (the MACs are computed, and the body's id scanned), IPN at
the body limit (refused 413), and IPN at the unsigned limit with a unique body each time
(parsed and stored: anyone may post IPN). Afterwards every genuine notification answered
200 must be in its store's stream (``lost`` must be 0; the script exits 1 otherwise).

Printed: the machine and load, a CPU calibration (a fixed pure-Python workload, best of
5), the reference and the hostile run's genuine p50/p99/max, the ratio of the two p99s,
the hostile requests answered per second by status, and the CPU the relay used.

    python bench/relay_hostile.py                    # 10 s each phase, 8 hostile connections
    python bench/relay_hostile.py --workers 2 --hostile-connections 16 --seconds 20
    python bench/relay_hostile.py --quick            # a few requests: proves it runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import relay_intake  # noqa: E402 - a sibling script, importable from bench/
from relay_intake import (  # noqa: E402
    Figures,
    RelayProcess,
    delivered,
    drive,
    exchange,
    percentile,
    request_bytes,
)
from run_record import add_run_arguments, describe_machine, print_machine, save_json  # noqa: E402

from tests.security.hostile_bodies import crafted_bodies  # noqa: E402

UNSIGNED_BODY_LIMIT = 16384  # pointd.relay.intake.UNSIGNED_BODY_LIMIT
TARGET_P99_MS = 50.0


def _request(host: str, port: int, target: str, body: bytes, extra: str = "") -> bytes:
    head = (
        f"POST {target} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"{extra}content-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def hostile_requests(host: str, port: int, body_limit: int) -> list[bytes]:
    """One request of each hostile kind for every crafted body (IPN bodies made unique by
    the caller)."""
    requests: list[bytes] = []
    webhook = "/mp/webhook?data.id=58980959081&type=stop_delivery_op_wh"
    for body in crafted_bodies(body_limit).values():
        forged = f"x-request-id: hostile\r\nx-signature: ts={int(time.time())},v1={'0' * 64}\r\n"
        requests += [
            _request(host, port, webhook, body),
            _request(host, port, webhook, body, forged),
            _request(host, port, "/mp/webhook?topic=delivery_cancellation&id=1", body),
        ]
    return requests


def stored_ipn(host: str, port: int, body: bytes, n: int) -> bytes:
    """An IPN at the unsigned limit, unique, so that each one is parsed and stored."""
    unique = f"{n:012d}".encode()
    return _request(
        host,
        port,
        "/mp/webhook?topic=delivery_cancellation&id=1",
        unique + body[: UNSIGNED_BODY_LIMIT - len(unique)],
    )


async def hostile_worker(host: str, port: int, connections: int, seconds: float,
                         body_limit: int, *, store_ipn: bool) -> dict[str, Any]:
    """Post hostile requests on ``connections`` connections for ``seconds``; count answers."""
    fixed = hostile_requests(host, port, body_limit)
    ipn_bodies = list(crafted_bodies(UNSIGNED_BODY_LIMIT).values())
    statuses: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds
    sent = 0

    async def connection(index: int) -> None:
        nonlocal sent
        n = index
        while time.perf_counter() < deadline:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                while time.perf_counter() < deadline:
                    if store_ipn and n % 4 == 3:
                        payload = stored_ipn(host, port, ipn_bodies[n % len(ipn_bodies)],
                                             n * connections + index + os.getpid() * 10**7)
                    else:
                        payload = fixed[n % len(fixed)]
                    sent += len(payload)
                    statuses[(await exchange(reader, writer, payload)).decode()] += 1
                    n += 1  # a request lost to a closed connection is sent again
            except (ConnectionError, asyncio.IncompleteReadError):
                # The relay closes a connection after a refusal: dial again, as an attacker
                # would.
                statuses["closed"] += 1
            finally:
                writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(i) for i in range(connections)))
    return {
        "statuses": dict(statuses),
        "seconds": time.perf_counter() - started,
        "bytes": sent,
    }


async def genuine_phase(target: RelayProcess, args: argparse.Namespace,
                        first: int) -> tuple[list[float], set[int], int]:
    """Post genuine signed notifications at args.rate for args.seconds; latencies (s),
    indices answered 200, failures."""
    count = int(args.rate * args.seconds) + 1
    payloads = [request_bytes(target.host, target.port, first + n) for n in range(count)]
    latencies, answered, failures, _elapsed = await drive(
        target, payloads, args.seconds, args.connections, args.rate
    )
    return sorted(latencies), {first + index for index in answered}, failures


def _summary(latencies: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(latencies),
        "p50 ms": percentile(latencies, 0.5),
        "p99 ms": percentile(latencies, 0.99),
        "max ms": latencies[-1] * 1000,
    }


async def run(args: argparse.Namespace) -> int:
    """The reference phase, then the hostile phase; print both and what was lost."""
    machine = describe_machine()
    print_machine("relay under hostile load (bench/relay_hostile.py)", machine)
    calibration = machine["calibration_ms"]
    results: list[Figures] = []
    with tempfile.TemporaryDirectory() as directory:
        config = relay_intake.write_config(Path(directory), None, 0.0)
        async with relay_intake.relay(config, portable=False, cpu=None, profile=None) as target:
            cpu_before = target.cpu_seconds()
            reference, answered_ref, failed_ref = await genuine_phase(target, args, 0)
            cpu_reference = target.cpu_seconds() - cpu_before
            workers = [
                await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--hostile-worker", target.host, str(target.port),
                    "--hostile-connections", str(args.hostile_connections),
                    "--seconds", str(args.seconds + 1.0), "--body-limit", str(args.body_limit),
                    *(["--no-stored-ipn"] if args.no_stored_ipn else []),
                    stdout=asyncio.subprocess.PIPE,
                )
                for _ in range(args.workers)
            ]
            await asyncio.sleep(0.5)  # let the flood build up before timing genuine requests
            cpu_before = target.cpu_seconds()
            hostile, answered_hostile, failed_hostile = await genuine_phase(
                target, args, 10_000_000
            )
            cpu_hostile = target.cpu_seconds() - cpu_before
            reports = [
                json.loads((await asyncio.wait_for(worker.communicate(), 60))[0])
                for worker in workers
            ]
            found = await delivered(target.url)
    answered = answered_ref | answered_hostile
    lost = len({f"rq-{n}" for n in answered} - found)
    statuses: Counter[str] = Counter()
    for report in reports:
        statuses.update(report["statuses"])
    hostile_seconds = max(report["seconds"] for report in reports)
    for name, latencies, failed, cpu in (
        ("genuine alone (reference)", reference, failed_ref, cpu_reference),
        ("genuine under hostile load", hostile, failed_hostile, cpu_hostile),
    ):
        values = {**_summary(latencies), "failed": failed, "relay cpu %": 100 * cpu / args.seconds}
        results.append(Figures(name, values))
    ratio = results[1].values["p99 ms"] / max(results[0].values["p99 ms"], 1e-9)
    results.append(Figures("hostile requests", {
        "answered/s": sum(statuses.values()) / hostile_seconds,
        "MB/s sent": sum(report["bytes"] for report in reports) / hostile_seconds / 1e6,
        **{f"status {status}": count for status, count in sorted(statuses.items())},
    }))
    for figures in results:
        print(figures.line(), flush=True)
    p99 = results[1].values["p99 ms"]
    print(f"p99 under hostile load / reference p99: {ratio:.2f}; p99 {p99:.2f} ms "
          f"= {p99 / calibration:.3f} calibrations; target p99 <= {TARGET_P99_MS:g} ms: "
          f"{'met' if p99 <= TARGET_P99_MS else 'missed'}; lost {lost}", flush=True)
    if args.json is not None:
        path = save_json("relay_hostile", args.json, {
            "benchmark": "relay_hostile", "quick": args.quick, "machine": machine,
            "figures": {f.name: f.values for f in results},
            "p99 ratio": ratio, "lost": lost,
        })
        print(f"figures saved to {path}")
    return 1 if lost else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run (or be one hostile worker)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--rate", type=float, default=100.0, help="genuine notifications/s")
    parser.add_argument("--connections", type=int, default=4, help="genuine connections")
    parser.add_argument("--workers", type=int, default=1, help="hostile processes")
    parser.add_argument("--hostile-connections", type=int, default=8, help="per hostile process")
    parser.add_argument("--body-limit", type=int, default=262144, help="intake.body_limit")
    parser.add_argument(
        "--no-stored-ipn",
        action="store_true",
        help="hostile clients send only requests the relay refuses (no unique IPN to store)",
    )
    add_run_arguments(parser)
    parser.add_argument("--hostile-worker", nargs=2, metavar=("HOST", "PORT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hostile_worker:
        host, port = args.hostile_worker
        report = asyncio.run(hostile_worker(host, int(port), args.hostile_connections,
                                            args.seconds, args.body_limit,
                                            store_ipn=not args.no_stored_ipn))
        print(json.dumps(report))
        return 0
    if args.quick:
        args.seconds, args.rate, args.hostile_connections = 1.0, 20.0, 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
