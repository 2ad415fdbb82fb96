"""The asyncio side of the register link: runs the ARQ machine on a port, reopens it when lost.

Theory of operation
-------------------
``ArqConnection`` drives ``pointd.link.arq`` over one open port on the event loop's thread:
the port's file descriptor is watched with ``loop.add_reader`` and read with timeout 0, so
there are no threads and no blocking calls; writes that the kernel does not take at once
wait for ``add_writer``. Every received chunk goes through the tap and ``FrameDecoder``;
every frame becomes an ARQ event; every ARQ action is carried out here (write, arm the one
timer with ``loop.call_at``, deliver, confirm a send). Any failure — an I/O error, EOF, the
ARQ's own ``LinkDown``, or ``close()`` — goes through the one funnel ``_fail``, which stops
the watchers, fails every pending send (``LinkOutcomeUnknown`` for the frame in flight,
``LinkNotSent`` for the rest) and reports the reason once.

``send()`` is shielded from cancellation: once a payload is handed to the ARQ it is
transmitted and retransmitted to the end even if the caller gives up, because a half-sent
register message must finish or fail explicitly, never vanish.

``LinkDriver`` owns the port's lifecycle: it opens the URL (``pointd.link.ports``: a
device path through pyserial, exclusively, or ``socket://host:port`` for a register on the
LAN), runs one ``ArqConnection`` until it fails, then reopens with a capped exponential
back-off — the USB adapter that was unplugged may come back. The layer
above reads ``LinkUp`` / ``PayloadReceived`` / ``LinkLost`` from ``next_event()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import serial
import structlog

from pointd.link import arq
from pointd.link.errors import LinkConfigError, LinkNotSent, LinkOutcomeUnknown
from pointd.link.frame import Discard, DiscardReason, FrameDecoder
from pointd.link.ports import Port, open_port
from pointd.link.trace import ByteTap

log = structlog.get_logger(__name__)

DEFAULT_BAUDRATE = 9600
# Largest read per readiness callback; bigger than any frame so one call usually suffices.
READ_CHUNK_SIZE = 4096
# Reopen back-off after the port is lost or cannot be opened: quick enough that a cashier
# who re-plugs a cable sees the lane back within seconds, slow enough not to spin on a
# port that is gone for good.
RECONNECT_MIN_DELAY = 0.5
RECONNECT_MAX_DELAY = 10.0


@dataclass(frozen=True)
class LinkStatus:
    """Whether the link is up, since when (wall clock), why not, and its retransmissions."""

    url: str
    up: bool
    since: float
    # Why the port is not open (the open error, or why the last connection was lost).
    problem: str | None
    # Frames sent again over every connection of this driver.
    retransmits: int


@dataclass(frozen=True)
class LinkUp:
    """The port is open and the link is running; ``generation`` counts openings."""

    generation: int


@dataclass(frozen=True)
class PayloadReceived:
    """A message payload arrived (exactly once per sequenced frame)."""

    payload: bytes


@dataclass(frozen=True)
class LinkLost:
    """The port or the peer failed; the driver is reopening."""

    reason: str


LinkEvent = LinkUp | PayloadReceived | LinkLost


def _retrieve(future: asyncio.Future[None]) -> None:
    # The sender may have been cancelled while the shielded send went on; reading the
    # outcome here keeps asyncio from reporting it as never retrieved.
    if not future.cancelled():
        future.exception()


class ArqConnection:
    """The ARQ machine running over one open port, until the first failure."""

    def __init__(
        self,
        port: Port,
        *,
        on_payload: Callable[[bytes], None],
        on_lost: Callable[[str], None],
        timers: arq.LinkTimers | None = None,
        tap: ByteTap | None = None,
        fresh_start_types: frozenset[int] = frozenset(),
        enq_first: bool = False,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._port = port
        self._fd = port.fileno()
        self._on_payload = on_payload
        self._on_lost = on_lost
        self._tap = tap
        self._decoder = FrameDecoder()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._tags = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._out = bytearray()
        self._closed = False
        self.lost_reason: str | None = None
        # Frames sent again for want of an ACK (or after a NAK) on this connection.
        self.retransmits = 0
        self._state, actions = arq.start(
            self._loop.time(), timers, fresh_start_types, enq_first=enq_first
        )
        self._loop.add_reader(self._fd, self._on_readable)
        self._apply(actions)

    @property
    def is_open(self) -> bool:
        """False once the connection has failed or been closed."""
        return not self._closed

    async def send(self, payload: bytes) -> None:
        """Send one payload and wait for its ACK; raise LinkNotSent or LinkOutcomeUnknown."""
        if self._closed:
            raise LinkNotSent(f"link is down: {self.lost_reason}")
        tag = next(self._tags)
        future: asyncio.Future[None] = self._loop.create_future()
        future.add_done_callback(_retrieve)
        self._pending[tag] = future
        self._dispatch(arq.SendRequested(tag, payload))
        await asyncio.shield(future)

    def write_raw(self, data: bytes) -> None:
        """Put bytes on the wire outside the ARQ (for line tests and fault injection)."""
        self._write(data)

    def close(self, reason: str = "closed") -> None:
        """Stop the connection; the port itself stays with its owner."""
        self._fail(reason, self._in_flight_tag())

    def _in_flight_tag(self) -> int | None:
        in_flight = self._state.in_flight
        return in_flight.tag if in_flight is not None else None

    def _dispatch(self, event: arq.Event) -> None:
        if self._closed:
            return
        before = self._state.in_flight
        self._state, actions = arq.on_event(self._state, event, self._loop.time())
        after = self._state.in_flight
        if before is not None and after is not None and after.attempts > before.attempts:
            self.retransmits += 1
        self._apply(actions)

    def _apply(self, actions: list[arq.Action]) -> None:
        for action in actions:
            if self._closed:
                return
            if isinstance(action, arq.Write):
                self._write(action.data)
            elif isinstance(action, arq.StartTimer):
                self._cancel_timer()
                self._timer = self._loop.call_at(action.deadline, self._on_timer)
            elif isinstance(action, arq.CancelTimer):
                self._cancel_timer()
            elif isinstance(action, arq.Deliver):
                self._deliver(action.payload)
            elif isinstance(action, arq.Confirmed):
                future = self._pending.pop(action.tag, None)
                if future is not None and not future.done():
                    future.set_result(None)
            else:
                self._fail(action.reason, action.unacknowledged)

    def _deliver(self, payload: bytes) -> None:
        try:
            self._on_payload(payload)
        except Exception:
            # The layer above must not be able to kill the reader: log and keep the link.
            log.exception("link.deliver_failed")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch(arq.TimerExpired())

    def _on_readable(self) -> None:
        try:
            data = self._port.read(READ_CHUNK_SIZE)
        except (serial.SerialException, OSError) as exc:
            self._fail(f"read failed: {exc}", self._in_flight_tag())
            return
        if not data:
            return
        if self._tap is not None:
            self._tap.record("rx", data)
        for item in self._decoder.feed(data):
            if self._closed:
                return
            if isinstance(item, Discard):
                log.debug("link.discard", reason=item.reason.value, count=item.count)
                if item.reason is DiscardReason.DAMAGED:
                    self._dispatch(arq.DamagedFrameReceived(item.seq))
            else:
                self._dispatch(arq.event_for_frame(item))

    def _write(self, data: bytes) -> None:
        if self._tap is not None:
            self._tap.record("tx", data)
        if self._out:
            self._out += data
            return
        self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        try:
            written = self._port.write(data) or 0
        except (serial.SerialException, OSError) as exc:
            self._fail(f"write failed: {exc}", self._in_flight_tag())
            return
        if written < len(data):
            self._out += data[written:]
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        data = bytes(self._out)
        self._out.clear()
        self._loop.remove_writer(self._fd)
        self._write_now(data)

    def _fail(self, reason: str, unacknowledged: int | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.lost_reason = reason
        self._cancel_timer()
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._out.clear()
        for tag, future in self._pending.items():
            if future.done():
                continue
            if tag == unacknowledged:
                future.set_exception(LinkOutcomeUnknown(f"no ACK before the link failed: {reason}"))
            else:
                future.set_exception(LinkNotSent(f"link failed before sending: {reason}"))
        self._pending.clear()
        if self._tap is not None:
            self._tap.record("event", note=f"lost: {reason}")
        self._on_lost(reason)


class LinkDriver:
    """The register link on one URL: opens, runs, survives unplugging, reopens."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        timers: arq.LinkTimers | None = None,
        tap: ByteTap | None = None,
        reconnect_min_delay: float = RECONNECT_MIN_DELAY,
        reconnect_max_delay: float = RECONNECT_MAX_DELAY,
        opener: Callable[[str, int], Awaitable[Port]] = open_port,
        fresh_start_types: frozenset[int] = frozenset(),
        enq_first: bool = False,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[LinkStatus], None] | None = None,
    ) -> None:
        if baudrate <= 0:
            raise LinkConfigError(f"baud rate must be positive, got {baudrate}")
        if not 0 < reconnect_min_delay <= reconnect_max_delay:
            raise LinkConfigError("reconnect delays must satisfy 0 < min <= max")
        self.url = url
        self._baudrate = baudrate
        self._timers = timers
        self._tap = tap
        self._min_delay = reconnect_min_delay
        self._max_delay = reconnect_max_delay
        self._open_port = opener
        self._fresh_start_types = fresh_start_types
        self._enq_first = enq_first
        self._events: asyncio.Queue[LinkEvent] = asyncio.Queue()
        self._connection: ArqConnection | None = None
        self._stopping = asyncio.Event()
        self._generation = 0
        self._wall_clock = wall_clock
        self._on_change = on_change
        self._since = wall_clock()
        self._problem: str | None = "not opened yet"
        self._earlier_retransmits = 0

    @property
    def is_up(self) -> bool:
        """True while a connection is open."""
        return self._connection is not None and self._connection.is_open

    @property
    def status(self) -> LinkStatus:
        """Up or down, since when, why not, and the retransmissions so far."""
        current = self._connection.retransmits if self._connection is not None else 0
        return LinkStatus(self.url, self.is_up, self._since, self._problem,
                          self._earlier_retransmits + current)

    def _changed(self, problem: str | None) -> None:
        """The link went up (``problem`` None) or down, or the reason it is down changed."""
        was_up = self._problem is None
        if problem == self._problem:
            return
        if was_up != (problem is None):
            self._since = self._wall_clock()
        self._problem = problem
        if self._on_change is not None:
            try:
                self._on_change(self.status)
            except Exception:
                log.exception("link.on_change_failed", url=self.url)

    async def send(self, payload: bytes) -> None:
        """Send over the current connection; raise LinkNotSent when there is none."""
        connection = self._connection
        if connection is None or not connection.is_open:
            raise LinkNotSent("register link is down")
        await connection.send(payload)

    async def next_event(self) -> LinkEvent:
        """Wait for the next LinkUp, PayloadReceived or LinkLost."""
        return await self._events.get()

    def close(self) -> None:
        """Stop reopening and close the current connection; run() then returns."""
        self._stopping.set()
        if self._connection is not None:
            self._connection.close("link closed")

    async def run(self) -> None:
        """Open, run and reopen the port until close(); raise LinkConfigError if hopeless."""
        delay = self._min_delay
        last_error = ""
        while not self._stopping.is_set():
            try:
                port = await self._open_port(self.url, self._baudrate)
            except ValueError as exc:
                raise LinkConfigError(f"cannot use register port {self.url!r}: {exc}") from exc
            except (serial.SerialException, OSError) as exc:
                if str(exc) != last_error:
                    log.warning("link.open_failed", url=self.url, error=str(exc))
                    last_error = str(exc)
                self._changed(f"cannot open {self.url}: {exc}")
                await self._pause(delay)
                delay = min(delay * 2, self._max_delay)
                continue
            last_error = ""
            lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            await self._run_connection(port, lost)
            delay = self._min_delay
            if not self._stopping.is_set():
                await self._pause(delay)

    async def _run_connection(self, port: Port, lost: asyncio.Future[str]) -> None:
        def on_lost(reason: str) -> None:
            if not lost.done():
                lost.set_result(reason)

        try:
            self._connection = ArqConnection(
                port,
                on_payload=lambda payload: self._events.put_nowait(PayloadReceived(payload)),
                on_lost=on_lost,
                timers=self._timers,
                tap=self._tap,
                fresh_start_types=self._fresh_start_types,
                enq_first=self._enq_first,
            )
            self._generation += 1
            if self._tap is not None:
                self._tap.record("event", note=f"opened {self.url}")
            log.info("link.up", url=self.url, generation=self._generation)
            self._changed(None)
            self._events.put_nowait(LinkUp(self._generation))
            stop: asyncio.Future[object] = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait((lost, stop), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            self._connection.close("link closed")
            reason = lost.result() if lost.done() else "link closed"
            self._earlier_retransmits += self._connection.retransmits
            self._connection = None
            self._changed(f"lost: {reason}")
        finally:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()
        # Closing the link on purpose (daemon stopping) is no fault worth a warning.
        report = log.info if self._stopping.is_set() else log.warning
        report("link.lost", url=self.url, reason=reason)
        self._events.put_nowait(LinkLost(reason))

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()
