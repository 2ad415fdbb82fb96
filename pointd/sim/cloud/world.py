"""The simulated Mercado Pago account: devices, intents, payments, refunds, webhooks due.

Theory of operation. ``SimWorld`` is plain code with no I/O and no clock of its own:
every call takes ``now``, the simulator's time in seconds since it started. Anything
that happens later (an intent's next step, abandonment, a payment settling, a webhook
delivery or its retry) is a timer in one heap ordered by due time. ``run_due(now)``
fires every timer due by ``now`` in time order; a timer that fires schedules its
successor relative to its own due time, not to ``now``, so advancing the clock by an
hour replays the same timeline as living through it. ``run_due`` returns the webhook
deliveries that fell due, in order; the HTTP layer sends them and reports each result
back with ``delivery_done``, which schedules the retry.

Intent timeline (delays from ``Delays``)::

    OPEN ─take→ ON_TERMINAL ─read_card→ PROCESSING ─authorise→ PROCESSED ─close→ FINISHED
      │                 └─read_card→ CANCELED (canceled_on_terminal)
      │                                     ├─authorise→ ERROR (error)
      │                                     └─authorise→ CONFIRMATION_REQUIRED ─settle→ payment
      ├─ DELETE → CANCELED (only while OPEN)
      └─ abandon_after without being taken → ABANDONED

A payment resource appears at PROCESSED (or CONFIRMATION_REQUIRED). Refund intents
follow OPEN → ON_TERMINAL → PROCESSING → FINISHED and then mark the payment refunded;
``/v1/payments/{id}/refunds`` refunds at once. Orders-API orders (``pointd.sim.cloud.orders``)
are intents with ``api == "orders"``: the same timeline, rendered as orders, with their
notifications sent through ``order_notifier``. Errors are ``SimApiError`` carrying
Mercado Pago's error shape.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from pointd.cloud.sites import SITE_RULES, SiteRuleViolation, check_create
from pointd.sim.cloud.config import SimConfig, SimDevice
from pointd.sim.cloud.scenarios import (
    CreateFailure,
    Outcome,
    Scenario,
    ScenarioBook,
    WebhookQuirk,
)

OPEN = "OPEN"
ON_TERMINAL = "ON_TERMINAL"
PROCESSING = "PROCESSING"
PROCESSED = "PROCESSED"
FINISHED = "FINISHED"
CONFIRMATION_REQUIRED = "CONFIRMATION_REQUIRED"
CANCELED = "CANCELED"
ERROR = "ERROR"
ABANDONED = "ABANDONED"
FINAL = frozenset({FINISHED, CONFIRMATION_REQUIRED, CANCELED, ERROR, ABANDONED})

POINT_TOPIC = "point_integration_wh"
INTENT_API = "intent"
ORDERS_API = "orders"
IDEMPOTENCY_CONFLICT = "idempotency_key_already_used"
FRAUD_TOPIC = "stop_delivery_op_wh"
FIRST_PAYMENT_ID = 50_000_000_001
MAX_EVENTS_RANGE_DAYS = 30
# Mercado Pago's documented limit for GET payment intent: 1 request/second.
INTENT_GET_INTERVAL = 1.0
PAGE_LIMIT_MAX = 100
SIM_CARD = {"first_six_digits": "503175", "last_four_digits": "0604"}


class ErrorShape(StrEnum):
    """The three error bodies Mercado Pago sends (tests/fixtures/mercadopago/real/)."""

    POINT = "point"  # Point Integration API: {message, error, status, cause}
    NESTED = "nested"  # Orders and terminals: {"errors": [{code, message}]}
    FLAT = "flat"  # Orders 401: {code, message}


class SimApiError(Exception):
    """An error answer, in the shape of the API that gives it."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        retry_after: float | None = None,
        shape: ErrorShape = ErrorShape.POINT,
    ):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.retry_after = retry_after
        self.shape = shape

    def body(self) -> dict[str, Any]:
        """The JSON body Mercado Pago sends with this error."""
        if self.shape is ErrorShape.NESTED:
            return {"errors": [{"code": self.error, "message": self.message}]}
        if self.shape is ErrorShape.FLAT:
            return {"code": self.error, "message": self.message}
        return {"message": self.message, "error": self.error, "status": self.status, "cause": []}


def orders_error(status: int, code: str, message: str) -> SimApiError:
    """An Orders or terminals API error (nested body)."""
    return SimApiError(status, code, message, shape=ErrorShape.NESTED)


@dataclass
class DeviceState:
    """A device and the mode waiting for its next restart."""

    config: SimDevice
    operating_mode: str
    pending_mode: str | None = None


@dataclass
class SimIntent:
    """A payment intent and its scripted future."""

    id: str
    device_id: str
    amount: int
    external_reference: str | None
    ticket_number: str | None
    print_on_terminal: bool | None
    description: str | None
    payment_options: Mapping[str, Any] | None
    scenario: Scenario
    created_at: float
    state: str = OPEN
    state_changed_at: float = 0.0
    payment_id: int | None = None
    stale_gets_left: int = 0
    get_429_left: int = 0
    get_5xx_left: int = 0
    last_get_at: float | None = None
    api: str = INTENT_API
    # Orders only: the payment transaction's id and the refund transactions.
    transaction_id: str | None = None
    order_refunds: list[dict[str, Any]] = field(default_factory=list)
    # Orders only: an API cancel was asked for (at_terminal: it takes effect later).
    cancel_requested: bool = False
    notifications_sent: int = 0


@dataclass
class SimPayment:
    """A ``/v1/payments`` resource."""

    id: int
    intent_id: str
    device_id: str
    amount: int
    status: str
    status_detail: str
    external_reference: str | None
    description: str | None
    created_at: float
    updated_at: float
    refunds: list[dict[str, Any]] = field(default_factory=list)
    # The tip the terminal added; ``amount`` (what was charged) includes it.
    tip: int = 0


@dataclass
class SimRefundIntent:
    """A refund intent sent to a device."""

    id: str
    device_id: str
    payment_id: int
    print_on_terminal: list[str]
    created_at: float
    state: str = OPEN
    state_changed_at: float = 0.0


@dataclass(frozen=True)
class Delivery:
    """One webhook POST to make: topic, signed id, body and attempt number (1-based)."""

    topic: str
    data_id: str
    state: str
    body: Mapping[str, Any]
    attempt: int = 1
    retried: bool = True
    # The id the x-signature manifest uses when it differs from data_id (lower-cased ORD ids).
    signed_id: str | None = None
    # The scripted quirk this delivery plays (``webhook_duplicate``, ...), counted in
    # ``SimWorld.fired`` when its first attempt is made.
    quirk: str | None = None


@dataclass(frozen=True)
class _Step:
    intent_id: str
    expect: str
    to: str


@dataclass(frozen=True)
class _Abandon:
    intent_id: str


@dataclass(frozen=True)
class _Settle:
    payment_id: int
    status: str
    status_detail: str


@dataclass(frozen=True)
class _RefundStep:
    refund_id: str
    expect: str
    to: str


@dataclass(frozen=True)
class _RefundAbandon:
    refund_id: str


@dataclass(frozen=True)
class _Deliver:
    delivery: Delivery


_Timer = _Step | _Abandon | _Settle | _RefundStep | _RefundAbandon | _Deliver


def _plan(outcome: Outcome) -> list[str]:
    """The states after OPEN that the terminal walks through for an outcome."""
    if outcome is Outcome.ABANDONED:
        return []
    if outcome is Outcome.CANCELED_ON_TERMINAL:
        return [ON_TERMINAL, CANCELED]
    if outcome is Outcome.ERROR:
        return [ON_TERMINAL, PROCESSING, ERROR]
    if outcome in (
        Outcome.CONFIRMATION_APPROVED,
        Outcome.CONFIRMATION_REJECTED,
        Outcome.CONFIRMATION_PENDING,
    ):
        return [ON_TERMINAL, PROCESSING, CONFIRMATION_REQUIRED]
    return [ON_TERMINAL, PROCESSING, PROCESSED, FINISHED]


# Payment status and status_detail created for each outcome, and the later settlement.
_PAYMENT_AT_CREATION: Mapping[Outcome, tuple[str, str]] = {
    Outcome.APPROVED: ("approved", "accredited"),
    Outcome.FINISHED_REJECTED: ("rejected", "cc_rejected_other_reason"),
    Outcome.REVERSED: ("refunded", "refunded"),
    Outcome.CONFIRMATION_APPROVED: ("in_process", "pending_review_manual"),
    Outcome.CONFIRMATION_REJECTED: ("in_process", "pending_review_manual"),
    Outcome.CONFIRMATION_PENDING: ("in_process", "pending_review_manual"),
}
_SETTLEMENT: Mapping[Outcome, tuple[str, str]] = {
    Outcome.CONFIRMATION_APPROVED: ("approved", "accredited"),
    Outcome.CONFIRMATION_REJECTED: ("rejected", "cc_rejected_other_reason"),
}


class SimWorld:
    """The simulated account; see the module docstring for the timing model."""

    def __init__(
        self,
        config: SimConfig,
        *,
        start_wall: float,
        new_uuid: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        self.config = config
        self.start_wall = start_wall
        # Where intent, order, refund and webhook request ids come from (seeded by the
        # deterministic simulation, random otherwise).
        self.new_uuid = new_uuid
        # Each scripted fault counted when it actually happened: a quirky delivery attempted,
        # a notification withheld, a create answer lost, an error answered.
        self.fired: Counter[str] = Counter()
        self.devices = {d.id: DeviceState(d, d.operating_mode) for d in config.devices}
        self.intents: dict[str, SimIntent] = {}
        self.payments: dict[int, SimPayment] = {}
        self.refunds: dict[str, SimRefundIntent] = {}
        self.scenarios = ScenarioBook()
        self.webhook_attempts: list[dict[str, Any]] = []
        self.event_channels: list[str] = []
        self.get_faults = {"get_429": 0, "get_5xx": 0}
        # True: the events endpoints answer 404, as if removed (devsite-docs PR #2220).
        self.events_unavailable = False
        self.get_faults_retry_after = 1.0
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._payment_ids = itertools.count(FIRST_PAYMENT_ID)
        self._refund_entry_ids = itertools.count(1_000_000_001)
        # Idempotency key → ((payment id, body), answer status, refund id) for /v1/payments refunds.
        self.refund_keys: dict[str, tuple[Any, int, int]] = {}
        self.order_notifier: Callable[[SimIntent, str, float], None] | None = None

    # -- time ------------------------------------------------------------------------

    def wall(self, now: float) -> datetime:
        """The simulated wall-clock time (UTC) at simulator time ``now``."""
        return datetime.fromtimestamp(self.start_wall + now, UTC)

    def iso(self, now: float) -> str:
        """``now`` as ISO-8601 with milliseconds, UTC."""
        return self.wall(now).isoformat(timespec="milliseconds")

    def next_due(self) -> float | None:
        """When the earliest timer is due, or None."""
        return self._timers[0][0] if self._timers else None

    def deliveries_pending(self) -> int:
        """Webhook deliveries (first attempts and retries) still on the timeline."""
        return sum(1 for _due, _seq, timer in self._timers if isinstance(timer, _Deliver))

    def _at(self, due: float, timer: _Timer) -> None:
        heapq.heappush(self._timers, (due, next(self._seq), timer))

    def run_due(self, now: float) -> list[Delivery]:
        """Fire every timer due by ``now``; return the webhook deliveries now due."""
        deliveries: list[Delivery] = []
        while self._timers and self._timers[0][0] <= now:
            due, _seq, timer = heapq.heappop(self._timers)
            if isinstance(timer, _Deliver):
                deliveries.append(timer.delivery)
            else:
                self._fire(timer, due)
        return deliveries

    def _fire(self, timer: _Timer, due: float) -> None:
        if isinstance(timer, _Step):
            intent = self.intents[timer.intent_id]
            if intent.state == timer.expect:
                self._move(intent, timer.to, due)
        elif isinstance(timer, _Abandon):
            intent = self.intents[timer.intent_id]
            if intent.state == OPEN:
                self._move(intent, ABANDONED, due)
        elif isinstance(timer, _Settle):
            payment = self.payments[timer.payment_id]
            if payment.status == "in_process":
                payment.status, payment.status_detail = timer.status, timer.status_detail
                payment.updated_at = due
        elif isinstance(timer, _RefundStep):
            refund = self.refunds[timer.refund_id]
            if refund.state == timer.expect:
                self._move_refund(refund, timer.to, due)
        elif isinstance(timer, _RefundAbandon):
            refund = self.refunds[timer.refund_id]
            if refund.state == OPEN:
                self._move_refund(refund, ABANDONED, due)

    # -- intents ---------------------------------------------------------------------

    def _delay_before(self, state: str) -> float:
        delays = self.config.delays
        return {
            ON_TERMINAL: delays.take,
            PROCESSING: delays.read_card,
            PROCESSED: delays.authorise,
            FINISHED: delays.close,
            CANCELED: delays.read_card,
            ERROR: delays.authorise,
            CONFIRMATION_REQUIRED: delays.authorise,
        }[state]

    def _schedule_next(self, intent: SimIntent, at: float) -> None:
        plan = _plan(intent.scenario.outcome)
        position = 0 if intent.state == OPEN else plan.index(intent.state) + 1
        if position < len(plan):
            target = plan[position]
            self._at(at + self._delay_before(target), _Step(intent.id, intent.state, target))

    def _move(self, intent: SimIntent, state: str, at: float) -> None:
        intent.state = state
        intent.state_changed_at = at
        outcome = intent.scenario.outcome
        if state in (PROCESSED, CONFIRMATION_REQUIRED):
            self._create_payment(intent, at)
        if state == CONFIRMATION_REQUIRED and outcome in _SETTLEMENT:
            assert intent.payment_id is not None
            status, detail = _SETTLEMENT[outcome]
            self._at(at + self.config.delays.settle, _Settle(intent.payment_id, status, detail))
        self._notify(intent, at)
        if state not in FINAL:
            self._schedule_next(intent, at)
        else:
            intent.stale_gets_left = intent.scenario.stale_gets

    def _create_payment(self, intent: SimIntent, at: float) -> None:
        status, detail = _PAYMENT_AT_CREATION[intent.scenario.outcome]
        tip = intent.scenario.tip_cents
        payment = SimPayment(
            id=next(self._payment_ids),
            intent_id=intent.id,
            device_id=intent.device_id,
            amount=intent.amount + tip,
            tip=tip,
            status=status,
            status_detail=detail,
            external_reference=intent.external_reference,
            description=intent.description,
            created_at=at,
            updated_at=at,
        )
        if status == "refunded":
            payment.refunds.append(self._refund_entry(payment, at, "reversal"))
        self.payments[payment.id] = payment
        intent.payment_id = payment.id

    def _refund_entry(
        self, payment: SimPayment, at: float, source: str, cents: int | None = None
    ) -> dict[str, Any]:
        return {
            "id": next(self._refund_entry_ids),
            "payment_id": payment.id,
            "amount": (payment.amount if cents is None else cents) / 100,
            "status": "approved",
            "source": {"id": str(self.config.collector_id), "name": source, "type": "collector"},
            "date_created": self.iso(at),
            "unique_sequence_number": None,
        }

    def refunded_cents(self, payment: SimPayment) -> int:
        """Cents already refunded from ``payment``."""
        return sum(round(r["amount"] * 100) for r in payment.refunds)

    def refund_now(self, payment: SimPayment, cents: int, at: float, source: str) -> dict[str, Any]:
        """Refund ``cents`` of an approved payment at once; refunded when nothing is left."""
        entry = self._refund_entry(payment, at, source, cents)
        payment.refunds.append(entry)
        payment.updated_at = at
        if self.refunded_cents(payment) >= payment.amount:
            payment.status, payment.status_detail = "refunded", "refunded"
        else:
            payment.status_detail = "partially_refunded"
        return entry

    def schedule_delivery(self, due: float, delivery: Delivery) -> None:
        """Put a webhook delivery on the timeline."""
        self._at(due, _Deliver(delivery))

    def schedule_step(self, intent_id: str, expect: str, to: str, due: float) -> None:
        """Move an intent from ``expect`` to ``to`` at ``due`` if it is still in ``expect``."""
        self._at(due, _Step(intent_id, expect, to))

    def move(self, intent: SimIntent, state: str, at: float) -> None:
        """Move an intent now, with its payments, notifications and next steps."""
        self._move(intent, state, at)

    def check_get(self, intent: SimIntent, now: float) -> None:
        """Apply the intent's scripted GET faults and the optional rate limit."""
        self._check_get(intent, now)

    def device(self, device_id: str) -> DeviceState:
        """The device, or 404 in Mercado Pago's shape."""
        return self._device(device_id)

    def busy(self, device_id: str) -> bool:
        """Whether the device has a queued (non-final) intent, order or refund intent."""
        return self._busy(device_id)

    def _device(self, device_id: str) -> DeviceState:
        device = self.devices.get(device_id)
        if device is None:
            raise SimApiError(404, "not_found", "Device not found")
        return device

    def _busy(self, device_id: str) -> bool:
        return any(
            i.device_id == device_id and i.state not in FINAL for i in self.intents.values()
        ) or any(r.device_id == device_id and r.state not in FINAL for r in self.refunds.values())

    def create_intent(
        self, device_id: str, body: object, now: float
    ) -> tuple[SimIntent, CreateFailure | None]:
        """Create an intent as ``POST .../payment-intents`` does; say how to lose the answer."""
        self._device(device_id)
        if not isinstance(body, Mapping):
            raise SimApiError(400, "bad_request", "the body must be a JSON object")
        amount = body.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise SimApiError(400, "bad_request", "amount is required and must be an integer")
        info = body.get("additional_info", {})
        if not isinstance(info, Mapping):
            raise SimApiError(400, "bad_request", "additional_info must be an object")
        reference = info.get("external_reference")
        ticket = info.get("ticket_number")
        printing = info.get("print_on_terminal")
        description = body.get("description")
        options = body.get("payment")
        for name, value, kind in (
            ("external_reference", reference, str),
            ("ticket_number", ticket, str),
            ("print_on_terminal", printing, bool),
            ("description", description, str),
        ):
            if value is not None and not isinstance(value, kind):
                raise SimApiError(400, "bad_request", f"{name} has the wrong type")
        if options is not None and not isinstance(options, Mapping):
            raise SimApiError(400, "bad_request", "payment must be an object")
        try:
            check_create(
                self.config.site,
                amount,
                ticket_number=ticket,
                description=description,
                payment=options,
            )
        except SiteRuleViolation as exc:
            raise SimApiError(400, "bad_request", str(exc)) from None
        return self.open_intent(
            SimIntent(
                id=str(self.new_uuid()),
                device_id=device_id,
                amount=amount,
                external_reference=reference,
                ticket_number=ticket,
                print_on_terminal=printing,
                description=description,
                payment_options=options,
                scenario=Scenario(),
                created_at=now,
                state_changed_at=now,
            ),
            now,
            abandon_after=self.config.abandon_after,
        )

    def open_intent(
        self, intent: SimIntent, now: float, *, abandon_after: float
    ) -> tuple[SimIntent, CreateFailure | None]:
        """Queue a validated intent or order on its device, pick its scenario, start it."""
        device = self._device(intent.device_id)
        orders = intent.api == ORDERS_API
        if device.operating_mode != "PDV":
            if orders:  # guessed code: the reference names none for this case
                raise orders_error(400, "property_value", "the terminal is not in PDV mode")
            raise SimApiError(400, "bad_request", "the device is not in PDV operating mode")
        if self._busy(intent.device_id):
            if orders:
                raise orders_error(
                    409,
                    "already_queued_order_for_terminal",
                    "The terminal already has an order waiting.",
                )
            raise SimApiError(
                409, "conflict_error", "There is already a queued payment intent for the device"
            )
        # Picked only now, so that a refused create does not use up a "next" scenario.
        intent.scenario = self.scenarios.pick(intent.amount, intent.external_reference)
        intent.get_429_left = intent.scenario.get_429
        intent.get_5xx_left = intent.scenario.get_5xx
        self.intents[intent.id] = intent
        self._at(now + abandon_after, _Abandon(intent.id))
        self._notify(intent, now)
        self._schedule_next(intent, now)
        return intent, intent.scenario.create_failure

    def created_json(self, intent: SimIntent) -> dict[str, Any]:
        """The create answer's body."""
        body: dict[str, Any] = {
            "id": intent.id,
            "device_id": intent.device_id,
            "amount": intent.amount,
            "additional_info": self._additional_info(intent, with_print=True),
        }
        if intent.description is not None:
            body["description"] = intent.description
        if intent.payment_options is not None:
            body["payment"] = dict(intent.payment_options)
        return body

    def _additional_info(self, intent: SimIntent, *, with_print: bool) -> dict[str, Any]:
        info: dict[str, Any] = {"external_reference": intent.external_reference or ""}
        if with_print and intent.print_on_terminal is not None:
            info["print_on_terminal"] = intent.print_on_terminal
        if intent.ticket_number is not None:
            info["ticket_number"] = intent.ticket_number
        return info

    def _intent(self, intent_id: str) -> SimIntent:
        intent = self.intents.get(intent_id)
        if intent is None or intent.api != INTENT_API:
            raise SimApiError(404, "not_found", "That payment intent doesn't exist!")
        return intent

    def _check_get(self, intent: SimIntent, now: float) -> None:
        if intent.get_429_left:
            intent.get_429_left -= 1
            self.fired["intent_get_429"] += 1
            raise SimApiError(
                429,
                "too_many_requests",
                "Too many requests",
                retry_after=intent.scenario.retry_after,
            )
        if intent.get_5xx_left:
            intent.get_5xx_left -= 1
            self.fired["intent_get_5xx"] += 1
            raise SimApiError(503, "internal_error", "Service unavailable")
        if self.config.enforce_get_rate_limit:
            last = intent.last_get_at
            intent.last_get_at = now
            if last is not None and now - last < INTENT_GET_INTERVAL:
                raise SimApiError(429, "too_many_requests", "Too many requests", retry_after=1.0)

    def read_intent(self, intent_id: str, now: float) -> dict[str, Any]:
        """``GET /payment-intents/{id}``, with this intent's scripted GET quirks."""
        intent = self._intent(intent_id)
        self._check_get(intent, now)
        state = intent.state
        if state in FINAL and intent.stale_gets_left:
            intent.stale_gets_left -= 1
            self.fired["stale_gets"] += 1
            return self._intent_json(intent, ON_TERMINAL, with_payment=False)
        return self._intent_json(intent, state, with_payment=True)

    def _intent_json(self, intent: SimIntent, state: str, *, with_payment: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": intent.id,
            "state": state,
            "amount": intent.amount,
            "device_id": intent.device_id,
            "additional_info": self._additional_info(intent, with_print=True),
        }
        if intent.description is not None:
            body["description"] = intent.description
        if with_payment and intent.payment_id is not None:
            body["payment"] = {"id": intent.payment_id, "type": "credit_card", "installments": 1}
        return body

    def cancel_intent(self, device_id: str, intent_id: str, now: float) -> dict[str, Any]:
        """``DELETE .../payment-intents/{id}``: only while OPEN."""
        self._device(device_id)
        intent = self._intent(intent_id)
        if intent.device_id != device_id:
            raise SimApiError(404, "101", "That payment intent doesn't exist on this device")
        if intent.state != OPEN:
            raise SimApiError(
                409,
                "conflict_error",
                f"Can't update Payment Intent ID {intent.id} due to a conflict error",
            )
        self._move(intent, CANCELED, now)
        return {"id": intent.id}

    def intent_events(self, start: str | None, end: str | None) -> dict[str, Any]:
        """``GET /payment-intents/events``: intents created in the dates, latest state."""
        if not start or not end:
            missing = [
                f"{n} query param is required"
                for n, v in (("startDate", start), ("endDate", end))
                if not v
            ]
            raise SimApiError(400, "bad_request", ", ".join(missing))
        try:
            first, last = date.fromisoformat(start), date.fromisoformat(end)
        except ValueError:
            raise SimApiError(400, "bad_request", "dates must be YYYY-MM-DD") from None
        if last < first or (last - first).days > MAX_EVENTS_RANGE_DAYS:
            raise SimApiError(400, "bad_request", "the date range must be 0-30 days")
        events = [
            {
                "payment_intent_id": i.id,
                "status": i.state,
                "created_on": self._event_time(i.state_changed_at),
            }
            for i in self.intents.values()
            if i.api == INTENT_API and first <= self.wall(i.created_at).date() <= last
        ]
        return {"events": events}

    def _event_time(self, at: float) -> str:
        return self.wall(at).strftime("%Y-%m-%dT%H:%M:%SZ")

    def last_event(self, intent_id: str, now: float) -> dict[str, Any]:
        """``GET /payment-intents/{id}/events``."""
        intent = self._intent(intent_id)
        self._check_get(intent, now)
        return {"status": intent.state, "created_on": self._event_time(intent.state_changed_at)}

    # -- webhooks --------------------------------------------------------------------

    def _notify(self, intent: SimIntent, at: float) -> None:
        if self.config.webhook_url is None:
            return
        if intent.api == ORDERS_API:
            if self.order_notifier is not None:
                self.order_notifier(intent, intent.state, at)
            return
        state = intent.state
        quirk = intent.scenario.webhook
        if state not in FINAL and not self.config.notify_all_states:
            return
        if quirk is WebhookQuirk.NEVER:
            self.fired["webhook_missing"] += 1
            return
        due = at + intent.scenario.webhook_delay
        late = "webhook_late" if intent.scenario.webhook_delay > 0 else None
        delivery = Delivery(POINT_TOPIC, intent.id, state, self.intent_webhook_body(intent, state),
                            quirk=late)
        self._at(due, _Deliver(delivery))
        if quirk is WebhookQuirk.DUPLICATE:
            self._at(due, _Deliver(replace(delivery, quirk="webhook_duplicate")))
        if quirk is WebhookQuirk.OUT_OF_ORDER and state in FINAL:
            stale = self.intent_webhook_body(intent, ON_TERMINAL)
            self._at(due, _Deliver(Delivery(POINT_TOPIC, intent.id, ON_TERMINAL, stale,
                                            quirk="webhook_out_of_order")))

    def intent_webhook_body(self, intent: SimIntent, state: str) -> dict[str, Any]:
        """A ``point_integration_wh`` body as Mercado Pago documents it (seed 000/001)."""
        body: dict[str, Any] = {
            "amount": intent.amount,
            "caller_id": self.config.caller_id,
            "client_id": self.config.client_id,
            "created_at": self.wall(intent.created_at).strftime("%Y-%m-%d %H:%M:%S"),
            "id": intent.id,
            "state": state,
            "additional_info": self._additional_info(intent, with_print=False),
        }
        if state == FINISHED and intent.payment_id is not None:
            payment = self.payments[intent.payment_id]
            body["payment"] = {"id": payment.id, "state": payment.status, "type": "credit_card"}
        elif state == CONFIRMATION_REQUIRED and intent.payment_id is not None:
            body["payment"] = {"id": intent.payment_id, "state": "", "type": ""}
        return body

    def delivery_done(
        self,
        delivery: Delivery,
        *,
        url: str,
        status_code: int | None,
        error: str | None,
        now: float,
    ) -> None:
        """Record one attempt; schedule the retry when it was not answered 2xx."""
        if delivery.quirk is not None and delivery.attempt == 1:
            self.fired[delivery.quirk] += 1
        self.webhook_attempts.append(
            {
                "topic": delivery.topic,
                "data_id": delivery.data_id,
                "state": delivery.state,
                "url": url,
                "attempt": delivery.attempt,
                "status_code": status_code,
                "error": error,
                "at": self.iso(now),
            }
        )
        answered = status_code is not None and 200 <= status_code < 300
        if answered or not delivery.retried:
            return
        if delivery.attempt >= self.config.webhook_max_attempts:
            return
        retry = Delivery(
            delivery.topic,
            delivery.data_id,
            delivery.state,
            delivery.body,
            delivery.attempt + 1,
            signed_id=delivery.signed_id,
        )
        self._at(now + self.config.webhook_retry_interval, _Deliver(retry))

    def fraud_alert(self, payment_id: int, now: float) -> Delivery:
        """A ``stop_delivery_op_wh`` notification for a payment; never retried."""
        payment = self.payments.get(payment_id)
        if payment is None:
            raise SimApiError(404, "not_found", "Payment not found")
        if self.config.webhook_url is None:
            raise SimApiError(409, "conflict_error", "no webhook_url is configured")
        body = {
            "action": "Created",
            "api_version": "v1",
            "data": {
                "description": "fraud alert (simulated)",
                "merchant_order": payment.id + 100_000_000_000,
                "payment_id": payment.id,
                "site_id": self.config.site.value,
            },
            "date_created": self.iso(now),
            "id": str(payment.id),
            "live_mode": False,
            "type": FRAUD_TOPIC,
            "user_id": self.config.collector_id,
            "version": 1,
        }
        return Delivery(FRAUD_TOPIC, str(payment.id), "fraud_alert", body, retried=False)

    # -- payments --------------------------------------------------------------------

    def payment_json(self, payment: SimPayment) -> dict[str, Any]:
        """A ``/v1/payments`` resource body (float major units, as Mercado Pago sends)."""
        refunded = self.refunded_cents(payment) / 100
        return {
            "id": payment.id,
            "status": payment.status,
            "status_detail": payment.status_detail,
            "transaction_amount": payment.amount / 100,
            "transaction_amount_refunded": refunded,
            "currency_id": SITE_RULES[self.config.site].currency_id,
            "collector_id": self.config.collector_id,
            "external_reference": payment.external_reference,
            "description": payment.description,
            "live_mode": False,
            "operation_type": "pos_payment",
            "payment_type_id": "credit_card",
            "payment_method_id": "master",
            "installments": 1,
            "captured": True,
            "date_created": self.iso(payment.created_at),
            "date_approved": self.iso(payment.updated_at) if payment.status == "approved" else None,
            "date_last_updated": self.iso(payment.updated_at),
            "card": dict(SIM_CARD),
            "refunds": list(payment.refunds),
        }

    def read_payment(self, payment_id: str) -> dict[str, Any]:
        """``GET /v1/payments/{id}``."""
        payment = self.payments.get(int(payment_id)) if payment_id.isdigit() else None
        if payment is None:
            raise SimApiError(404, "not_found", "Payment not found")
        return self.payment_json(payment)

    def search_payments(self, query: Mapping[str, str]) -> dict[str, Any]:
        """``GET /v1/payments/search`` by external_reference, with paging."""
        try:
            limit = min(int(query.get("limit", "30")), PAGE_LIMIT_MAX)
            offset = int(query.get("offset", "0"))
        except ValueError:
            raise SimApiError(400, "bad_request", "limit and offset must be integers") from None
        if limit < 1 or offset < 0:
            raise SimApiError(400, "bad_request", "limit must be >= 1 and offset >= 0")
        found = list(self.payments.values())
        if "external_reference" in query:
            found = [p for p in found if p.external_reference == query["external_reference"]]
        if query.get("range") == "date_created":
            try:
                begin = datetime.fromisoformat(query["begin_date"]).timestamp()
                end = datetime.fromisoformat(query["end_date"]).timestamp()
            except (KeyError, ValueError):
                raise SimApiError(
                    400, "bad_request", "begin_date and end_date must be ISO-8601 times"
                ) from None
            found = [p for p in found if begin <= self.start_wall + p.created_at <= end]
        found.sort(key=lambda p: p.created_at, reverse=query.get("criteria") == "desc")
        page = found[offset : offset + limit]
        return {
            "paging": {"total": len(found), "limit": limit, "offset": offset},
            "results": [self.payment_json(p) for p in page],
        }

    def _payment(self, payment_id: str) -> SimPayment:
        payment = self.payments.get(int(payment_id)) if payment_id.isdigit() else None
        if payment is None:
            raise SimApiError(404, "not_found", "Payment not found")
        return payment

    def create_payment_refund(
        self, payment_id: str, body: object, key: str | None, now: float
    ) -> tuple[int, dict[str, Any]]:
        """``POST /v1/payments/{id}/refunds``: all that is left, or ``amount``; honours keys."""
        payment = self._payment(payment_id)
        if key is not None and key in self.refund_keys:
            stored_body, status, refund_id = self.refund_keys[key]
            if stored_body != (payment.id, body):
                raise SimApiError(409, IDEMPOTENCY_CONFLICT, "the key was used with another body")
            return status, self._refund_of(payment, refund_id)
        if body is not None and not isinstance(body, Mapping):
            raise SimApiError(400, "bad_request", "the body must be a JSON object")
        left = payment.amount - self.refunded_cents(payment)
        raw = body.get("amount") if isinstance(body, Mapping) else None
        if raw is None:
            cents = left
        elif isinstance(raw, bool) or not isinstance(raw, int | float):
            raise SimApiError(400, "bad_request", "amount must be a number")
        else:
            cents = round(raw * 100)
        if payment.status != "approved":
            raise SimApiError(400, "bad_request", f"payment is {payment.status}, not refundable")
        if cents <= 0 or cents > left:
            raise SimApiError(400, "bad_request", "the amount exceeds what can be refunded")
        entry = self.refund_now(payment, cents, now, "api")
        if key is not None:
            self.refund_keys[key] = ((payment.id, body), 201, entry["id"])
        return 201, entry

    def _refund_of(self, payment: SimPayment, refund_id: int) -> dict[str, Any]:
        for entry in payment.refunds:
            if entry["id"] == refund_id:
                return entry
        raise SimApiError(404, "not_found", "Refund not found")

    def payment_refunds(self, payment_id: str) -> list[dict[str, Any]]:
        """``GET /v1/payments/{id}/refunds``."""
        return list(self._payment(payment_id).refunds)

    def payment_refund(self, payment_id: str, refund_id: str) -> dict[str, Any]:
        """``GET /v1/payments/{id}/refunds/{refund_id}``."""
        payment = self._payment(payment_id)
        if not refund_id.isdigit():
            raise SimApiError(404, "not_found", "Refund not found")
        return self._refund_of(payment, int(refund_id))

    # -- devices and integrator ------------------------------------------------------

    def list_devices(self, query: Mapping[str, str]) -> dict[str, Any]:
        """``GET /devices`` with filters and paging; numeric store ids are sent as ints."""
        try:
            limit = min(int(query.get("limit", "50")), PAGE_LIMIT_MAX)
            offset = int(query.get("offset", "0"))
            pos_filter = int(query["pos_id"]) if "pos_id" in query else None
        except ValueError:
            raise SimApiError(
                400, "bad_request", "limit, offset and pos_id must be integers"
            ) from None
        if limit < 1 or offset < 0:
            raise SimApiError(400, "bad_request", "limit must be >= 1 and offset >= 0")
        chosen = [
            d
            for d in self.devices.values()
            if ("store_id" not in query or d.config.store_id == query["store_id"])
            and (pos_filter is None or d.config.pos_id == pos_filter)
        ]
        page = chosen[offset : offset + limit]
        return {
            "devices": [
                {
                    "id": d.config.id,
                    "pos_id": d.config.pos_id,
                    # Mercado Pago sends store_id as an int or a string (gotcha 4).
                    "store_id": int(d.config.store_id)
                    if d.config.store_id.isdigit()
                    else d.config.store_id,
                    "external_pos_id": d.config.external_pos_id,
                    "operating_mode": d.operating_mode,
                }
                for d in page
            ],
            "paging": {"total": len(chosen), "offset": offset, "limit": limit},
        }

    def set_mode(self, device_id: str, body: object) -> dict[str, Any]:
        """``PATCH /devices/{id}``: remembered until the device restarts."""
        device = self._device(device_id)
        mode = body.get("operating_mode") if isinstance(body, Mapping) else None
        if mode not in ("PDV", "STANDALONE"):
            raise SimApiError(400, "bad_request", "operating_mode must be PDV or STANDALONE")
        if not device.config.logged_in:
            raise SimApiError(
                403, "forbidden", "Store id not found: nobody is logged into the device"
            )
        device.pending_mode = mode
        return {"operating_mode": mode}

    def restart_device(self, device_id: str) -> dict[str, Any]:
        """Simulate a terminal restart: a pending mode change takes effect."""
        device = self._device(device_id)
        if device.pending_mode is not None:
            device.operating_mode, device.pending_mode = device.pending_mode, None
        return {"id": device_id, "operating_mode": device.operating_mode}

    def integrator_json(self) -> dict[str, Any]:
        """``GET /integrator``."""
        return {
            "id": self.config.caller_id,
            "created_at": self.iso(0.0),
            "updated_at": self.iso(0.0),
            "notification_url_enabled": self.config.webhook_url is not None,
            "event_channel_devices": list(self.event_channels),
        }

    def patch_integrator(self, body: object) -> None:
        """``PATCH /integrator``: only the "email" channel exists."""
        channels = body.get("event_channel_devices") if isinstance(body, Mapping) else None
        if not isinstance(channels, list) or not set(channels) <= {"email"}:
            raise SimApiError(400, "bad_request", "event_channel_devices must be a list of 'email'")
        self.event_channels = list(channels)

    # -- refund intents --------------------------------------------------------------

    def create_refund(self, device_id: str, body: object, now: float) -> dict[str, Any]:
        """``POST /devices/{id}/refund`` for an approved payment taken on that device."""
        self._device(device_id)
        if not isinstance(body, Mapping):
            raise SimApiError(400, "bad_request", "the body must be a JSON object")
        raw_id = body.get("payment_id")
        if not isinstance(raw_id, str) or not raw_id.isdigit():
            raise SimApiError(400, "bad_request", "payment_id is required (numeric string)")
        payment = self.payments.get(int(raw_id))
        if payment is None or payment.device_id != device_id:
            raise SimApiError(404, "not_found", "Device or Payment not found")
        if payment.status != "approved":
            raise SimApiError(400, "bad_request", f"payment is {payment.status}, not refundable")
        info = body.get("additional_info", {})
        tickets = info.get("print_on_terminal", []) if isinstance(info, Mapping) else None
        if not isinstance(tickets, list):
            raise SimApiError(
                400, "bad_request", "additional_info.print_on_terminal must be a list"
            )
        if self._busy(device_id):
            raise SimApiError(409, "conflict_error", "Device has a queued intent")
        refund = SimRefundIntent(
            id=str(self.new_uuid()),
            device_id=device_id,
            payment_id=payment.id,
            print_on_terminal=[str(t) for t in tickets],
            created_at=now,
            state_changed_at=now,
        )
        self.refunds[refund.id] = refund
        self._at(now + self.config.abandon_after, _RefundAbandon(refund.id))
        self._at(now + self.config.delays.take, _RefundStep(refund.id, OPEN, ON_TERMINAL))
        return self.refund_json(refund, with_state=False)

    def _move_refund(self, refund: SimRefundIntent, state: str, at: float) -> None:
        refund.state = state
        refund.state_changed_at = at
        delays = self.config.delays
        if state == ON_TERMINAL:
            self._at(at + delays.read_card, _RefundStep(refund.id, ON_TERMINAL, PROCESSING))
        elif state == PROCESSING:
            self._at(at + delays.authorise, _RefundStep(refund.id, PROCESSING, FINISHED))
        elif state == FINISHED:
            payment = self.payments[refund.payment_id]
            payment.status, payment.status_detail, payment.updated_at = "refunded", "refunded", at
            payment.refunds.append(self._refund_entry(payment, at, "refund_intent"))

    def refund_json(self, refund: SimRefundIntent, *, with_state: bool = True) -> dict[str, Any]:
        """A refund intent's body."""
        body: dict[str, Any] = {
            "id": refund.id,
            "device_id": refund.device_id,
            "payment_id": str(refund.payment_id),
            "additional_info": {"print_on_terminal": list(refund.print_on_terminal)},
        }
        if with_state:
            body["state"] = refund.state
        return body

    def read_refund(self, refund_id: str) -> dict[str, Any]:
        """``GET /refund/{id}``."""
        refund = self.refunds.get(refund_id)
        if refund is None:
            raise SimApiError(404, "not_found", "Refund intent not found")
        return self.refund_json(refund)

    def cancel_refund(self, device_id: str, refund_id: str, now: float) -> dict[str, Any]:
        """``DELETE /devices/{id}/refund/{refund_id}``: only while OPEN."""
        self._device(device_id)
        refund = self.refunds.get(refund_id)
        if refund is None or refund.device_id != device_id:
            raise SimApiError(404, "101", "Refund intent not found")
        if refund.state != OPEN:
            raise SimApiError(
                409, "conflict_error", "the refund intent was already sent to the device"
            )
        self._move_refund(refund, CANCELED, now)
        return {"id": refund.id}

    # -- inspection ------------------------------------------------------------------

    def check_global_get_faults(self) -> None:
        """Consume one injected GET fault (``/_sim/faults``), if any is left."""
        if self.get_faults["get_429"]:
            self.get_faults["get_429"] -= 1
            self.fired["api_429_burst"] += 1
            raise SimApiError(
                429,
                "too_many_requests",
                "Too many requests",
                retry_after=self.get_faults_retry_after,
            )
        if self.get_faults["get_5xx"]:
            self.get_faults["get_5xx"] -= 1
            self.fired["api_5xx_burst"] += 1
            raise SimApiError(503, "internal_error", "Service unavailable")

    def record(self) -> dict[str, Any]:
        """Everything ever created, and every webhook attempt (``GET /_sim/record``)."""
        return {
            "intents": [
                {
                    "id": i.id,
                    "device_id": i.device_id,
                    "amount": i.amount,
                    "external_reference": i.external_reference,
                    "outcome": i.scenario.outcome.value,
                    "state": i.state,
                    "final": i.state in FINAL,
                    "payment_id": i.payment_id,
                    "payment_status": self.payments[i.payment_id].status if i.payment_id else None,
                    "api": i.api,
                    "created_at": self.iso(i.created_at),
                }
                for i in self.intents.values()
            ],
            "payments": [
                {
                    "id": p.id,
                    "intent_id": p.intent_id,
                    "device_id": p.device_id,
                    "amount": p.amount,
                    "status": p.status,
                    "refunded_cents": self.refunded_cents(p),
                    "refunds": [dict(r) for r in p.refunds],
                    "external_reference": p.external_reference,
                    "created_at": self.iso(p.created_at),
                }
                for p in self.payments.values()
            ],
            "refund_intents": [
                {
                    "id": r.id,
                    "device_id": r.device_id,
                    "payment_id": r.payment_id,
                    "state": r.state,
                    "created_at": self.iso(r.created_at),
                }
                for r in self.refunds.values()
            ],
            "webhooks": list(self.webhook_attempts),
            "faults_fired": dict(sorted(self.fired.items())),
        }
