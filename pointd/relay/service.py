"""The relay's HTTP service: Mercado Pago intake, the store delivery API, the admin API, health.

Theory of operation. Intake checks, in this order and before anything is stored: the
declared and actual body size (read incrementally, never more than ``body_limit`` bytes
buffered), the query and headers, then Mercado Pago's ``x-signature``. A notification
that passes is written through the group committer and answered 200 only after its commit
is durable; a failed commit answers 503 so that Mercado Pago retries. Legacy IPN cannot be
verified, so it is stored flagged unsigned, as a hint that only makes a daemon ask Mercado
Pago sooner.

Stores read their own stream by long-poll with a cursor and acknowledge positions; each
bearer token is bound to one store id, and a token that does not fit the store in the path
is answered exactly like a store that does not exist. Long-polls wake on local commits and,
with several replicas, on the backend's remote-write signal; they also re-read storage
every ``WAKE_RECHECK_INTERVAL`` so that a lost wake-up only delays, never loses, an event.
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
from urllib.parse import parse_qsl

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pointd.cloud.signature import IdSource, SignatureInvalid, verify
from pointd.config.relay import RelayConfig, RelaySecrets
from pointd.relay.errors import NotStored, StorageError
from pointd.relay.group_commit import GroupCommitter
from pointd.relay.metrics import RelayMetrics
from pointd.relay.notification import Classified, Kind, classify
from pointd.relay.storage import MAX_READ_LIMIT, Incoming, Storage, WriteResult

log = structlog.get_logger(__name__)

INTAKE_PATH = "/mp/webhook"
# A long-poll re-reads storage at least this often, in case a wake-up was lost.
WAKE_RECHECK_INTERVAL = 2.0
# Refusals (bad signatures, oversize bodies) are logged at most this often, with a count.
REFUSAL_LOG_INTERVAL = 10.0
# How often the retention job runs; retention is in days, so hourly is plenty.
CLEANUP_INTERVAL = 3600.0
DEFAULT_READ_LIMIT = 100
MAX_QUERY_LENGTH = 2048
MAX_HEADER_VALUE = 256
# Headers that may carry credentials are never stored; x-signature is a MAC, not a secret.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_SIGNIFICANT_QUERY = ("data.id", "type", "topic", "id")
_DUMMY_DIGEST = hashlib.sha256(b"pointd-relay-no-such-store").digest()


class ClientGone(Exception):
    """The sender disconnected before its request was read; there is no one to answer."""


class BadRequest(Exception):
    """The request is malformed; answered 4xx with the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _error(status: int, reason: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers or None)


def _printable(value: str) -> bool:
    # For ASCII text, isprintable() is exactly the range " " to "~".
    return value.isascii() and value.isprintable()


async def _send_json(
    send: Send,
    status: int,
    payload: dict[str, Any],
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
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
        self._webhook_secret = secrets.webhook_secret
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
        self._wakers: dict[str, asyncio.Event] = {}
        self._closing = False
        self._last_poll: dict[str, float] = {}
        self.committer: GroupCommitter[Incoming, WriteResult] = GroupCommitter(
            storage.write_batch,
            batch_max=config.storage.batch_max,
            batch_wait=config.storage.batch_wait,
            on_commit=self.metrics.observe_commit,
        )
        self._refusal_logged_at = -math.inf
        self._refusals_unlogged = 0
        self._routes = Starlette(
            routes=[
                Route(INTAKE_PATH, _intake_method_not_allowed),
                Route("/stores/{store}/events", self.store_events, methods=["GET"]),
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
        cleanup = asyncio.get_running_loop().create_task(self._cleanup_loop(), name="retention")
        log.info("relay_started", backend=self.config.storage.backend,
                 stores=len(self._store_digests))
        try:
            yield
        finally:
            cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleanup
            await self.committer.stop()
            await self.storage.close()

    def begin_shutdown(self) -> None:
        """Answer every waiting long-poll now (stores poll again after the restart)."""
        self._closing = True
        for waker in list(self._wakers.values()):
            waker.set()

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
        except BadRequest as exc:
            outcome = {401: "unauthorized", 413: "too_large"}.get(exc.status, "bad_request")
            self.metrics.count_intake(outcome)
            self._log_refusal(exc)
            headers = [(b"www-authenticate", b"x-signature")] if exc.status == 401 else []
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
        # Counted, not logged: a log line per notification would cost more than its share
        # of the commit, and the stored row is the audit record.
        self.metrics.count_intake(outcome)
        if result.store is not None and result.position is not None:
            self._wake(result.store)
        await _send_json(send, 200, {"status": outcome, "event": result.event_id})

    def _log_refusal(self, exc: BadRequest) -> None:
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

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        limit = self.config.intake.body_limit
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BadRequest(400, "content-length is not a number")
            if int(declared) > limit:
                raise BadRequest(413, f"body larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"body larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _read_query(self, scope: Scope) -> dict[str, str]:
        raw: bytes = scope.get("query_string", b"")
        if len(raw) > MAX_QUERY_LENGTH:
            raise BadRequest(414, "query string too long")
        query: dict[str, str] = {}
        if not raw:
            return query
        for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
            if key in query:
                raise BadRequest(400, f"query parameter {key[:40]!r} is repeated")
            if key in _SIGNIFICANT_QUERY and (
                not value or len(value) > MAX_HEADER_VALUE or not _printable(value)
            ):
                raise BadRequest(400, f"query parameter {key!r} is empty or not printable")
            query[key] = value
        return query

    def _read_headers(self, scope: Scope) -> dict[str, str]:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            if name in _SECRET_HEADERS:
                continue
            headers[name] = raw_value.decode("latin-1")
        request_id = headers.get("x-request-id")
        if request_id is not None and (
            not request_id or len(request_id) > MAX_HEADER_VALUE or not _printable(request_id)
        ):
            raise BadRequest(400, "x-request-id is empty, too long or not printable")
        return headers

    async def _admit(self, scope: Scope, receive: Receive) -> Incoming:
        query = self._read_query(scope)
        headers = self._read_headers(scope)
        body = await self._read_body(headers, receive)
        now = self.clock()
        classified = classify(body, query)
        signed, id_source = self._check_signature(
            classified.kind, classified.body_id, query, headers, now
        )
        if signed:
            _require_signed_resource(classified, id_source, query)
        store = classified.store if classified.store in self._store_digests else None
        significant = "".join(f"{key}={query.get(key, '')}\n" for key in _SIGNIFICANT_QUERY)
        return Incoming(
            received_at=now,
            # Only a signed notification may claim its request id for deduplication: an
            # unsigned one (IPN) reusing a request id must not make the signed webhook that
            # carries it look like a duplicate. The header itself is kept either way.
            request_id=headers.get("x-request-id") if signed else None,
            content_key=hashlib.sha256(significant.encode() + body).hexdigest(),
            kind=classified.kind,
            topic=classified.topic,
            parse=classified.parse,
            signed=signed,
            id_source=id_source,
            store=store,
            asks=classified.asks,
            teaches=classified.teaches,
            query=query,
            headers=headers,
            body=body,
        )

    def _check_signature(
        self,
        kind: Kind,
        body_id: str | None,
        query: dict[str, str],
        headers: dict[str, str],
        now: float,
    ) -> tuple[bool, str | None]:
        secret = self._webhook_secret
        header = headers.get("x-signature")
        # IPN cannot be verified with the secret (seed 003); keep it as an unsigned hint.
        required = self.config.intake.signature_required and kind != Kind.IPN
        if secret is None or (header is None and not required):
            return False, None
        try:
            verified = verify(
                secret.reveal(),
                header,
                request_id=headers.get("x-request-id"),
                query_data_id=query.get("data.id"),
                body_id=body_id,
                now=now,
                window_seconds=self.config.intake.ts_window or None,
            )
        except SignatureInvalid as exc:
            if required:
                raise BadRequest(401, exc.reason) from None
            return False, None
        return True, str(verified.id_source)

    # ---- store delivery -----------------------------------------------------------------

    def _wake(self, store: str) -> None:
        waker = self._wakers.pop(store, None)
        if waker is not None:
            waker.set()

    def _authorize_store(self, request: Request) -> str:
        store = str(request.path_params["store"])
        token = _bearer(request)
        expected = self._store_digests.get(store, _DUMMY_DIGEST)
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), expected):
            raise BadRequest(404, "not found")
        return store

    async def store_events(self, request: Request) -> Response:
        """Long-poll a store's stream after a cursor."""
        try:
            store = self._authorize_store(request)
            after = _int_param(request, "after", None, minimum=0)
            wait = _float_param(
                request, "wait", 0.0, maximum=self.config.delivery.long_poll_timeout
            )
            limit = _int_param(request, "limit", DEFAULT_READ_LIMIT, minimum=1)
        except BadRequest as exc:
            return _auth_error(exc)
        self._last_poll[store] = self.clock()
        try:
            if after is None:
                after = await self.storage.acked(store)
            deadline = asyncio.get_running_loop().time() + wait
            while True:
                waker = self._wakers.setdefault(store, asyncio.Event())
                events = await self.storage.read(store, after, min(limit or 1, MAX_READ_LIMIT))
                remaining = deadline - asyncio.get_running_loop().time()
                if events or remaining <= 0 or self._closing:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waker.wait(), min(remaining, WAKE_RECHECK_INTERVAL))
        except StorageError as exc:
            log.warning("store_read_failed", store=store, error=str(exc))
            return _error(503, "storage unavailable")
        cursor = events[-1].position if events else after
        return JSONResponse({"events": [event.to_json() for event in events], "cursor": cursor})

    async def store_ack(self, request: Request) -> Response:
        """Acknowledge a store's stream up to a cursor."""
        try:
            store = self._authorize_store(request)
            payload = await _json_body(request)
            cursor = payload.get("cursor")
            if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
                raise BadRequest(400, "cursor must be a non-negative integer")
        except BadRequest as exc:
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
        except BadRequest as exc:
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
            raise BadRequest(404, "not found")
        token = _bearer(request)
        if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._admin_digest):
            raise BadRequest(403, "forbidden")

    async def admin_events(self, request: Request) -> Response:
        """List unrouted or quarantined events, newest first."""
        try:
            self._authorize_admin(request)
            which = request.query_params.get("status", "unrouted")
            if which not in {"unrouted", "quarantined"}:
                raise BadRequest(400, "status must be unrouted or quarantined")
            limit = _int_param(request, "limit", DEFAULT_READ_LIMIT, minimum=1) or 1
        except BadRequest as exc:
            return _auth_error(exc)
        events = await self.storage.list_events(which, limit)
        return JSONResponse({"events": [event.to_json() for event in events]})

    async def admin_assign(self, request: Request) -> Response:
        """Assign an event to a store and append it to that store's stream (replay)."""
        try:
            self._authorize_admin(request)
            raw_id = str(request.path_params["event_id"])
            if not raw_id.isdigit():
                raise BadRequest(400, "event id must be a number")
            payload = await _json_body(request)
            store = payload.get("store")
            if not isinstance(store, str) or store not in self._store_digests:
                raise BadRequest(400, "store must be a configured store id")
        except BadRequest as exc:
            return _auth_error(exc)
        result = await self.storage.assign(int(raw_id), store, self.clock())
        if result is None:
            return _error(404, "no such event")
        self._wake(store)
        log.info("event_assigned", event_id=result.event_id, store=store, position=result.position)
        return JSONResponse({"event": result.event_id, "store": store, "cursor": result.position})

    async def admin_stats(self, request: Request) -> Response:
        """Counts and per-store stream state."""
        try:
            self._authorize_admin(request)
        except BadRequest as exc:
            return _auth_error(exc)
        stats = await self.storage.stats()
        return JSONResponse(
            {
                "events": stats.events,
                "unrouted": stats.unrouted,
                "quarantined": stats.quarantined,
                "intake": dict(self.metrics.intake),
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

    async def metrics_page(self, _request: Request) -> Response:
        """Prometheus text exposition."""
        stats = await self.storage.stats()
        return PlainTextResponse(
            self.metrics.render(stats, self.clock(), self.missing_stores()),
            media_type="text/plain; version=0.0.4",
        )

    async def run_cleanup(self) -> int:
        """Delete what is older than the retention period; return events deleted."""
        cutoff = self.clock() - self.config.delivery.retention_days * 86400.0
        deleted = await self.storage.purge(cutoff)
        log.info("retention_purged", events=deleted, before=cutoff)
        return deleted

    async def _cleanup_loop(self) -> None:
        while True:
            try:
                await self.run_cleanup()
            except StorageError as exc:
                log.warning("retention_failed", error=str(exc))
            await asyncio.sleep(CLEANUP_INTERVAL)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BadRequest(401, "bearer token required")
    return token.strip()


def _require_signed_resource(
    classified: Classified, id_source: str | None, query: dict[str, str]
) -> None:
    """Refuse a signature that names one resource on a body about another.

    The signature covers an id, not the body: without this check a captured signature for
    payment 111 could carry a body about payment 222 (or another store's intent) and the
    relay would route, and teach routes, by the body. Whichever id was signed (the query's
    data.id, or the body's id as Point intents are signed) must be the resource's id when
    the body names one.
    """
    resource = classified.resource_id
    if resource is None:
        return
    if id_source in {IdSource.QUERY, IdSource.QUERY_LOWER}:
        signed_id: str | None = query.get("data.id")
    elif id_source in {IdSource.BODY, IdSource.BODY_LOWER}:
        signed_id = classified.body_id
    else:
        return
    if signed_id is None or resource.lower() != signed_id.lower():
        raise BadRequest(401, "x-signature names another resource than the body")


def _auth_error(exc: BadRequest) -> JSONResponse:
    if exc.status == 401:
        return _error(401, exc.reason, **{"WWW-Authenticate": "Bearer"})
    return _error(exc.status, exc.reason)


def _int_param(request: Request, name: str, default: int | None, *, minimum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18 or int(raw) < minimum:
        raise BadRequest(400, f"{name} must be an integer >= {minimum}")
    return int(raw)


def _float_param(request: Request, name: str, default: float, *, maximum: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(400, f"{name} must be a number of seconds") from None
    if not 0 <= value <= maximum:
        raise BadRequest(400, f"{name} must be between 0 and {maximum:g} seconds")
    return value


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > 4096:
        raise BadRequest(413, "body too large")
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise BadRequest(400, "body must be a JSON object") from None
    if not isinstance(payload, dict):
        raise BadRequest(400, "body must be a JSON object")
    return payload
