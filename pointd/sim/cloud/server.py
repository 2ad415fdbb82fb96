"""The running cloud simulator: its clock, its timer driver, webhook delivery, and HTTP.

Theory of operation. ``SimClock`` gives the simulator's time: real monotonic seconds
since start times ``time_scale``, plus whatever ``advance`` added. A driver task sleeps
until the world's next timer is due in real time (never, when ``time_scale`` is 0) or
until it is woken, because a request or ``advance`` changed what is due. Every HTTP
request first brings the world up to ``now``, so answers never lag the clock.
``advance`` fires the timers it made due and awaits the webhook deliveries they caused
before it returns, so a test that advances the clock can assert on the result at once.

Webhook batches are delivered in order, one POST at a time, each signed as Mercado Pago
signs (``pointd.cloud.signature``) with a fresh ``x-request-id``.

``async with CloudSimulator(...)`` serves the app on loopback with uvicorn. The deterministic
simulation (``pointd.rig.simulation``) instead hands in its virtual clock and an in-memory
transport for the webhooks, calls ``start_delivery`` / ``stop_delivery``, and serves
``app`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Self
from urllib.parse import urlencode

import httpx
import structlog
import uvicorn
from starlette.types import ASGIApp

from pointd.cloud.signature import sign
from pointd.sim.cloud.app import build_app
from pointd.sim.cloud.config import SimConfig
from pointd.sim.cloud.orders import OrderDesk
from pointd.sim.cloud.world import Delivery, SimWorld

log = structlog.get_logger(__name__)

# Mercado Pago gives a webhook receiver 22 s to answer before counting the attempt failed.
WEBHOOK_ANSWER_TIMEOUT = 22.0
# Starting uvicorn on loopback takes milliseconds; this only bounds a broken start.
SERVER_START_TIMEOUT = 10.0
# Open connections get this long to finish their answer when the simulator stops.
SERVER_STOP_TIMEOUT = 5
# How often to look whether they have finished (uvicorn offers no event for it).
STOP_POLL_INTERVAL = 0.002


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~80 ms; simulators started by the dozen in tests share it.
    return ssl.create_default_context()


class SimClock:
    """Simulated seconds since start: scaled real time plus manual advances."""

    def __init__(self, time_scale: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.time_scale = time_scale
        self._monotonic = monotonic
        self._origin = monotonic()
        self._advanced = 0.0

    def now(self) -> float:
        """The current simulated time."""
        return (self._monotonic() - self._origin) * self.time_scale + self._advanced

    def advance(self, seconds: float) -> None:
        """Jump forward (never backward)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._advanced += seconds

    def real_seconds_until(self, sim_time: float) -> float | None:
        """Real seconds until ``sim_time`` at the current scale; None if time is frozen."""
        if self.time_scale == 0:
            return None
        return max(0.0, (sim_time - self.now()) / self.time_scale)


class LoopbackServer:
    """Serve an ASGI app with uvicorn in the current event loop (``async with``).

    uvicorn's ``serve()`` would take over SIGINT/SIGTERM and poll for shutdown every
    0.1 s; driving its startup directly and closing it here leaves signals to the host
    and stops at once, which keeps tests that start many servers fast.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._sockets: list[socket.socket] = []
        self.port = 0

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self._host}:{self.port}"

    async def __aenter__(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Accepted sockets inherit this; without it Nagle plus the peer's delayed ACK
            # add ~40 ms to every keep-alive answer, which uvicorn writes as headers then body.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self._host, self._port))
            self.port = sock.getsockname()[1]
            config = uvicorn.Config(
                self._app,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
            config.load()
            server = uvicorn.Server(config)
            server.lifespan = config.lifespan_class(config)
            async with asyncio.timeout(SERVER_START_TIMEOUT):
                await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._server = server
        self._sockets = [sock]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop serving: close the listener and open connections."""
        server, self._server = self._server, None
        if server is None:
            return
        # uvicorn's own shutdown() sleeps a fixed 0.1 s; this does the same steps but
        # returns as soon as the connections are gone.
        for listener in server.servers:
            listener.close()
        for sock in self._sockets:
            sock.close()
        state = server.server_state
        for connection in list(state.connections):
            connection.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SERVER_STOP_TIMEOUT):
                while state.connections or state.tasks:  # noqa: ASYNC110 - no event exists
                    await asyncio.sleep(STOP_POLL_INTERVAL)
        for task in list(state.tasks):
            task.cancel()


class CloudSimulator:
    """The Mercado Pago cloud simulator, embeddable with ``async with``."""

    def __init__(
        self,
        config: SimConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: SimClock | None = None,
        webhook_transport: httpx.AsyncBaseTransport | None = None,
        new_uuid: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        self.config = config
        start_wall = config.start_time if config.start_time is not None else time.time()
        self.world = SimWorld(config, start_wall=start_wall, new_uuid=new_uuid)
        self.orders = OrderDesk(self.world)
        self.clock = clock if clock is not None else SimClock(config.time_scale)
        self.app = build_app(self)
        self._webhook_transport = webhook_transport
        self._host = host
        self._port = port
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._driver: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._server: LoopbackServer | None = None

    def __repr__(self) -> str:
        return f"CloudSimulator({self.config!r})"

    @property
    def base_url(self) -> str:
        """Where the simulated API listens (use as the client's base URL)."""
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        return self._server.base_url

    async def __aenter__(self) -> Self:
        self._server = LoopbackServer(self.app, host=self._host, port=self._port)
        await self._server.__aenter__()
        self.start_delivery()
        log.info("sim.cloud.started", url=self.base_url, time_scale=self.clock.time_scale)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_delivery()
        if self._server is not None:
            await self._server.aclose()

    def start_delivery(self) -> None:
        """Start the timer driver and the webhook client (``async with`` does it)."""
        if self._webhook_transport is not None:
            self._http = httpx.AsyncClient(timeout=WEBHOOK_ANSWER_TIMEOUT, follow_redirects=False,
                                           transport=self._webhook_transport)
        else:
            self._http = httpx.AsyncClient(timeout=WEBHOOK_ANSWER_TIMEOUT,
                                           follow_redirects=False, verify=_tls_context())
        self._driver = asyncio.create_task(self._drive(), name="sim-cloud-driver")

    async def stop_delivery(self) -> None:
        """Stop the driver and any delivery in flight, and close the webhook client."""
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- time ------------------------------------------------------------------------

    def sync(self) -> None:
        """Bring the world up to the clock; send what fell due in the background."""
        deliveries = self.world.run_due(self.clock.now())
        if deliveries:
            task = asyncio.create_task(self.deliver(deliveries), name="sim-cloud-webhooks")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        self._wake.set()

    async def advance(self, seconds: float) -> None:
        """Move the clock forward; fire what fell due and await those deliveries."""
        self.clock.advance(seconds)
        deliveries = self.world.run_due(self.clock.now())
        self._wake.set()
        await self.deliver(deliveries)

    async def idle(self) -> None:
        """Wait until no webhook delivery is in flight."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def _drive(self) -> None:
        while True:
            self._wake.clear()
            self.sync()
            self._wake.clear()
            due = self.world.next_due()
            wait = None if due is None else self.clock.real_seconds_until(due)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    # -- webhooks --------------------------------------------------------------------

    async def deliver(self, deliveries: list[Delivery]) -> None:
        """POST each delivery in order, and report each result to the world."""
        for delivery in deliveries:
            await self.send_webhook(delivery)

    async def send_webhook(self, delivery: Delivery) -> int | None:
        """POST one delivery now; record the attempt; return the status (None: no answer)."""
        url = self.config.webhook_url
        if url is None or self._http is None:
            return None
        query = urlencode({"data.id": delivery.data_id, "type": delivery.topic})
        target = f"{url}{'&' if '?' in url else '?'}{query}"
        wall = self.world.start_wall + self.clock.now()
        ts = str(int(wall * 1000)) if self.config.signature_ts_unit == "ms" else str(int(wall))
        request_id = str(self.world.new_uuid())
        headers = {
            "content-type": "application/json",
            "x-request-id": request_id,
            "x-signature": sign(
                self.config.webhook_secret,
                data_id=delivery.signed_id or delivery.data_id,
                request_id=request_id,
                ts=ts,
            ),
        }
        status: int | None = None
        error: str | None = None
        try:
            response = await self._http.post(target, json=dict(delivery.body), headers=headers)
            status = response.status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        log.info(
            "sim.cloud.webhook",
            topic=delivery.topic,
            state=delivery.state,
            attempt=delivery.attempt,
            status=status,
            error=error,
        )
        self.world.delivery_done(
            delivery, url=url, status_code=status, error=error, now=self.clock.now()
        )
        self._wake.set()
        return status
