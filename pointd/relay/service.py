"""The relay's HTTP service: Mercado Pago intake, the store delivery API, the admin API, health.

Theory of operation. Intake reads the query and headers, then the body incrementally
(never more than ``body_limit`` bytes buffered), and hands them to pointd.relay.intake,
which decides the signature before the body is parsed (the order of checks is there and in
docs/relay.md). A notification that passes is written through the group committer and
answered 200 only after its commit is durable; a failed commit answers 503 so that Mercado
Pago retries. Legacy IPN cannot be verified, so it is stored flagged unsigned, as a hint
that only makes a daemon ask Mercado Pago sooner. Every request's work on the event loop
is bounded, whatever its body: no request can hold up another's answer.

An event stored before its route is known waits, and is routed by the commit that teaches
its route. A fraud alert still waiting after ``delivery.unroutable_alert_after`` raises an
alert once: an error log line, a metric and the admin listing ``?status=alerted``.

Stores read their own stream with a cursor and acknowledge positions, either on one
long-lived server-sent-event stream (``/stores/{id}/stream``: each event is pushed as its
commit lands, from the frames pointd.relay.feed keeps) or by long-poll (``/events``, the
fallback for proxies that buffer). Each bearer token is bound to one store id, and a token
that does not fit the store in the path is answered exactly like a store that does not
exist. Both wake on local commits and, with several replicas, on the backend's remote-write
signal; both also re-read storage every ``WAKE_RECHECK_INTERVAL`` so that a lost wake-up
only delays, never loses, an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pointd.config.relay import RelayConfig, RelaySecrets
from pointd.relay import intake, sse
from pointd.relay.errors import NotStored, RequestRefused, StorageError
from pointd.relay.feed import StoreFeed
from pointd.relay.group_commit import GroupCommitter
from pointd.relay.metrics import CONTENT_TYPE, RelayMetrics
from pointd.relay.notification import ID_SCAN_LIMIT, Kind
from pointd.relay.storage import (
    LISTINGS,
    MAX_READ_LIMIT,
    Incoming,
    Stats,
    Storage,
    StoredEvent,
    WriteResult,
    committed_event,
)

log = structlog.get_logger(__name__)

INTAKE_PATH = "/mp/webhook"
# A long-poll re-reads storage at least this often, in case a wake-up was lost.
WAKE_RECHECK_INTERVAL = 2.0
# Refusals (bad signatures, oversize bodies) are logged at most this often, with a count.
REFUSAL_LOG_INTERVAL = 10.0
# How often the retention job runs; retention is in days, so hourly is plenty.
CLEANUP_INTERVAL = 3600.0
# The unroutable-alert check runs this fraction of delivery.unroutable_alert_after apart
# (within the bounds below), so an alert is raised at most a quarter late.
ALERT_CHECK_FRACTION = 0.25
ALERT_CHECK_BOUNDS = (0.5, 60.0)
DEFAULT_READ_LIMIT = 100
# A long-poll may ask to wait up to this long (the most delivery.long_poll_timeout may be set
# to); it is held for the configured timeout at most.
MAX_LONG_POLL_ASK = 300.0
# A stream sends a comment this often when it has nothing else to send, so that the client
# (whose read timeout is longer, pointd.relay.client) and any proxy see a live connection.
STREAM_HEARTBEAT = 15.0
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    # nginx buffers a proxied response unless told not to; this is its documented switch.
    (b"x-accel-buffering", b"no"),
]
_DUMMY_DIGEST = hashlib.sha256(b"pointd-relay-no-such-store").digest()
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":")).encode


class ClientGone(Exception):
    """The sender disconnected before its request was read; there is no one to answer."""


def _error(status: int, reason: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers or None)


def _compact_json(payload: Any) -> bytes:
    """``json.dumps(payload, separators=(",", ":"))``, encoded, with one encoder for the
    process instead of one built per call."""
    return _COMPACT_JSON(payload).encode()


def _answer_body(outcome: str, event_id: int) -> bytes:
    """The body of intake's 200, ``{"status":…,"event":…}``, formatted without an encoder:
    the outcome is one of two fixed words and the event id an integer."""
    return b'{"status":"%s","event":%d}' % (outcome.encode(), event_id)


async def _send_json(
    send: Send,
    status: int,
    payload: dict[str, Any] | bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    body = payload if isinstance(payload, bytes) else _compact_json(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _intake_method_not_allowed(_request: Request) -> Response:
    return _error(405, "method not allowed", Allow="POST")


class RelayService:
    """The relay's state and routes; ``app`` is the ASGI application to serve."""

    def __init__(
        self,
        config: RelayConfig,
        secrets: RelaySecrets,
        storage: Storage,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.metrics = RelayMetrics()
        self._store_digests = {
            store.id: bytes.fromhex(store.token_sha256) for store in config.stores
        }
        self._admin_digest = (
            hashlib.sha256(secrets.admin_token.reveal().encode()).digest()
            if secrets.admin_token is not None
            else None
        )
        self._policy = intake.IntakePolicy(
            secret=secrets.webhook_secret.reveal() if secrets.webhook_secret else None,
            signature_required=config.intake.signature_required,
            window_seconds=config.intake.ts_window or None,
            stores=frozenset(self._store_digests),
        )
        self._feeds = {store: StoreFeed() for store in self._store_digests}
        self._closing = False
        self._last_poll: dict[str, float] = {}
        self.committer: GroupCommitter[Incoming, WriteResult] = GroupCommitter(
            self._write_and_publish,
            batch_max=config.storage.batch_max,
            batch_wait=config.storage.batch_wait,
            on_commit=self.metrics.observe_commit,
        )
        self._refusal_logged_at = -math.inf
        self._refusals_unlogged = 0
        self._token_refusals: dict[str, tuple[float, int]] = {}
        self._routes = Starlette(
            routes=[
                Route(INTAKE_PATH, _intake_method_not_allowed),
                Route("/stores/{store}/events", self.store_events, methods=["GET"]),
                Route("/stores/{store}/stream", self.store_stream, methods=["GET"]),
                Route("/stores/{store}/ack", self.store_ack, methods=["POST"]),
                Route("/stores/{store}/canary", self.store_canary, methods=["POST"]),
                Route("/admin/events", self.admin_events, methods=["GET"]),
                Route("/admin/events/{event_id}/assign", self.admin_assign, methods=["POST"]),
                Route("/admin/stats", self.admin_stats, methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/metrics", self.metrics_page, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )
        self.app: ASGIApp = self

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.storage.open()
        self.storage.on_remote_write(self._wake)
        self.committer.start()
        loop = asyncio.get_running_loop()
        cleanup = loop.create_task(self._cleanup_loop(), name="retention")
        alerts = loop.create_task(self._alert_loop(), name="unroutable-alerts")
        log.info("relay_started", backend=self.config.storage.backend,
                 stores=len(self._store_digests))
        try:
            yield
        finally:
            for task in (cleanup, alerts):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.committer.stop()
            await self.storage.close()

    def begin_shutdown(self) -> None:
        """Answer every waiting long-poll and end every stream now (stores connect again
        after the restart)."""
        self._closing = True
        for feed in self._feeds.values():
            feed.touch()

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Open storage and start the committer, for hosts that serve ``app`` themselves."""
        return self._lifespan(self._routes)

    # ---- intake -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point: intake directly, everything else through Starlette."""
        if scope["type"] == "http" and scope["path"] == INTAKE_PATH and scope["method"] == "POST":
            await self.intake(scope, receive, send)
        else:
            await self._routes(scope, receive, send)

    async def intake(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Receive one Mercado Pago notification; 2xx only once it is durable.

        Served as bare ASGI rather than a Starlette route: at thousands of notifications a
        second, Starlette's request, routing and response objects cost more than the
        intake's own checks (docs/benchmarks.md).
        """
        try:
            item = await self._admit(scope, receive)
        except ClientGone:
            self.metrics.count_intake("client_gone")
            return
        except RequestRefused as exc:
            outcome = {401: "unauthorized", 413: "too_large"}.get(exc.status, "bad_request")
            self.metrics.count_intake(outcome)
            self._log_refusal(exc)
            # Closed: the rest of a refused body is never read.
            headers = [(b"connection", b"close")]
            if exc.status == 401:
                headers.append((b"www-authenticate", b"x-signature"))
            await _send_json(send, exc.status, {"error": exc.reason}, headers)
            return
        try:
            result = await self.committer.submit(item)
        except NotStored as exc:
            self.metrics.count_intake("not_stored")
            log.warning("intake_not_stored", error=str(exc))
            await _send_json(
                send, 503, {"error": "not stored, retry later"}, [(b"retry-after", b"5")]
            )
            return
        outcome = "duplicate" if result.duplicate else "stored"
        self.metrics.count_intake(outcome)
        if not result.duplicate:
            # Once per notification (a resend is only counted): what a technician looks
            # for when Mercado Pago says it sent one. Never the body or a header.
            log.info("notification_stored", event_id=result.event_id, kind=item.kind,
                     topic=item.topic, route=result.store or "unrouted", signed=item.signed)
        self._note_rerouted(result)
        await _send_json(send, 200, _answer_body(outcome, result.event_id))

    def _note_rerouted(self, result: WriteResult) -> None:
        if result.rerouted:
            self.metrics.count_rerouted(len(result.rerouted))
            log.info(
                "events_rerouted",
                events=list(result.rerouted),
                store=result.store,
                by_event=result.event_id,
            )

    def _log_refusal(self, exc: RequestRefused) -> None:
        """Log refusals at most once per REFUSAL_LOG_INTERVAL, with how many were not logged,
        so that a flood of bad requests cannot flood the log."""
        now = self.clock()
        self._refusals_unlogged += 1
        if now - self._refusal_logged_at < REFUSAL_LOG_INTERVAL:
            return
        log.info(
            "intake_refused",
            status=exc.status,
            reason=exc.reason,
            refusals_since_last_line=self._refusals_unlogged,
        )
        self._refusal_logged_at = now
        self._refusals_unlogged = 0

    async def _admit(self, scope: Scope, receive: Receive) -> Incoming:
        query = intake.read_query(scope.get("query_string", b""))
        headers = intake.read_headers(scope["headers"])
        now = self.clock()
        if intake.unsigned_before_reading(query, headers, self._policy):
            limit, too_large = intake.UNSIGNED_BODY_LIMIT, intake.UNSIGNED_TOO_LARGE
        else:
            limit = self.config.intake.body_limit
            too_large = f"body larger than {limit} bytes"
        body = _Body(receive, headers, limit, too_large)
        # The signature is decided on the body's first bytes: a request it refuses is
        # answered (and its connection closed) without the rest of its body being read.
        prefix = await body.read(ID_SCAN_LIMIT)
        verified = intake.decide_signature(query, headers, prefix, now, self._policy)
        return intake.admit(
            query, headers, await body.read(), now, self._policy, verified=verified
        )

    # ---- store delivery -----------------------------------------------------------------

    async def _write_and_publish(self, items: Sequence[Incoming]) -> list[WriteResult]:
        """Commit a batch, then push what it appended to its stores' feeds, before any of
        its requests is answered."""
        results = await self.storage.write_batch(items)
        for item, result in zip(items, results, strict=True):
            feed = self._feeds.get(result.store) if result.store is not None else None
            if feed is None:
                continue
            if result.position is not None and not result.duplicate:
                frame = (
                    _event_frame(committed_event(item, result)) if feed.wants_frames() else None
                )
                feed.publish(result.position, frame)
            if result.rerouted:
                feed.touch()
        return results

    def _wake(self, store: str) -> None:
        """Storage may hold events of ``store`` this replica did not publish."""
        feed = self._feeds.get(store)
        if feed is not None:
            feed.touch()

    def _authorize_store(self, request: Request) -> str:
        store = str(request.path_params["store"])
        token = _bearer(request)
        expected = self._store_digests.get(store, _DUMMY_DIGEST)
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), expected):
            self._log_token_refused(store)
            raise RequestRefused(404, "not found")
        return store

    def _log_token_refused(self, store: str) -> None:
        """A warning per store (at most every REFUSAL_LOG_INTERVAL): a store PC whose token
        does not match polls every few seconds, and only this line says why it gets nothing."""
        # The path is the caller's: only configured store ids get a line of their own.
        known = store if store in self._store_digests else "(not a configured store)"
        now = self.clock()
        last, unlogged = self._token_refusals.get(known, (float("-inf"), 0))
        if now - last < REFUSAL_LOG_INTERVAL:
            self._token_refusals[known] = (last, unlogged + 1)
            return
        log.warning("store_token_refused", store=known, refusals_since_last_line=unlogged + 1)
        self._token_refusals[known] = (now, 0)

    async def store_events(self, request: Request) -> Response:
        """Long-poll a store's stream after a cursor."""
        try:
            store = self._authorize_store(request)
            after = _int_param(request, "after", None, minimum=0)
            # A longer ask is held as long as this relay allows, not refused: an operator who
            # lowers the timeout below a daemon's wait must not take its store off the air.
            wait = min(
                _float_param(request, "wait", 0.0, maximum=MAX_LONG_POLL_ASK),
                self.config.delivery.long_poll_timeout,
            )
            limit = _int_param(request, "limit", DEFAULT_READ_LIMIT, minimum=1)
        except RequestRefused as exc:
            return _auth_error(exc)
        self._last_poll[store] = self.clock()
        try:
            if after is None:
                after = await self.storage.acked(store)
            deadline = asyncio.get_running_loop().time() + wait
            feed = self._feeds[store]
            while True:
                changed = feed.changed()
                events = await self.storage.read(store, after, min(limit or 1, MAX_READ_LIMIT))
                remaining = deadline - asyncio.get_running_loop().time()
                if events or remaining <= 0 or self._closing:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, WAKE_RECHECK_INTERVAL)):
                        await changed.wait()
        except StorageError as exc:
            log.warning("store_read_failed", store=store, error=str(exc))
            return _error(503, "storage unavailable")
        cursor = events[-1].position if events else after
        return JSONResponse({"events": [event.to_json() for event in events], "cursor": cursor})

    async def store_stream(self, request: Request) -> Response:
        """A server-sent-event stream of a store's events after a cursor (``Last-Event-ID``,
        else ``?after=``, else the acknowledged cursor), held open until the client leaves or
        the relay stops."""
        try:
            store = self._authorize_store(request)
            after = _int_value(request.headers.get("last-event-id"), "Last-Event-ID")
            if after is None:
                after = _int_param(request, "after", None, minimum=0)
            if after is None:
                after = await self.storage.acked(store)
        except RequestRefused as exc:
            return _auth_error(exc)
        except StorageError as exc:
            log.warning("store_read_failed", store=store, error=str(exc))
            return _error(503, "storage unavailable")
        self._last_poll[store] = self.clock()
        return _EventStream(self, store, after, self._feeds[store])

    async def stream(self, store: str, after: int, send: Send, gone: asyncio.Event) -> None:
        """Send a store's events after ``after`` until ``gone`` or the relay closes."""
        feed = self._feeds[store]
        feed.streams += 1
        try:
            await self._send_events(feed, store, after, send, gone)
        finally:
            feed.closed()

    async def _send_events(
        self, feed: StoreFeed, store: str, after: int, send: Send, gone: asyncio.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        read_storage, touched = True, feed.touched
        quiet_since = loop.time()
        while not (gone.is_set() or self._closing):
            changed = feed.changed()
            after, frames = feed.frames_after(after)
            if not frames and (read_storage or feed.touched != touched or feed.has_beyond(after)):
                touched = feed.touched
                # As many as a long-poll answers by default: a backlog of large events is
                # sent in pieces, never all in one buffer.
                events = await self.storage.read(store, after, DEFAULT_READ_LIMIT)
                read_storage = len(events) == DEFAULT_READ_LIMIT
                frames = [_event_frame(event) for event in events]
                if events:
                    after = events[-1].position or after
            if frames:
                await send({"type": "http.response.body", "body": b"".join(frames),
                            "more_body": True})
                quiet_since = loop.time()
                self._last_poll[store] = self.clock()
                continue
            heartbeat_in = quiet_since + STREAM_HEARTBEAT - loop.time()
            if heartbeat_in <= 0:
                await send({"type": "http.response.body", "body": sse.KEEPALIVE,
                            "more_body": True})
                quiet_since = loop.time()
                self._last_poll[store] = self.clock()
                continue
            # One future and one timer per wake-up, not two tasks: the client leaving
            # wakes the feed too (_EventStream).
            try:
                async with asyncio.timeout(min(heartbeat_in, WAKE_RECHECK_INTERVAL)):
                    await changed.wait()
            except TimeoutError:
                read_storage = True  # a wake-up may have been lost: look again

    async def store_ack(self, request: Request) -> Response:
        """Acknowledge a store's stream up to a cursor."""
        try:
            store = self._authorize_store(request)
            payload = await _json_body(request)
            cursor = payload.get("cursor")
            if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
                raise RequestRefused(400, "cursor must be a non-negative integer")
        except RequestRefused as exc:
            return _auth_error(exc)
        try:
            acked = await self.storage.ack(store, cursor, self.clock())
        except StorageError:
            return _error(503, "storage unavailable")
        return JSONResponse({"acked": acked})

    async def store_canary(self, request: Request) -> Response:
        """Put a canary event through intake storage into the store's own stream."""
        try:
            store = self._authorize_store(request)
        except RequestRefused as exc:
            return _auth_error(exc)
        now = self.clock()
        item = Incoming(
            received_at=now,
            request_id=None,
            content_key=f"canary:{uuid.uuid4().hex}",
            kind=Kind.CANARY,
            topic="canary",
            parse="json",
            signed=False,
            id_source=None,
            signed_field=None,
            store=store,
            asks=None,
            teaches=(),
            query={},
            headers={},
            body=json.dumps({"canary": True, "sent_at": now}).encode(),
        )
        try:
            result = await self.committer.submit(item)
        except NotStored:
            return _error(503, "not stored, retry later")
        self._wake(store)
        return JSONResponse({"id": result.event_id, "cursor": result.position, "sent_at": now})

    # ---- admin --------------------------------------------------------------------------

    def _authorize_admin(self, request: Request) -> None:
        if self._admin_digest is None:
            raise RequestRefused(404, "not found")
        token = _bearer(request)
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._admin_digest):
            raise RequestRefused(403, "forbidden")

    async def admin_events(self, request: Request) -> Response:
        """List unrouted, quarantined or alerted events after a cursor (an event id), oldest
        first: paging on from the returned cursor reaches every event, whatever the volume."""
        try:
            self._authorize_admin(request)
            which = request.query_params.get("status", "unrouted")
            if which not in LISTINGS:
                raise RequestRefused(400, f"status must be one of {', '.join(LISTINGS)}")
            after = _int_param(request, "after", 0, minimum=0) or 0
            limit = _int_param(request, "limit", DEFAULT_READ_LIMIT, minimum=1) or 1
        except RequestRefused as exc:
            return _auth_error(exc)
        try:
            events = await self.storage.list_events(which, after, limit)
        except StorageError:
            return _error(503, "storage unavailable")
        cursor = events[-1].event_id if events else after
        return JSONResponse({"events": [event.to_json() for event in events], "cursor": cursor})

    async def admin_assign(self, request: Request) -> Response:
        """Assign an event to a store and append it to that store's stream (replay)."""
        try:
            self._authorize_admin(request)
            raw_id = str(request.path_params["event_id"])
            if not raw_id.isdigit():
                raise RequestRefused(400, "event id must be a number")
            payload = await _json_body(request)
            store = payload.get("store")
            if not isinstance(store, str) or store not in self._store_digests:
                raise RequestRefused(400, "store must be a configured store id")
        except RequestRefused as exc:
            return _auth_error(exc)
        try:
            result = await self.storage.assign(int(raw_id), store, self.clock())
        except StorageError:
            return _error(503, "storage unavailable")
        if result is None:
            return _error(404, "no such event")
        self._wake(store)
        log.info("event_assigned", event_id=result.event_id, store=store, position=result.position)
        self._note_rerouted(result)
        return JSONResponse({"event": result.event_id, "store": store, "cursor": result.position})

    async def admin_stats(self, request: Request) -> Response:
        """Counts and per-store stream state."""
        stats = await self._stats_for(request, admin_only=True)
        if isinstance(stats, Response):
            return stats
        return JSONResponse(
            {
                "events": stats.events,
                "unrouted": stats.unrouted,
                "quarantined": stats.quarantined,
                "alerted": stats.alerted,
                "intake": self.metrics.intake_counts(),
                "stores": [
                    {
                        "store": s.store,
                        "head": s.head,
                        "acked": s.acked,
                        "oldest_unacked_at": s.oldest_unacked_at,
                    }
                    for s in stats.streams
                ],
                "missing_stores": self.missing_stores(),
            }
        )

    async def _stats_for(self, request: Request, *, admin_only: bool) -> Stats | Response:
        """Storage counts for a caller, or the answer refusing it (or storage's failure)."""
        try:
            if admin_only:
                self._authorize_admin(request)
        except RequestRefused as exc:
            return _auth_error(exc)
        try:
            return await self.storage.stats()
        except StorageError:
            return _error(503, "storage unavailable")

    def missing_stores(self) -> list[str]:
        """Configured stores that have not polled this replica within canary_window."""
        now = self.clock()
        return [
            store
            for store in sorted(self._store_digests)
            if now - self._last_poll.get(store, -math.inf) > self.config.delivery.canary_window
        ]

    # ---- health -------------------------------------------------------------------------

    async def healthz(self, _request: Request) -> Response:
        """The process is alive and its loop answers."""
        return PlainTextResponse("ok\n")

    async def readyz(self, _request: Request) -> Response:
        """Storage accepts a write transaction."""
        try:
            await self.storage.check_writable()
        except StorageError as exc:
            return PlainTextResponse(f"storage not writable: {exc}\n", status_code=503)
        return PlainTextResponse("ready\n")

    async def metrics_page(self, request: Request) -> Response:
        """Prometheus text exposition: aggregates for anyone, per-store series only with the
        admin token (a wrong token is refused, so a misconfigured scraper notices)."""
        per_store = "authorization" in request.headers
        stats = await self._stats_for(request, admin_only=per_store)
        if isinstance(stats, Response):
            return stats
        body = self.metrics.render(
            stats,
            self.clock(),
            self.missing_stores(),
            stores=len(self._store_digests),
            per_store=per_store,
        )
        return Response(body, media_type=CONTENT_TYPE)

    async def run_cleanup(self) -> int:
        """Delete what is older than the retention period; return events deleted."""
        cutoff = self.clock() - self.config.delivery.retention_days * 86400.0
        deleted = await self.storage.purge(cutoff)
        log.info("retention_purged", events=deleted, before=cutoff)
        return deleted

    async def run_alert_check(self) -> list[int]:
        """Route waiting events whose route is known by now, then raise the alert for fraud
        alerts unrouted for longer than unroutable_alert_after; return the event ids newly
        alerted."""
        now = self.clock()
        moved = await self.storage.route_waiting(now)
        if moved:
            self.metrics.count_rerouted(len(moved))
            for store in {store for _event, store in moved}:
                self._wake(store)
            log.info("events_rerouted", events=[event for event, _store in moved], by="sweep")
        after = self.config.delivery.unroutable_alert_after
        alerted = await self.storage.alert_unroutable(now - after, now)
        if alerted:
            self.metrics.count_alerted(len(alerted))
        for event in alerted:
            # A fraud alert is never resent: an operator must find its store (or its sale)
            # by hand, so this is an error, not a warning.
            log.error(
                "fraud_alert_unroutable",
                event_id=event.event_id,
                topic=event.topic,
                received_at=event.received_at,
                waited_seconds=round(now - event.received_at, 1),
                waits_for=event.asks,
                hint="GET /admin/events?status=alerted, then POST /admin/events/{id}/assign",
            )
        return [event.event_id for event in alerted]

    async def _alert_loop(self) -> None:
        after = self.config.delivery.unroutable_alert_after
        low, high = ALERT_CHECK_BOUNDS
        interval = min(max(after * ALERT_CHECK_FRACTION, low), high)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.run_alert_check()
            except StorageError as exc:
                log.warning("unroutable_check_failed", error=str(exc))

    async def _cleanup_loop(self) -> None:
        while True:
            try:
                await self.run_cleanup()
            except StorageError as exc:
                log.warning("retention_failed", error=str(exc))
            await asyncio.sleep(CLEANUP_INTERVAL)


class _EventStream(Response):
    """The answer of ``/stores/{id}/stream``: headers, an ``open`` message, then events."""

    def __init__(self, service: RelayService, store: str, after: int, feed: StoreFeed) -> None:
        super().__init__(media_type="text/event-stream")
        self._service = service
        self._store = store
        self._after = after
        self._feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            self._feed.wake()  # the stream waits on its feed alone

        watcher = asyncio.get_running_loop().create_task(watch(), name="stream-disconnect")
        try:
            await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
            opening = json.dumps({"cursor": self._after, "heartbeat": STREAM_HEARTBEAT})
            await send({"type": "http.response.body", "more_body": True,
                        "body": sse.frame(opening.encode(), event="open")})
            await self._service.stream(self._store, self._after, send, gone)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write; it reconnects with its own cursor
        except StorageError as exc:
            # Headers are sent; ending the stream makes the client reconnect (and back off).
            log.warning("store_read_failed", store=self._store, error=str(exc))
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def _event_frame(event: StoredEvent) -> bytes:
    return sse.frame(_compact_json(event.to_json()), event_id=event.position)


class _Body:
    """A request body read incrementally, never more than ``limit`` bytes buffered."""

    def __init__(self, receive: Receive, headers: dict[str, str], limit: int, too_large: str):
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestRefused(400, "content-length is not a number")
            if int(declared) > limit:
                raise RequestRefused(413, too_large)
        self._receive = receive
        self._limit = limit
        self._too_large = too_large
        self._chunks: list[bytes] = []
        self._size = 0
        self._complete = False

    async def read(self, at_least: int | None = None) -> bytes:
        """The body read so far once it holds ``at_least`` bytes (None: all of it)."""
        while not self._complete and (at_least is None or self._size < at_least):
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            self._size += len(chunk)
            if self._size > self._limit:
                raise RequestRefused(413, self._too_large)
            self._chunks.append(chunk)
            self._complete = not message.get("more_body", False)
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestRefused(401, "bearer token required")
    return token.strip()


def _auth_error(exc: RequestRefused) -> JSONResponse:
    if exc.status == 401:
        return _error(401, exc.reason, **{"WWW-Authenticate": "Bearer"})
    return _error(exc.status, exc.reason)


def _int_param(request: Request, name: str, default: int | None, *, minimum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18 or int(raw) < minimum:
        raise RequestRefused(400, f"{name} must be an integer >= {minimum}")
    return int(raw)


def _int_value(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise RequestRefused(400, f"{name} must be a non-negative integer")
    return int(raw)


def _float_param(request: Request, name: str, default: float, *, maximum: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RequestRefused(400, f"{name} must be a number of seconds") from None
    if not 0 <= value <= maximum:
        raise RequestRefused(400, f"{name} must be between 0 and {maximum:g} seconds")
    return value


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > 4096:
        raise RequestRefused(413, "body too large")
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise RequestRefused(400, "body must be a JSON object") from None
    if not isinstance(payload, dict):
        raise RequestRefused(400, "body must be a JSON object")
    return payload
