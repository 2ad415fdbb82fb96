"""The floor the relay is measured against: the webhook relay one builds from the same stack.

Starlette + uvicorn (httptools and uvloop when installed, as ``pointd relay`` uses), a POST
route that puts each notification on an in-memory queue per subscriber, a server-sent-event
stream (Starlette's ``StreamingResponse``) that writes each one as it arrives, and an httpx
consumer reading it with ``aiter_lines``. Nothing durable, no signature check, no routing:
what a person reaching for a relay (smee and its kind) gets, at its best. ``--durable FILE``
is the same server with one SQLite commit per notification (WAL, ``synchronous=FULL``, on one
writer thread) before it answers: the floor for durable intake, and, with a consumer that
commits each event it reads the same way (``bench/relay_hop.py``), for a durable hop.

    python bench/relay_floor.py serve [--durable FILE]   # prints "listening on http://…"

``bench/relay_hop.py`` and ``bench/relay_sustained.py`` run it beside pointd's relay in the
same run and report pointd's figures as ratios to it; ``python bench/relay_floor.py
--quick`` only proves the floor serves and streams.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run_record import describe_machine, print_machine  # noqa: E402

from pointd.relay.cli import http_implementation, loop_factory  # noqa: E402

START_TIMEOUT = 30.0


def open_log(path: Path) -> sqlite3.Connection:
    """The floor's durable log: one table, WAL, a full fsync at every commit."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, headers TEXT, body BLOB)"
    )
    return db


def append(db: sqlite3.Connection, event_id: int, headers: str, body: bytes) -> None:
    """One notification in its own commit."""
    db.execute("BEGIN")
    db.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?)", (event_id, headers, body))
    db.execute("COMMIT")


class Floor:
    """The floor relay's state: subscribers' queues and, when durable, its one table."""

    def __init__(self, durable: Path | None) -> None:
        self._subscribers: set[asyncio.Queue[bytes]] = set()
        self._next_id = 0
        self._db: sqlite3.Connection | None = None
        self._writer = ThreadPoolExecutor(max_workers=1)
        if durable is not None:
            self._db = open_log(durable)
        self.app = Starlette(
            routes=[
                Route("/mp/webhook", self.webhook, methods=["POST"]),
                Route("/stream", self.stream, methods=["GET"]),
                Route("/count", self.count, methods=["GET"]),
            ]
        )

    async def webhook(self, request: Request) -> Response:
        """Take a notification, keep it (durable: commit it), pass it on, answer 200."""
        body = await request.body()
        self._next_id += 1
        event_id = self._next_id
        headers = json.dumps(dict(request.headers))
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._writer, append, self._db, event_id, headers, body
            )
        message = json.dumps(
            {"id": event_id, "headers": headers, "body_b64": base64.b64encode(body).decode()}
        )
        frame = f"id: {event_id}\ndata: {message}\n\n".encode()
        for queue in self._subscribers:
            queue.put_nowait(frame)
        return JSONResponse({"status": "stored", "event": event_id})

    async def stream(self, _request: Request) -> Response:
        """Every notification from now on, as server-sent events."""
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscribers.add(queue)

        async def frames() -> AsyncIterator[bytes]:
            try:
                yield b": open\n\n"
                while True:
                    yield await queue.get()
            finally:
                self._subscribers.discard(queue)

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def count(self, _request: Request) -> Response:
        """How many notifications the durable table holds (for the lost count)."""
        if self._db is None:
            return JSONResponse({"events": self._next_id})
        rows = await asyncio.get_running_loop().run_in_executor(
            self._writer, lambda: self._db.execute("SELECT COUNT(*) FROM events").fetchone()  # type: ignore[union-attr]
        )
        return JSONResponse({"events": rows[0]})


class _Announcing(uvicorn.Server):
    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets=sockets)  # type: ignore[arg-type]
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"floor listening on http://{host}:{port}/", flush=True)


def serve(durable: Path | None) -> None:
    """Serve the floor relay on a free loopback port until interrupted."""
    floor = Floor(durable)
    config = uvicorn.Config(
        floor.app,
        host="127.0.0.1",
        port=0,
        http=http_implementation(),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        runner.run(_Announcing(config).serve())


async def consume(
    url: str, on_event: Callable[[dict[str, object]], None], ready: asyncio.Event
) -> None:
    """The floor's consumer: httpx reading the stream line by line, one JSON per event."""
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client,
        client.stream("GET", f"{url}/stream") as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith(": open"):
                ready.set()
            elif line.startswith("data: "):
                on_event(json.loads(line[6:]))


async def quick() -> int:
    """Start the floor (both variants), stream three notifications through each."""
    for durable in (False, True):
        command = [sys.executable, __file__, "serve"]
        directory = tempfile.TemporaryDirectory(prefix="pointd-floor-")
        if durable:
            command += ["--durable", str(Path(directory.name) / "floor.sqlite3")]
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
            url = line.decode().split()[-1].rstrip("/")
            got: list[dict[str, object]] = []
            ready = asyncio.Event()
            reading = asyncio.create_task(consume(url, got.append, ready))
            await asyncio.wait_for(ready.wait(), START_TIMEOUT)
            async with httpx.AsyncClient() as client:
                for n in range(3):
                    answer = await client.post(f"{url}/mp/webhook", content=b'{"n": %d}' % n)
                    assert answer.status_code == 200
            deadline = time.monotonic() + START_TIMEOUT
            while len(got) < 3 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            reading.cancel()
            print(f"floor{' durable' if durable else ''}: {len(got)} of 3 streamed")
            if len(got) != 3:
                return 1
        finally:
            process.terminate()
            await process.wait()
            directory.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``serve`` the floor, or ``--quick``: prove it runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["serve"], default=None)
    parser.add_argument("--durable", type=Path, default=None, help="SQLite file: one commit each")
    parser.add_argument("--quick", action="store_true", help="prove the floor serves and streams")
    args = parser.parse_args(argv)
    if args.mode == "serve":
        serve(args.durable)
        return 0
    print_machine("relay floor (bench/relay_floor.py)", describe_machine())
    return asyncio.run(quick())


if __name__ == "__main__":
    sys.exit(main())
