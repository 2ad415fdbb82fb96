"""The daemon's Prometheus metrics (prometheus_client) and the local ``/metrics`` endpoint.

Theory of operation: ``DaemonMetrics`` keeps a registry of the daemon's own. What happens
is counted as it happens: a sale that ends (by outcome), each payment verification's
``GET /v1/payments/{id}`` (its latency, by result) and each journal transaction (BEGIN to
the fsynced COMMIT). What *is* is read at scrape time from the running parts, so it is
never stale: sales held, the relay link and the age of its last delivery, each register
link and its retransmissions. ``MetricsServer`` answers ``GET /metrics`` on the configured
local address (``[metrics] listen``; off unless set) with a minimal HTTP/1.1 responder on
the event loop: one bounded request per connection, no threads, no web framework, so a
store PC needs nothing the relay's web server brings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from pointd.core.events import Event
from pointd.core.machine import CoreState, Step
from pointd.core.states import SaleState
from pointd.link.driver import LinkStatus
from pointd.logging import ANNOUNCEMENTS

announce = structlog.get_logger(ANNOUNCEMENTS)

PAYMENT_PATH = "/v1/payments/{id}"
# A verification should answer within a second or two; the client's read timeout is 10 s.
VERIFY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# A write-ahead commit with synchronous=FULL is an fsync: milliseconds on a sound disk.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5, 1.0)
HOLD_STATES = frozenset({SaleState.HELD, SaleState.ESCALATED, SaleState.BLOCKED})
# Bounds on one scrape request, so a client that never finishes costs nothing lasting.
REQUEST_TIMEOUT = 10.0
MAX_REQUEST_BYTES = 16 * 1024
# Sales whose end was counted are remembered by id; beyond this many, those the core has
# forgotten are dropped from the memory (they cannot step again).
KNOWN_SALES_BOUND = 20_000


class MetricsAddressError(RuntimeError):
    """The configured metrics address cannot be bound (in use, not an address of this PC)."""


@dataclass(frozen=True)
class LiveSources:
    """Where the scrape-time values come from."""

    state: Callable[[], CoreState]
    # None: no relay configured; else the relay's status row (pointd.app.runtime.RelayStatus)
    relay: Callable[[], Mapping[str, Any]] | None
    links: Callable[[], Mapping[int, LinkStatus]]


class DaemonMetrics:
    """The daemon's metrics registry: counters fed by the parts, gauges read at scrape."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sales = Counter(
            "pointd_sales_ended", "Sales that reached a final state, by outcome.", ["outcome"],
            registry=self.registry,
        )
        self._verify = Histogram(
            "pointd_verify_seconds",
            "Latency of GET /v1/payments/{id}, the verification of a payment, by result.",
            ["result"], buckets=VERIFY_BUCKETS, registry=self.registry,
        )
        self._commit = Histogram(
            "pointd_journal_commit_seconds",
            "Journal write transactions, BEGIN to the fsynced COMMIT.",
            buckets=COMMIT_BUCKETS, registry=self.registry,
        )
        self._version = version
        self._known: dict[str, bool] = {}
        self._sources: LiveSources | None = None

    def attach(self, sources: LiveSources, state: CoreState) -> None:
        """Read the live values from ``sources``; ``state`` is the core state at start."""
        self._known = {sale_id: sale.is_final for sale_id, sale in state.sales.items()}
        self._sources = sources
        self.registry.register(_Live(sources, self._version))

    def observe_step(self, event: Event, result: Step) -> None:
        """Count a sale the step ended (wire into the engine's ``on_step``)."""
        sale = result.state.sales.get(result.sale_id) if result.sale_id else None
        if sale is None:
            return
        was_final = self._known.get(sale.sale_id)
        self._known[sale.sale_id] = sale.is_final
        if sale.is_final and was_final is not True:
            self._sales.labels(outcome=sale.state.value).inc()
        if len(self._known) > KNOWN_SALES_BOUND:
            self._known = {k: v for k, v in self._known.items() if k in result.state.sales}

    def observe_cloud_call(
        self, method: str, template: str, seconds: float, status: int | None
    ) -> None:
        """Time a payment verification (wire as the cloud client's observer)."""
        if method != "GET" or template != PAYMENT_PATH:
            return
        result = "no_answer" if status is None else "ok" if status < 400 else "refused"
        self._verify.labels(result=result).observe(seconds)

    def observe_commit(self, seconds: float) -> None:
        """Time a journal transaction (wire as the journal's commit observer)."""
        self._commit.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _Live:
    """Gauges and counters read from the running parts at each scrape."""

    def __init__(self, sources: LiveSources, version: str) -> None:
        self._sources = sources
        self._version = version

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("pointd_build_info", "The running pointd.", labels=["version"])
        info.add_metric([self._version], 1)
        yield info
        state = self._sources.state()
        held = sum(1 for sale in state.unfinished() if sale.state in HOLD_STATES)
        yield GaugeMetricFamily(
            "pointd_sales_held",
            "Sales held, escalated or blocked: goods must not leave until settled.", value=held,
        )
        yield GaugeMetricFamily(
            "pointd_sales_unfinished", "Sales not in a final state.",
            value=len(state.unfinished()),
        )
        if self._sources.relay is not None:
            relay = self._sources.relay()
            yield GaugeMetricFamily(
                "pointd_relay_connected", "1 while the relay link is connected.",
                value=1 if relay.get("state") == "connected" else 0,
            )
            age = relay.get("last_event_age")
            yield GaugeMetricFamily(
                "pointd_relay_last_event_age_seconds",
                "Seconds since the relay delivered anything (an event or the canary); "
                "NaN before the first delivery.",
                value=float(age) if isinstance(age, int | float) else float("nan"),
            )
        up = GaugeMetricFamily("pointd_register_link_up", "1 while the lane's register link is up.",
                               labels=["lane"])
        retransmits = CounterMetricFamily(
            "pointd_register_retransmits", "Frames sent again to the lane's register.",
            labels=["lane"],
        )
        for lane, status in sorted(self._sources.links().items()):
            up.add_metric([str(lane)], 1 if status.up else 0)
            retransmits.add_metric([str(lane)], status.retransmits)
        yield up
        yield retransmits


class MetricsServer:
    """``GET /metrics`` on a local address; anything else is answered 404 or 405."""

    def __init__(self, metrics: DaemonMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the port is the kernel's choice when configured as 0)."""
        assert self._server is not None, "not started"
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def start(self) -> None:
        """Bind and listen; MetricsAddressError when the address cannot be used."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, limit=MAX_REQUEST_BYTES
            )
        except OSError as exc:
            raise MetricsAddressError(
                f"cannot serve metrics on {self._host}:{self._port}: {exc.strerror or exc} "
                "(fix [metrics] listen)"
            ) from None
        host, port = self.address
        url = f"http://{host}:{port}/metrics"
        announce.info(f"pointd metrics on {url}", url=url)

    async def serve_forever(self) -> None:
        """Serve until cancelled (run as the daemon's metrics task)."""
        assert self._server is not None, "not started"
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening and close the open connections."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, content_type = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            writer.close()
            return
        try:
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("ascii")
                + body
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        method, _, rest = head.partition(b" ")
        target = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if target != b"/metrics":
            return "404 Not Found", b"only /metrics is served here\n", "text/plain"
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"GET /metrics\n", "text/plain"
        body = self._metrics.render()
        return "200 OK", b"" if method == b"HEAD" else body, CONTENT_TYPE_PLAIN_0_0_4
