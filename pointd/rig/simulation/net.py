"""HTTP between simulated processes: in memory, through the daemon's own httpx ports.

Theory of operation
-------------------
A ``Host`` is a server process's listener: an ASGI app (the cloud simulator's, the relay's)
bound to the ``Process`` that serves it. ``Network.transport(client)`` is an
``httpx.AsyncBaseTransport`` the client hands to its httpx client (the daemon gets one for
the cloud and one for the relay through ``Ports``; the cloud one for its webhooks). A request
travels for a seeded latency, then runs as a task *of the host's process*, so that it goes
on when the client dies and dies when the host does; the answer travels back the same way.

Faults are armed on the network (``arm``) and fire on the next request they match:
``refused`` (the request never left: ``httpx.ConnectError``), ``timeout_after`` (the host
acted and answered, the client hears nothing until its own read timeout), ``reset_after``
(the host acted, the connection dropped before the answer), ``unavailable`` (a 503 from in
front of the host). Each fault that fires is counted and written to the trace. A request to
a host that is down is refused; a request in flight when its host dies is reset. A client
that gives up (its timeout, or it died) disconnects: the app's ``receive`` then says so.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.types import ASGIApp, Message

from pointd.rig.simulation.loop import Process

# One way across the store's internet link, in seconds.
LATENCY = (0.002, 0.040)
FAULT_KINDS = ("refused", "timeout_after", "reset_after", "unavailable")
# Trip-wire actions run in no process's name.
_NOBODY = contextvars.Context()


@dataclass
class Armed:
    """A fault waiting for the next request it matches."""

    kind: str
    client: str | None
    host: str | None
    method: str | None
    path_part: str | None
    label: str
    count: int = 1

    def matches(self, client: str, host: str, request: httpx.Request) -> bool:
        """Whether this request is the one the fault waits for."""
        return ((self.client is None or self.client == client)
                and (self.host is None or self.host == host)
                and (self.method is None or self.method == request.method)
                and (self.path_part is None or self.path_part in request.url.path))


@dataclass
class Trip:
    """Something to do the moment a matching request has reached its host."""

    match: Armed
    action: Callable[[], None]


@dataclass
class _Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool


class Host:
    """A server process's HTTP listener."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._app: ASGIApp | None = None
        self._process: Process | None = None
        self._in_flight: set[asyncio.Future[_Answer]] = set()
        # What its app raised (a server bug: the run reports it).
        self.errors: list[str] = []

    @property
    def up(self) -> bool:
        """Whether something serves here."""
        return self._app is not None and self._process is not None and self._process.alive

    def serve(self, app: ASGIApp, process: Process) -> None:
        """Serve ``app`` as ``process``; stop when it dies."""
        self._app, self._process = app, process
        process.on_death.append(self.down)

    def down(self) -> None:
        """Nothing serves here any more; requests in flight are reset."""
        self._app = self._process = None
        for answer in list(self._in_flight):
            if not answer.done():
                answer.set_exception(httpx.RemoteProtocolError(f"{self.name} went away"))
        self._in_flight.clear()

    def start(self, scope: dict[str, Any], body: bytes,
              gone: asyncio.Event) -> asyncio.Future[_Answer]:
        """Run one request as a task of the host's process; its answer, when it is complete."""
        app, process = self._app, self._process
        assert app is not None
        assert process is not None
        answer: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._in_flight.add(answer)
        answer.add_done_callback(self._in_flight.discard)
        # A client that gave up (read timeout) or died no longer waits for this answer; one
        # that still waits gets the error all the same.
        answer.add_done_callback(_seen, context=contextvars.Context())
        process.spawn(self._serve(app, scope, body, gone, answer, process=process),
                      f"{self.name}-request")
        return answer

    async def _serve(self, app: ASGIApp, scope: dict[str, Any], body: bytes,
                     gone: asyncio.Event, answer: asyncio.Future[_Answer], *,
                     process: Process) -> None:
        try:
            result = await _call(app, scope, body, gone)
        except Exception as exc:  # a server answers 500 for what its app raised, and logs it
            # What a killed process's code raises while the kernel closes it is no bug of
            # the server (a real SIGKILL runs none of it).
            if process.alive:
                self.errors.append(f"{scope['method']} {scope['path']}: {exc!r}")
            result = _Answer(500, [], b"internal error", complete=True)
        if not answer.done():
            answer.set_result(result)


async def _call(app: ASGIApp, scope: dict[str, Any], body: bytes, gone: asyncio.Event) -> _Answer:
    sent_body = False
    status = 500
    headers: list[tuple[bytes, bytes]] = []
    parts: list[bytes] = []
    complete = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, headers, complete
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            parts.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                complete = True

    await app(scope, receive, send)
    return _Answer(status, headers, b"".join(parts), complete)


class Network:
    """Every host of the simulation and the faults armed between them."""

    def __init__(self, rng: random.Random, trace: Callable[[str], None]) -> None:
        self._rng = rng
        self._trace = trace
        self.hosts: dict[str, Host] = {}
        self._armed: list[Armed] = []
        self._trips: list[Trip] = []
        self._in_flight: Counter[str] = Counter()
        self.fired: Counter[str] = Counter()

    def host(self, name: str) -> Host:
        """The listener at ``name`` (the host part of its URL)."""
        return self.hosts.setdefault(name, Host(name))

    def transport(self, client: str) -> httpx.AsyncBaseTransport:
        """The httpx transport of a client process."""
        return _Transport(self, client)

    def arm(self, kind: str, *, label: str, client: str | None = None, host: str | None = None,
            method: str | None = None, path_part: str | None = None, count: int = 1) -> None:
        """Make the next ``count`` matching requests fail as ``kind`` (module docstring)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown network fault {kind!r}")
        self._armed.append(Armed(kind, client, host, method, path_part, label, count))

    def disarm(self, label: str) -> int:
        """Forget armed faults of a label that never fired; how many were left."""
        left = sum(a.count for a in self._armed if a.label == label)
        self._armed = [a for a in self._armed if a.label != label]
        return left

    def trip(self, label: str, *, action: Callable[[], None], client: str | None = None,
             host: str | None = None, method: str | None = None,
             path_part: str | None = None) -> None:
        """Call ``action`` once, right after the next matching request reached its host."""
        self._trips.append(Trip(Armed("trip", client, host, method, path_part, label), action))

    def untrip(self, label: str) -> None:
        """Take down a trip wire that was never crossed."""
        self._trips = [t for t in self._trips if t.match.label != label]

    def in_flight(self, client: str) -> int:
        """Requests of ``client`` sent and not yet answered."""
        return self._in_flight[client]

    def _crossed(self, client: str, host: str, request: httpx.Request) -> None:
        for trip in list(self._trips):
            if trip.match.matches(client, host, request):
                self._trips.remove(trip)
                self._trace(f"net trip wire {trip.match.label} crossed")
                # Outside the client's task: the client may be what the action kills.
                asyncio.get_running_loop().call_soon(trip.action, context=_NOBODY)

    def _take(self, client: str, host: str, request: httpx.Request) -> Armed | None:
        for armed in self._armed:
            if armed.matches(client, host, request):
                armed.count -= 1
                if armed.count <= 0:
                    self._armed.remove(armed)
                self.fired[armed.label] += 1
                return armed
        return None

    def _latency(self) -> float:
        return self._rng.uniform(*LATENCY)

    async def exchange(self, client: str, request: httpx.Request) -> httpx.Response:
        """One request from ``client``: faults, latency, the host's task, the answer."""
        self._in_flight[client] += 1
        try:
            return await self._exchange(client, request)
        finally:
            self._in_flight[client] -= 1

    async def _exchange(self, client: str, request: httpx.Request) -> httpx.Response:
        name = request.url.host
        host = self.hosts.get(name)
        what = f"{client}>{name} {request.method} {request.url.path}"
        fault = self._take(client, name, request)
        if fault is not None:
            self._trace(f"net fault {fault.label} ({fault.kind}) on {what}")
        if host is None or not host.up or (fault is not None and fault.kind == "refused"):
            self._trace(f"net {what} refused")
            raise httpx.ConnectError(f"connection to {name} refused", request=request)
        body = await request.aread()
        await asyncio.sleep(self._latency())
        if fault is not None and fault.kind == "unavailable":
            self._trace(f"net {what} 503 (in front of the host)")
            return httpx.Response(503, content=b"service unavailable", request=request)
        if not host.up:
            raise httpx.ConnectError(f"connection to {name} refused", request=request)
        gone = asyncio.Event()
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        scope = _scope(request)
        started = host.start(scope, body, gone)
        self._crossed(client, name, request)
        try:
            async with asyncio.timeout(read_timeout):
                answer = await asyncio.shield(started)
        except TimeoutError:
            gone.set()
            self._trace(f"net {what} read timeout")
            raise httpx.ReadTimeout(f"no answer from {name}", request=request) from None
        except httpx.RemoteProtocolError:
            gone.set()
            self._trace(f"net {what} reset (host died)")
            raise
        finally:
            gone.set()
        if fault is not None and fault.kind == "timeout_after":
            if read_timeout is not None:
                await asyncio.sleep(read_timeout)
            self._trace(f"net {what} {answer.status} swallowed: read timeout")
            raise httpx.ReadTimeout(f"no answer from {name}", request=request)
        if fault is not None and fault.kind == "reset_after":
            self._trace(f"net {what} {answer.status} lost: connection reset")
            raise httpx.RemoteProtocolError(f"{name} reset the connection", request=request)
        await asyncio.sleep(self._latency())
        if not answer.complete:
            self._trace(f"net {what} {answer.status} cut mid-answer")
            raise httpx.RemoteProtocolError(f"{name} closed mid-answer", request=request)
        self._trace(f"net {what} {answer.status}")
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body,
                              request=request)


def _seen(future: asyncio.Future[_Answer]) -> None:
    if not future.cancelled():
        future.exception()


class _Transport(httpx.AsyncBaseTransport):
    def __init__(self, network: Network, client: str) -> None:
        self._network = network
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._network.exchange(self._client, request)


def _scope(request: httpx.Request) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "headers": [(k.lower(), v) for k, v in request.headers.raw],
        "scheme": request.url.scheme,
        "path": request.url.path,
        "raw_path": request.url.raw_path.split(b"?")[0],
        "query_string": request.url.query,
        "server": (request.url.host, request.url.port or 443),
        "client": ("10.0.0.2", 40000),
        "root_path": "",
        "state": {},
    }
