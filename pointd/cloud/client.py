"""The async HTTP client for Mercado Pago's Point Integration API and ``/v1/payments``.

It is also the transport of the Orders API client (``pointd.cloud.orders``), through
``get_json``, ``send_json`` and ``parse``, so both APIs share one error mapping.

Theory of operation. Every call goes through one ``httpx.AsyncClient`` with a timeout per
phase, and every failure is translated at this boundary into the tree of
``pointd.cloud.errors``, keeping apart what provably did not reach Mercado Pago
(``NotSent``) from what may have (``OutcomeUnknown``):

- connect errors, connect and pool timeouts → ``NotSent``;
- read/write timeouts, resets, protocol errors after the request was written →
  ``OutcomeUnknown``; so is a 5xx answer to anything that is not a GET;
- any other HTTP error status → the ``Rejected`` subclass for that status and call.

Reads (GET) are retried here, with capped full-jitter back-off, honouring a 429's
``Retry-After``, and intent reads are paced to one request per second per intent id.
Writes are never retried here: a create, cancel or refund that may have arrived must be
reconciled by the caller (by external_reference, the events endpoint, or a 409), which
is a decision for the core, not for a transport.

Time, sleeping and randomness are injected, so tests run the retry and pacing logic on a
fake clock without waiting.
"""

from __future__ import annotations

import asyncio
import random as random_module
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
import structlog

from pointd.cloud.errors import (
    InvalidRequest,
    MalformedResponse,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    Rejected,
)
from pointd.cloud.models import (
    JSON,
    Device,
    DevicePage,
    Integrator,
    IntentEvent,
    ModelError,
    Payment,
    PaymentIntent,
    PaymentSearchPage,
    Refund,
    RefundIntent,
)
from pointd.cloud.pacing import IntentGetPacer, backoff_delay, retry_after_seconds
from pointd.cloud.sites import Site, SiteRuleViolation, check_create
from pointd.cloud.wire import CallKind, decide, read_error

log = structlog.get_logger(__name__)

Parsed = TypeVar("Parsed")

DEFAULT_BASE_URL = "https://api.mercadopago.com"
API = "/point/integration-api"

# A store uplink that cannot finish TCP+TLS in 5 s is effectively down; failing fast lets
# the register tell the cashier "card payments unavailable" instead of freezing.
CONNECT_TIMEOUT = 5.0
# Mercado Pago normally answers in well under 2 s; 15 s covers its slow tail while still
# bounding how long a cashier waits for "outcome unknown" and reconciliation to start.
READ_TIMEOUT = 15.0
# Request bodies are a few hundred bytes; a write stalled this long means a dead link.
WRITE_TIMEOUT = 10.0
# Waiting for a free pooled connection happens before sending, so it is always NotSent;
# a short bound keeps a burst of lanes from queueing behind a stuck connection.
POOL_TIMEOUT = 2.0
# One try plus three retries of a read: with the back-off cap this stays under ~15 s.
MAX_GET_ATTEMPTS = 4
DEVICE_PAGE_LIMIT = 50
SEARCH_PAGE_LIMIT = 50
# A loop guard for paging: no account has 50,000 terminals or matching payments.
MAX_PAGES = 1000
# GET /payment-intents/events refuses ranges longer than this (mercadopago-api.md §1.7).
MAX_EVENTS_RANGE_DAYS = 30
OPERATING_MODES = frozenset({"PDV", "STANDALONE"})
DEVICE_EVENT_CHANNELS = frozenset({"email"})
REFUND_TICKETS = frozenset({"SELLER_TICKET", "BUYER_TICKET"})
# Orders-API rule, adopted for intents too: at most 64 of letters, digits, '-' and '_'.
EXTERNAL_REFERENCE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Mercado Pago's SDKs accept 1-64 characters; the safe subset keeps keys loggable.
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The code a rejection carries when the answer names none (what the status means).
_DEFAULT_CODES = {409: "conflict_error", 423: "locked", 500: "internal_error"}
# Path parameters are opaque, but never empty, never with '/', and of sane length.
PATH_ID = re.compile(r"[^/\s]{1,128}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-phase timeouts in seconds (see the module constants for why each value)."""

    connect: float = CONNECT_TIMEOUT
    read: float = READ_TIMEOUT
    write: float = WRITE_TIMEOUT
    pool: float = POOL_TIMEOUT

    def to_httpx(self) -> httpx.Timeout:
        """The same values as an ``httpx.Timeout``."""
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def _path_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not PATH_ID.fullmatch(value):
        raise InvalidRequest(f"{what} must be a non-empty id without '/' or spaces")
    return quote(value, safe="")


def idempotency_header(key: object) -> dict[str, str]:
    """The ``X-Idempotency-Key`` header for ``key``; InvalidRequest if it is unusable."""
    if not isinstance(key, str) or not IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidRequest("idempotency_key must be 1-64 of [A-Za-z0-9_-]")
    return {"X-Idempotency-Key": key}


def cents_to_units(cents: int) -> Decimal:
    """Integer cents as major units with two decimals (1500 → Decimal("15.00"))."""
    return (Decimal(cents) / 100).quantize(Decimal("0.01"))


def _error_body(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


# Told of every request sent: method, path template, seconds, HTTP status (None: no answer).
CallObserver = Callable[[str, str, float, int | None], None]


class PointApiClient:
    """Mercado Pago's Point Integration API and the Payments reads, as typed async calls."""

    def __init__(
        self,
        base_url: str,
        access_token: str,
        *,
        site: Site = Site.MLA,
        timeouts: Timeouts = Timeouts(),
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = random_module.random,
        transport: httpx.AsyncBaseTransport | None = None,
        max_get_attempts: int = MAX_GET_ATTEMPTS,
        extra_headers: Mapping[str, str] | None = None,
        observer: CallObserver | None = None,
    ) -> None:
        if not access_token:
            raise InvalidRequest("an access token is required")
        if max_get_attempts < 1:
            raise InvalidRequest("max_get_attempts must be at least 1")
        self.site = Site(site)
        self._token = access_token
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._max_get_attempts = max_get_attempts
        self._observer = observer
        self._pacer = IntentGetPacer()
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        headers.update(extra_headers or {})
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeouts.to_httpx(),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"PointApiClient(base_url={str(self._http.base_url)!r}, site={self.site.value!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # -- devices -----------------------------------------------------------------------

    async def device_pages(
        self, store_id: str | None = None, pos_id: int | None = None
    ) -> AsyncIterator[DevicePage]:
        """Yield every page of ``GET /devices``, filtered by store and POS when given."""
        offset = 0
        for _ in range(MAX_PAGES):
            params: dict[str, str | int] = {"limit": DEVICE_PAGE_LIMIT, "offset": offset}
            if store_id is not None:
                params["store_id"] = store_id
            if pos_id is not None:
                params["pos_id"] = pos_id
            body = await self.get_json(f"{API}/devices", params=params)
            page = self.parse(DevicePage.from_json, body, CallKind.READ)
            yield page
            offset += len(page.devices)
            if not page.devices or offset >= page.total:
                return

    async def list_devices(
        self, store_id: str | None = None, pos_id: int | None = None
    ) -> list[Device]:
        """Every device of the account (all pages), optionally filtered."""
        return [
            device async for page in self.device_pages(store_id, pos_id) for device in page.devices
        ]

    async def set_operating_mode(self, device_id: str, mode: str) -> str:
        """Ask for PDV or STANDALONE; it takes effect after the terminal restarts."""
        if mode not in OPERATING_MODES:
            raise InvalidRequest(f"operating_mode must be one of {sorted(OPERATING_MODES)}")
        path = f"{API}/devices/{_path_id(device_id, 'device_id')}"
        body = await self.send_json(
            "PATCH", path, f"{API}/devices/{{device_id}}", {"operating_mode": mode}, CallKind.UPDATE
        )
        answered = body.get("operating_mode") if body else None
        return str(answered) if isinstance(answered, str) else mode

    # -- payment intents ---------------------------------------------------------------

    async def create_payment_intent(
        self,
        device_id: str,
        amount_cents: int,
        external_reference: str,
        *,
        print_on_terminal: bool = True,
        ticket_number: str | None = None,
        description: str | None = None,
        payment: Mapping[str, Any] | None = None,
    ) -> PaymentIntent:
        """Create an intent for a PDV terminal. Never retried: see the module docstring."""
        device = _path_id(device_id, "device_id")
        if not isinstance(external_reference, str) or not EXTERNAL_REFERENCE.fullmatch(
            external_reference
        ):
            raise InvalidRequest("external_reference must be 1-64 of [A-Za-z0-9_-]")
        try:
            check_create(
                self.site,
                amount_cents,
                ticket_number=ticket_number,
                description=description,
                payment=payment,
            )
        except SiteRuleViolation as exc:
            raise InvalidRequest(str(exc)) from exc
        info: dict[str, Any] = {
            "external_reference": external_reference,
            "print_on_terminal": print_on_terminal,
        }
        if ticket_number is not None:
            info["ticket_number"] = ticket_number
        request: dict[str, Any] = {"amount": amount_cents, "additional_info": info}
        if description is not None:
            request["description"] = description
        if payment is not None:
            request["payment"] = dict(payment)
        body = await self.send_json(
            "POST",
            f"{API}/devices/{device}/payment-intents",
            f"{API}/devices/{{device_id}}/payment-intents",
            request,
            CallKind.CREATE,
        )
        return self.parse(PaymentIntent.from_json, body, CallKind.CREATE)

    async def get_payment_intent(self, intent_id: str) -> PaymentIntent:
        """The intent's current state (paced to 1 request/second per intent)."""
        path = f"{API}/payment-intents/{_path_id(intent_id, 'intent_id')}"
        body = await self.get_json(
            path, template=f"{API}/payment-intents/{{id}}", pace_key=intent_id
        )
        return self.parse(PaymentIntent.from_json, body, CallKind.READ)

    async def cancel_payment_intent(self, device_id: str, intent_id: str) -> str:
        """Cancel an intent that is still OPEN; CannotCancel once the terminal took it."""
        device = _path_id(device_id, "device_id")
        intent = _path_id(intent_id, "intent_id")
        body = await self.send_json(
            "DELETE",
            f"{API}/devices/{device}/payment-intents/{intent}",
            f"{API}/devices/{{device_id}}/payment-intents/{{id}}",
            None,
            CallKind.CANCEL,
        )
        answered = body.get("id") if body else None
        return str(answered) if isinstance(answered, str | int) else intent_id

    async def intent_events(self, start_date: date, end_date: date) -> list[IntentEvent]:
        """Intents' latest states between two dates (inclusive, at most 30 days apart)."""
        if not isinstance(start_date, date) or not isinstance(end_date, date):
            raise InvalidRequest("start_date and end_date must be dates")
        if isinstance(start_date, datetime) or isinstance(end_date, datetime):
            raise InvalidRequest("start_date and end_date must be dates, not datetimes")
        if end_date < start_date:
            raise InvalidRequest("end_date is before start_date")
        if (end_date - start_date).days > MAX_EVENTS_RANGE_DAYS:
            raise InvalidRequest(f"the events range must not exceed {MAX_EVENTS_RANGE_DAYS} days")
        params = {"startDate": start_date.isoformat(), "endDate": end_date.isoformat()}
        body = await self.get_json(f"{API}/payment-intents/events", params=params)
        raw = body.get("events")
        if not isinstance(raw, list):
            raise MalformedResponse("GET payment-intents/events: no 'events' array")
        return [self.parse(IntentEvent.from_json, item, CallKind.READ) for item in raw]

    async def last_intent_event(self, intent_id: str) -> IntentEvent:
        """The latest state of one intent, from its events endpoint."""
        path = f"{API}/payment-intents/{_path_id(intent_id, 'intent_id')}/events"
        body = await self.get_json(
            path, template=f"{API}/payment-intents/{{id}}/events", pace_key=intent_id
        )
        try:
            return IntentEvent.from_json(body, payment_intent_id=intent_id)
        except ModelError as exc:
            raise MalformedResponse(f"GET payment-intents/{{id}}/events: {exc}") from exc

    # -- integrator --------------------------------------------------------------------

    async def get_integrator(self) -> Integrator:
        """The integrator record, including device-event channels."""
        body = await self.get_json(f"{API}/integrator")
        return self.parse(Integrator.from_json, body, CallKind.READ)

    async def patch_integrator(self, channels: Sequence[str]) -> None:
        """Set the device-event channels (only "email" exists; active after ~30 min)."""
        if isinstance(channels, str) or not set(channels) <= DEVICE_EVENT_CHANNELS:
            raise InvalidRequest(
                f"channels must be a list drawn from {sorted(DEVICE_EVENT_CHANNELS)}"
            )
        await self.send_json(
            "PATCH",
            f"{API}/integrator",
            f"{API}/integrator",
            {"event_channel_devices": list(channels)},
            CallKind.UPDATE,
        )

    # -- refund intents ----------------------------------------------------------------

    async def create_refund_intent(
        self,
        device_id: str,
        payment_id: str,
        *,
        print_on_terminal: Sequence[str] = ("SELLER_TICKET", "BUYER_TICKET"),
    ) -> RefundIntent:
        """Send a full refund of a Point payment to the terminal that took it. Never retried."""
        device = _path_id(device_id, "device_id")
        if not isinstance(payment_id, str) or not payment_id.isdigit():
            raise InvalidRequest("payment_id must be a numeric string")
        if isinstance(print_on_terminal, str) or not set(print_on_terminal) <= REFUND_TICKETS:
            raise InvalidRequest(f"print_on_terminal must be drawn from {sorted(REFUND_TICKETS)}")
        body = await self.send_json(
            "POST",
            f"{API}/devices/{device}/refund",
            f"{API}/devices/{{device_id}}/refund",
            {
                "payment_id": payment_id,
                "additional_info": {"print_on_terminal": list(print_on_terminal)},
            },
            CallKind.CREATE,
        )
        return self.parse(RefundIntent.from_json, body, CallKind.CREATE)

    async def get_refund_intent(self, refund_intent_id: str) -> RefundIntent:
        """A refund intent's current state."""
        path = f"{API}/refund/{_path_id(refund_intent_id, 'refund_intent_id')}"
        body = await self.get_json(path, template=f"{API}/refund/{{id}}", pace_key=refund_intent_id)
        return self.parse(RefundIntent.from_json, body, CallKind.READ)

    async def cancel_refund_intent(self, device_id: str, refund_intent_id: str) -> str:
        """Cancel a refund intent still OPEN; CannotCancel once the terminal took it."""
        device = _path_id(device_id, "device_id")
        refund = _path_id(refund_intent_id, "refund_intent_id")
        body = await self.send_json(
            "DELETE",
            f"{API}/devices/{device}/refund/{refund}",
            f"{API}/devices/{{device_id}}/refund/{{id}}",
            None,
            CallKind.CANCEL,
        )
        answered = body.get("id") if body else None
        return str(answered) if isinstance(answered, str | int) else refund_intent_id

    # -- payments ----------------------------------------------------------------------

    async def get_payment(self, payment_id: str) -> Payment:
        """``GET /v1/payments/{id}``: the authority on status, amount and collector."""
        if not isinstance(payment_id, str) or not payment_id.isdigit():
            raise InvalidRequest("payment_id must be a numeric string")
        body = await self.get_json(f"/v1/payments/{payment_id}", template="/v1/payments/{id}")
        return self.parse(Payment.from_json, body, CallKind.READ)

    async def create_payment_refund(
        self, payment_id: str, amount_cents: int | None, idempotency_key: str
    ) -> Refund:
        """``POST /v1/payments/{id}/refunds``: the amount given, or all that is left (None)."""
        if not isinstance(payment_id, str) or not payment_id.isdigit():
            raise InvalidRequest("payment_id must be a numeric string")
        headers = idempotency_header(idempotency_key)
        payload: dict[str, Any] = {}
        if amount_cents is not None:
            if isinstance(amount_cents, bool) or not isinstance(amount_cents, int):
                raise InvalidRequest("amount_cents must be an integer")
            if amount_cents <= 0:
                raise InvalidRequest("a refund amount must be a positive number of cents")
            # /v1/payments speaks float major units; two decimals are exact in JSON text.
            payload["amount"] = float(cents_to_units(amount_cents))
        body = await self.send_json(
            "POST",
            f"/v1/payments/{payment_id}/refunds",
            "/v1/payments/{id}/refunds",
            payload,
            CallKind.REFUND,
            headers=headers,
        )
        refund = self.parse(Refund.from_json, body, CallKind.REFUND)
        if refund.id is None:
            raise MalformedResponse("/v1/payments/{id}/refunds: the answer has no refund id")
        return refund

    async def get_payment_refund(self, payment_id: str, refund_id: str) -> Refund:
        """``GET /v1/payments/{id}/refunds/{refund_id}``."""
        if not isinstance(payment_id, str) or not payment_id.isdigit():
            raise InvalidRequest("payment_id must be a numeric string")
        path = f"/v1/payments/{payment_id}/refunds/{_path_id(refund_id, 'refund_id')}"
        body = await self.get_json(path, template="/v1/payments/{id}/refunds/{refund_id}")
        return self.parse(Refund.from_json, body, CallKind.READ)

    async def search_payments(
        self,
        external_reference: str | None = None,
        *,
        begin_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> list[Payment]:
        """Payments carrying ``external_reference``, or created between two moments; newest first.

        Give the reference, the two moments, or both (all pages are read).
        """
        params: dict[str, str | int] = {
            "sort": "date_created",
            "criteria": "desc",
            "limit": SEARCH_PAGE_LIMIT,
        }
        if external_reference is not None:
            if not isinstance(external_reference, str) or not EXTERNAL_REFERENCE.fullmatch(
                external_reference
            ):
                raise InvalidRequest("external_reference must be 1-64 of [A-Za-z0-9_-]")
            params["external_reference"] = external_reference
        if begin_date is not None or end_date is not None:
            if begin_date is None or end_date is None:
                raise InvalidRequest("give both begin_date and end_date, or neither")
            params |= {
                "range": "date_created",
                "begin_date": begin_date.isoformat(),
                "end_date": end_date.isoformat(),
            }
        elif external_reference is None:
            raise InvalidRequest("give an external_reference or a date range")
        found: list[Payment] = []
        for _ in range(MAX_PAGES):
            params["offset"] = len(found)
            body = await self.get_json("/v1/payments/search", params=params)
            page = self.parse(PaymentSearchPage.from_json, body, CallKind.READ)
            found.extend(page.results)
            if not page.results or len(found) >= page.total:
                break
        return found

    # -- transport ---------------------------------------------------------------------

    async def get_json(
        self,
        path: str,
        *,
        template: str | None = None,
        params: Mapping[str, str | int] | None = None,
        pace_key: str | None = None,
    ) -> JSON:
        """GET ``path`` with the read retries and pacing; the answer's JSON object."""
        template = template or path
        last_error: Exception | None = None
        for attempt in range(self._max_get_attempts):
            final = attempt == self._max_get_attempts - 1
            if pace_key is not None:
                wait = self._pacer.reserve(pace_key, self._clock())
                if wait > 0:
                    await self._sleep(wait)
            try:
                response = await self._send("GET", path, template, params=params, attempt=attempt)
            except (NotSent, OutcomeUnknown) as exc:
                if final:
                    raise
                last_error = exc
                await self._sleep(backoff_delay(attempt, self._random()))
                continue
            if response.status_code == 429:
                limited = self._rejection(response, CallKind.READ, template)
                if final:
                    raise limited
                assert isinstance(limited, RateLimited)
                await self._sleep(limited.retry_after)
                continue
            if response.status_code >= 500:
                if final:
                    raise self._rejection(response, CallKind.READ, template)
                await self._sleep(backoff_delay(attempt, self._random()))
                continue
            return self._body(response, CallKind.READ, template)
        raise AssertionError("unreachable: the last attempt raises or returns") from last_error

    async def send_json(
        self,
        method: str,
        path: str,
        template: str,
        payload: JSON | None,
        kind: CallKind,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> JSON:
        """Send one write exactly once; the answer's JSON object (``{}`` when empty)."""
        response = await self._send(
            method, path, template, json=payload, attempt=0, headers=headers
        )
        return self._body(response, kind, template)

    async def send_for_status(
        self,
        method: str,
        path: str,
        template: str,
        payload: JSON | None,
        kind: CallKind,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, JSON]:
        """Like ``send_json``, also returning the 2xx status (e.g. 202 means "accepted")."""
        response = await self._send(
            method, path, template, json=payload, attempt=0, headers=headers
        )
        return response.status_code, self._body(response, kind, template)

    async def _send(
        self,
        method: str,
        path: str,
        template: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: JSON | None = None,
        attempt: int,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        started = self._clock()
        try:
            response = await self._http.request(
                method, path, params=params, json=json, headers=headers
            )
        except (
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.PoolTimeout,
            httpx.UnsupportedProtocol,
        ) as exc:
            log.warning(
                "cloud.call_failed",
                method=method,
                path=template,
                attempt=attempt,
                error=type(exc).__name__,
                sent=False,
            )
            self._observe(method, template, started, None)
            raise NotSent(f"{method} {template}: not sent ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            log.warning(
                "cloud.call_failed",
                method=method,
                path=template,
                attempt=attempt,
                error=type(exc).__name__,
                sent="unknown",
            )
            self._observe(method, template, started, None)
            raise OutcomeUnknown(f"{method} {template}: no answer ({type(exc).__name__})") from None
        # Every device refresh and poll makes a call: an answered one is debug detail (the
        # metrics count them), a refusal is worth a line.
        report = log.debug if response.status_code < 400 else log.info
        report(
            "cloud.call",
            method=method,
            path=template,
            status=response.status_code,
            duration_ms=round((self._clock() - started) * 1000, 1),
            attempt=attempt,
        )
        self._observe(method, template, started, response.status_code)
        return response

    def _observe(self, method: str, template: str, started: float, status: int | None) -> None:
        if self._observer is None:
            return
        try:
            self._observer(method, template, self._clock() - started, status)
        except Exception:
            log.exception("cloud.observer_failed")

    def _body(self, response: httpx.Response, kind: CallKind, template: str) -> JSON:
        status = response.status_code
        if 200 <= status < 300:
            if status == 204 or not response.content:
                return {}
            try:
                body = response.json()
            except ValueError:
                raise MalformedResponse(
                    f"{template}: answer {status} is not JSON", status=status
                ) from None
            if not isinstance(body, Mapping):
                raise MalformedResponse(
                    f"{template}: answer {status} is not a JSON object", status=status
                )
            return body
        if status >= 500 and kind is not CallKind.READ:
            # Even idempotency_validation_failed says only "send it again with the same key".
            code = read_error(_error_body(response)).code.replace(self._token, "***")[:60]
            raise OutcomeUnknown(
                f"{template}: answered {status} {code}; the change may have happened",
                status=status,
            )
        raise self._rejection(response, kind, template)

    def _rejection(self, response: httpx.Response, kind: CallKind, template: str) -> Rejected:
        status = response.status_code
        found = read_error(_error_body(response))
        message = found.message.replace(self._token, "***") or f"{template} refused"
        code = found.code.replace(self._token, "***")
        chosen = decide(status, code, kind)
        if chosen is RateLimited:
            wait = retry_after_seconds(response.headers.get("retry-after"))
            return RateLimited(status, code or "too_many_requests", message, retry_after=wait)
        return chosen(status, code or _DEFAULT_CODES.get(status, ""), message)

    def parse(self, parse: Callable[[JSON], Parsed], body: object, kind: CallKind) -> Parsed:
        """Apply a model's ``from_json``; a body it cannot read is MalformedResponse."""
        if not isinstance(body, Mapping):
            raise MalformedResponse(f"{kind.value}: an element is not a JSON object")
        try:
            return parse(body)
        except ModelError as exc:
            raise MalformedResponse(f"{kind.value}: {exc}") from exc
