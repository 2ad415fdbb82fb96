"""The store side of the relay: a consumer that reads its store's stream, losslessly.

Theory of operation. The consumer owns no durable state: ``cursor_store`` (the daemon's
journal) holds the position of the last event the daemon journaled. By default it holds one
server-sent-event stream open (``GET /stores/{id}/stream`` with ``Last-Event-ID`` = that
cursor) and the relay pushes each event as its commit lands; the events that arrived
together are one batch. With ``delivery="long-poll"``, or while the stream is unavailable
(the relay refuses it, or its opening message does not come through: a proxy that buffers),
it long-polls ``/events`` instead and tries the stream again ``STREAM_RETRY_AFTER`` later.
Either way each batch drops canaries and ids already handed up and awaits
``handler(events, cursor)``, which must journal the events and the batch's cursor together
(the daemon: in one transaction) before it returns. The relay is acknowledged only after
that, later and coalesced (``ACK_DELAY``), off the delivery path, because the ack only
feeds the relay's lag figures: the journal's cursor is what the next stream or poll starts
from. A crash anywhere in between makes the relay send the same events again
(at-least-once); the journal's cursor and the id memory keep them from being handed up
twice.

Health. Every answer, stream chunk and keep-alive counts as contact. A canary is posted to
the relay every ``canary_interval`` seconds and must come back through the store's own
stream within ``canary_timeout``; the relay is *silent* when it answers but the canary (or
any event) stops arriving, and *down* when requests fail. The daemon polls Mercado Pago
itself while the relay is not *connected*.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import random as random_module
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

import httpx
import structlog

from pointd.cloud.signature import SignatureInvalid, verify
from pointd.relay import sse
from pointd.relay.errors import RelayRefused, RelayUnreachable
from pointd.relay.notification import Kind, read_body
from pointd.relay.stream_transport import DirectStreamTransport, proxy_configured

log = structlog.get_logger(__name__)

# The relay holds a long-poll this long; Mercado Pago traffic is sparse, so long polls are cheap.
LONG_POLL_WAIT = 25.0
# Extra time over the long-poll wait before the HTTP read is abandoned.
POLL_TIMEOUT_MARGIN = 10.0
# Connect and short requests (ack, canary) on an internet link.
REQUEST_TIMEOUT = 10.0
BACKOFF_INITIAL = 0.5
BACKOFF_CAP = 30.0
# Canary period and the time a canary may take to come back through the stream.
CANARY_INTERVAL = 60.0
CANARY_TIMEOUT = 30.0
# With canaries every CANARY_INTERVAL, a stream with nothing at all for longer than this is
# silent even when no canary is outstanding (e.g. the canary POST itself keeps failing).
SILENCE_AFTER = CANARY_INTERVAL + CANARY_TIMEOUT
# How many recent event ids are remembered to drop repeats within a run.
DEDUPE_MEMORY = 10_000
MAX_BATCH = 100
# The relay sends a keep-alive every 15 s on a quiet stream (pointd.relay.service); a
# stream with nothing for this long is dead (a NAT that dropped it) and is opened again.
STREAM_READ_TIMEOUT = 45.0
# The relay sends the stream's opening message at once; when it does not arrive in this
# time, something between buffers the response, and the consumer long-polls instead.
STREAM_OPEN_TIMEOUT = 10.0
# How long the consumer long-polls before it tries an unavailable stream again.
STREAM_RETRY_AFTER = 600.0
# Answers that say "this relay has no stream" (an older relay, or a proxy that refuses it).
STREAM_REFUSALS = frozenset({404, 405, 406, 415, 501})
# Acknowledgements wait this long for later cursors to join them: one ack per second at
# most, whatever the rate of events.
ACK_DELAY = 1.0


class Delivery(StrEnum):
    """How the consumer reads its store's stream."""

    STREAM = "stream"  # server-sent events, falling back to long-poll when unavailable
    LONG_POLL = "long-poll"


class StreamUnavailable(Exception):
    """The relay (or what stands in front of it) cannot hold a stream open."""


class HealthState(StrEnum):
    """How far the daemon can trust the relay to bring notifications."""

    CONNECTED = "connected"
    SILENT = "silent"  # the relay answers, but events (the canary) do not come through
    DOWN = "down"  # the relay does not answer


@dataclass(frozen=True, slots=True)
class RelayHealth:
    """The relay link's state, since when, and what was last seen."""

    state: HealthState
    since: float
    detail: str = ""
    last_event_at: float | None = None
    last_canary_rtt: float | None = None
    delivery: str = ""  # "stream" or "long-poll": the leg in use


@dataclass(frozen=True, slots=True)
class RelayEvent:
    """One notification as the relay stored it, raw body and headers included."""

    id: int
    cursor: int
    kind: str
    topic: str | None
    received_at: float
    parse: str
    signed: bool
    id_source: str | None
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    verified: bool | None = None  # the daemon's own signature check; None when not checked
    # The body field the relay found the signed id in (e.g. a fraud alert's
    # "data.merchant_order"); None when unsigned or when the body names no resource.
    signed_field: str | None = None

    def document(self) -> Any:
        """The body read as JSON (leniently, as the relay did), or None."""
        return read_body(self.body)[1]


class CursorStore(Protocol):
    """Where the daemon keeps the last journaled cursor (its journal)."""

    def get(self) -> int | Awaitable[int]:
        """The last stored cursor, 0 when none."""


# handler(events, cursor): journal the events and the stream's cursor together, durably,
# before returning (the daemon: one transaction). ``cursor`` is the batch's newest position,
# at or above every event's; ``events`` may be empty when only canaries or events already
# handed up moved it.
Handler = Callable[[Sequence[RelayEvent], int], Awaitable[None]]


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def parse_event(raw: dict[str, Any]) -> RelayEvent:
    """An event from the relay's wire form; raise ValueError on anything malformed."""
    try:
        return RelayEvent(
            id=int(raw["id"]),
            cursor=int(raw["cursor"]),
            kind=str(raw["kind"]),
            topic=raw.get("topic"),
            received_at=float(raw["received_at"]),
            parse=str(raw["parse"]),
            signed=bool(raw["signed"]),
            id_source=raw.get("id_source"),
            query={str(k): str(v) for k, v in dict(raw["query"]).items()},
            headers={str(k): str(v) for k, v in dict(raw["headers"]).items()},
            body=base64.b64decode(raw["body_b64"], validate=True),
            signed_field=raw.get("signed_field"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed relay event: {exc}") from None


def check_signature(event: RelayEvent, secret: str) -> bool:
    """Re-verify Mercado Pago's signature from the stored headers and raw body."""
    document = event.document()
    body_id = document.get("id") if isinstance(document, dict) else None
    try:
        verify(
            secret,
            event.headers.get("x-signature"),
            request_id=event.headers.get("x-request-id"),
            query_data_id=event.query.get("data.id"),
            body_ids=(str(body_id),) if isinstance(body_id, str | int) else (),
            now=event.received_at,
            window_seconds=None,  # the relay applied the window when the event arrived
        )
    except SignatureInvalid:
        return False
    return True


class RelayConsumer:
    """Read one store's stream and hand events to the daemon after dedupe."""

    def __init__(
        self,
        base_url: str,
        store_id: str,
        token: str,
        handler: Handler,
        cursor_store: CursorStore,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = random_module.random,
        webhook_secret: str | None = None,
        on_health_change: Callable[[RelayHealth], None] | None = None,
        delivery: Delivery | str = Delivery.STREAM,
        long_poll_wait: float = LONG_POLL_WAIT,
        canary_interval: float = CANARY_INTERVAL,
        canary_timeout: float = CANARY_TIMEOUT,
        silence_after: float = SILENCE_AFTER,
        stream_open_timeout: float = STREAM_OPEN_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store_id
        self._token = token
        self._handler = handler
        self._cursor_store = cursor_store
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._secret = webhook_secret
        self._on_health_change = on_health_change
        self._delivery = Delivery(delivery)
        self._wait = long_poll_wait
        self._canary_interval = canary_interval
        self._canary_timeout = canary_timeout
        self._silence_after = silence_after
        self._open_timeout = stream_open_timeout
        self._first_contact: float | None = None
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(REQUEST_TIMEOUT, read=long_poll_wait + POLL_TIMEOUT_MARGIN),
            headers={"authorization": f"Bearer {token}"},
            transport=transport,
        )
        # The stream is read below httpcore (pointd.relay.stream_transport) unless a proxy
        # or an injected transport must see it too.
        self._stream_client = (
            httpx.AsyncClient(
                base_url=self._client.base_url,
                headers=self._client.headers,
                transport=DirectStreamTransport(),
            )
            if transport is None and not proxy_configured(base_url)
            else self._client
        )
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._failures = 0
        self._canary: tuple[int, float] | None = None
        self._last_contact: float | None = None
        self._last_event_at: float | None = None
        self._last_rtt: float | None = None
        self._health = RelayHealth(HealthState.DOWN, clock(), "not connected yet")
        self._stopping = asyncio.Event()
        self._ack_wanted = 0
        self._ack_now = asyncio.Event()
        self._ack_task: asyncio.Task[None] | None = None
        self._stream_retry_at: float | None = None  # long-polling until then
        self._cycle: asyncio.Task[int] | None = None
        self._reading = False  # the cycle waits for the network, and may be cancelled

    def __repr__(self) -> str:
        return f"RelayConsumer(store={self._store!r}, url={str(self._client.base_url)!r})"

    @property
    def health(self) -> RelayHealth:
        """The current health of the relay link, with what was last seen as of now (a
        stream delivers without changing the state, so the stored value would be stale)."""
        return replace(
            self._health, last_event_at=self._last_event_at, last_canary_rtt=self._last_rtt
        )

    @property
    def delivery(self) -> Delivery:
        """The leg in use now: the stream, or long-poll (asked for, or as the fallback)."""
        if self._delivery is Delivery.STREAM and self._stream_retry_at is None:
            return Delivery.STREAM
        return Delivery.LONG_POLL

    def _set_health(self, state: HealthState, detail: str) -> None:
        leg = str(self.delivery)
        if (state, detail, leg) == (self._health.state, self._health.detail, self._health.delivery):
            return
        since = self._health.since if state == self._health.state else self._clock()
        self._health = RelayHealth(
            state, since, detail, self._last_event_at, self._last_rtt, delivery=leg
        )
        # Down or silent means notifications are not arriving: a technician should see it.
        report = log.info if state is HealthState.CONNECTED else log.warning
        report("relay_health", store=self._store, state=str(state), detail=detail, delivery=leg)
        if self._on_health_change is not None:
            self._on_health_change(self._health)

    def evaluate_health(self) -> RelayHealth:
        """Recompute silent/connected from the canary and the time of the last contact."""
        if self._health.state == HealthState.DOWN and self._failures:
            return self._health
        now = self._clock()
        quiet_since = self._last_event_at or self._first_contact
        if self._canary is not None and now - self._canary[1] > self._canary_timeout:
            waited = now - self._canary[1]
            self._set_health(HealthState.SILENT, f"canary not delivered after {waited:.0f} s")
        elif quiet_since is not None and now - quiet_since > self._silence_after:
            self._set_health(HealthState.SILENT, f"no event for {now - quiet_since:.0f} s")
        elif self._last_contact is not None:
            self._set_health(HealthState.CONNECTED, "")
        return self._health

    async def close(self) -> None:
        """Send the last acknowledgement, if one is pending, and close the HTTP client."""
        await self.flush_acks()
        await self._client.aclose()
        if self._stream_client is not self._client:
            await self._stream_client.aclose()

    def _ack_soon(self, cursor: int) -> None:
        """Acknowledge in the background, coalesced: the ack only feeds the relay's lag
        figures (the journal's cursor is what the next stream or poll starts from), so
        delivery never waits for it, and one ack per ACK_DELAY carries the newest cursor."""
        self._ack_wanted = max(self._ack_wanted, cursor)
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.get_running_loop().create_task(
                self._send_acks(), name="relay-ack"
            )

    async def _send_acks(self) -> None:
        sent = 0
        while self._ack_wanted > sent:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ACK_DELAY):
                    await self._ack_now.wait()
            sent = self._ack_wanted
            with contextlib.suppress(RelayUnreachable, RelayRefused):
                await self._request("POST", f"/stores/{self._store}/ack", json={"cursor": sent})

    async def flush_acks(self) -> None:
        """Acknowledge the newest cursor now and wait until it is sent (or its ack failed)."""
        if self._ack_task is not None:
            self._ack_now.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ack_task
            self._ack_now.clear()

    def stop(self) -> None:
        """Ask run() to return: at once while it waits for the relay, else after the batch
        the handler is journaling."""
        self._stopping.set()
        if self._reading and self._cycle is not None:
            self._cycle.cancel()

    async def run(self) -> None:
        """Read and probe until stop(); survives relay restarts and outages."""
        canary = asyncio.get_running_loop().create_task(self._canary_loop(), name="relay-canary")
        try:
            while not self._stopping.is_set():
                self._cycle = asyncio.get_running_loop().create_task(self._one_cycle())
                try:
                    await self._cycle
                except asyncio.CancelledError:
                    if not self._stopping.is_set():
                        raise
                except StreamUnavailable as exc:
                    self._stream_retry_at = self._clock() + STREAM_RETRY_AFTER
                    log.warning(
                        "relay_stream_unavailable",
                        store=self._store,
                        reason=str(exc),
                        long_poll_for_seconds=STREAM_RETRY_AFTER,
                    )
                    self._set_health(self._health.state, self._health.detail)
                except (RelayUnreachable, RelayRefused) as exc:
                    self._failures += 1
                    self._set_health(HealthState.DOWN, str(exc))
                    await self._backoff()
                except Exception as exc:  # the handler failed: nothing was acknowledged
                    log.warning("relay_handler_failed", store=self._store, error=repr(exc))
                    self._failures += 1
                    await self._backoff()
        finally:
            self._cycle = None
            canary.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await canary

    async def _one_cycle(self) -> int:
        if self._stream_retry_at is not None and self._clock() >= self._stream_retry_at:
            self._stream_retry_at = None
        if self.delivery is Delivery.STREAM:
            return await self.stream_once()
        return await self.poll_once()

    async def _backoff(self) -> None:
        ceiling = min(BACKOFF_CAP, BACKOFF_INITIAL * 2 ** min(self._failures - 1, 16))
        # Equal jitter: never less than half the step, so a fleet of stores does not hammer
        # a relay that just came back, and never all at the same instant.
        await self._sleep(ceiling / 2 + self._random() * ceiling / 2)

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise RelayUnreachable(f"relay unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise RelayRefused(response.status_code, response.text[:200])
        try:
            return response.json()
        except ValueError:
            raise RelayRefused(response.status_code, "answer is not JSON") from None

    def _contact(self) -> None:
        self._failures = 0
        self._last_contact = self._clock()
        if self._first_contact is None:
            self._first_contact = self._last_contact

    async def poll_once(self, wait: float | None = None) -> int:
        """One long-poll cycle; returns how many events were handed to the handler."""
        cursor = int(await _maybe_await(self._cursor_store.get()))
        self._reading = True
        try:
            answer = await self._request(
                "GET",
                f"/stores/{self._store}/events",
                params={
                    "after": cursor,
                    "wait": self._wait if wait is None else wait,
                    "limit": MAX_BATCH,
                },
            )
        finally:
            self._reading = False
        self._contact()
        try:
            events = [parse_event(raw) for raw in answer["events"]]
            new_cursor = int(answer["cursor"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RelayRefused(200, f"malformed answer: {exc}") from None
        return await self._deliver(events, cursor, new_cursor)

    async def stream_once(self) -> int:
        """Hold one stream open until the relay ends it (or stop()); returns how many
        events were handed to the handler. Raises StreamUnavailable when the relay cannot
        stream to this consumer (the caller long-polls instead)."""
        cursor = int(await _maybe_await(self._cursor_store.get()))
        request = self._stream_client.build_request(
            "GET",
            f"/stores/{self._store}/stream",
            headers={"accept": "text/event-stream", "last-event-id": str(cursor)},
            timeout=httpx.Timeout(REQUEST_TIMEOUT, read=STREAM_READ_TIMEOUT),
        )
        self._reading = True
        opening = asyncio.get_running_loop().time() + self._open_timeout
        try:
            async with asyncio.timeout_at(opening):
                response = await self._stream_client.send(request, stream=True)
        except TimeoutError:
            raise StreamUnavailable(self._not_opened) from None
        except httpx.TransportError as exc:
            raise RelayUnreachable(f"relay unreachable: {type(exc).__name__}") from None
        finally:
            self._reading = False
        try:
            return await self._read_stream(response, cursor, opening)
        except httpx.TransportError as exc:
            raise RelayUnreachable(f"stream lost: {type(exc).__name__}") from None
        finally:
            await response.aclose()

    @property
    def _not_opened(self) -> str:
        return (
            f"no opening message within {self._open_timeout:g} s "
            "(does a proxy buffer the response?)"
        )

    async def _read_stream(self, response: httpx.Response, cursor: int, opening: float) -> int:
        status = response.status_code
        if status in STREAM_REFUSALS:
            raise StreamUnavailable(f"the relay answers the stream with {status}")
        if status != 200:
            await response.aread()
            raise RelayRefused(status, response.text[:200])
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            raise StreamUnavailable("the stream's answer is not text/event-stream")
        decoder = sse.Decoder()
        chunks = response.aiter_raw()
        opened, handed = False, 0
        while not self._stopping.is_set():
            self._reading = True
            try:
                if opened:
                    chunk = await anext(chunks)
                else:
                    async with asyncio.timeout_at(opening):
                        chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise StreamUnavailable(self._not_opened) from None
            finally:
                self._reading = False
            try:
                messages = decoder.feed(chunk)
                events = [
                    parse_event(json.loads(message.data))
                    for message in messages
                    if message.event in ("", "message")
                ]
            except (ValueError, TypeError) as exc:
                raise RelayRefused(200, f"malformed stream: {exc}") from None
            opened = opened or any(message.event == "open" for message in messages)
            self._contact()
            if events:
                handed += await self._deliver(events, cursor, events[-1].cursor)
                cursor = max(cursor, events[-1].cursor)
            else:
                self.evaluate_health()
        if not opened and not self._stopping.is_set():
            raise RelayUnreachable("the stream ended before it opened")
        return handed

    async def _deliver(self, events: Sequence[RelayEvent], cursor: int, new_cursor: int) -> int:
        """Hand the fresh events of one batch up with the batch's cursor, then ack it."""
        fresh = self._select(events, cursor)
        if fresh or new_cursor > cursor:
            await self._handler(fresh, max(new_cursor, cursor))
            for event in fresh:
                self._remember(event.id)
        if new_cursor > cursor:
            self._ack_soon(new_cursor)
        self.evaluate_health()
        return len(fresh)

    def _select(self, events: Sequence[RelayEvent], cursor: int) -> list[RelayEvent]:
        now = self._clock()
        fresh: list[RelayEvent] = []
        for event in events:
            if event.cursor <= cursor:
                continue
            self._last_event_at = now
            if event.kind == Kind.CANARY:
                if self._canary is not None and self._canary[0] == event.id:
                    self._last_rtt = now - self._canary[1]
                    self._canary = None
                continue
            if event.id in self._seen or any(e.id == event.id for e in fresh):
                continue
            if self._secret is not None and event.kind != Kind.IPN:
                fresh.append(replace(event, verified=check_signature(event, self._secret)))
            else:
                fresh.append(event)
        return fresh

    def _remember(self, event_id: int) -> None:
        self._seen[event_id] = None
        while len(self._seen) > DEDUPE_MEMORY:
            self._seen.popitem(last=False)

    async def send_canary(self) -> None:
        """Post a canary that must come back through this store's stream."""
        if self._canary is not None:
            return  # the outstanding one decides; a new one would hide its loss
        answer = await self._request("POST", f"/stores/{self._store}/canary")
        self._canary = (int(answer["id"]), self._clock())

    async def _canary_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(
                RelayUnreachable, RelayRefused, KeyError, TypeError, ValueError
            ):
                await self.send_canary()
            self.evaluate_health()
            await self._sleep(self._canary_interval)
