"""The simulated Orders API: terminals, orders, their idempotency keys and notifications.

Theory of operation. An order is a ``SimIntent`` with ``api == "orders"``: it walks the
same timeline, picks its outcome by amount and scenario in the same way, and keeps the
one-queued-job-per-terminal rule together with intents. ``OrderDesk`` validates Orders
requests, renders intents as orders, and keeps the idempotency records:

- create, cancel and refund need ``X-Idempotency-Key`` (400 ``empty_required_header``);
- the same key with the same method, path and body answers again with the status of the
  first answer and the order as it is now, and changes nothing;
- the same key with anything else is 409 ``idempotency_key_already_used``.

Intent state → order status: OPEN created; ON_TERMINAL, PROCESSING, PROCESSED
at_terminal; FINISHED processed, failed or refunded by the payment; CONFIRMATION_REQUIRED
action_required; CANCELED canceled; ERROR failed (no payment); ABANDONED expired.

Notifications use the generic webhook shape with ``type: "order"`` and
``action: "order.<status>"`` (``order.updated`` for a partial refund), ``data.id`` the
order id and ``data.external_reference``; Mercado Pago's real body for Point orders is
unverified, so docs/simulator.md lists exactly what is sent. The signature's id is the
order id lower-cased unless ``order_signature_id`` is "as_sent".
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pointd.cloud.sites import SITE_RULES
from pointd.sim.cloud.scenarios import Scenario, WebhookQuirk
from pointd.sim.cloud.world import (
    ABANDONED,
    CANCELED,
    CONFIRMATION_REQUIRED,
    ERROR,
    FINISHED,
    IDEMPOTENCY_CONFLICT,
    ON_TERMINAL,
    OPEN,
    ORDERS_API,
    Delivery,
    SimApiError,
    SimIntent,
    SimWorld,
)

ORDER_TOPIC = "order"
EXTERNAL_REFERENCE = re.compile(r"[A-Za-z0-9_-]{1,64}")
AMOUNT = re.compile(r"\d{1,10}\.\d{2}")
DURATION = re.compile(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?")
MIN_EXPIRATION = 30
MAX_EXPIRATION = 3 * 3600
PRINT_OPTIONS = ("seller_ticket", "no_ticket")
# Simulated seconds a terminal takes to drop an order cancelled while at_terminal; shorter
# than the default read_card delay, so the cancel wins unless the card is already in.
TERMINAL_CANCEL_DELAY = 1.0
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_STATUS = {
    OPEN: "created",
    ON_TERMINAL: "at_terminal",
    "PROCESSING": "at_terminal",
    "PROCESSED": "at_terminal",
    CONFIRMATION_REQUIRED: "action_required",
    CANCELED: "canceled",
    ERROR: "failed",
    ABANDONED: "expired",
}
_FINISHED_BY_PAYMENT = {"approved": "processed", "rejected": "failed", "refunded": "refunded"}


def _ulid_like(prefix: str) -> str:
    value = uuid.uuid4().int
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return prefix + "".join(chars)


def units(cents: int) -> str:
    """Cents as the Orders API's decimal string."""
    return f"{Decimal(cents) / 100:.2f}"


def _cents(text: object, what: str) -> int:
    if not isinstance(text, str) or not AMOUNT.fullmatch(text):
        raise SimApiError(400, "invalid_amount", f"{what} must be a decimal string like '15.00'")
    return int(Decimal(text) * 100)


def _duration(text: object) -> int:
    match = DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None or text == "PT":
        raise SimApiError(400, "invalid_expiration_time", "expiration_time must be like PT15M")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not MIN_EXPIRATION <= total <= MAX_EXPIRATION:
        raise SimApiError(400, "invalid_expiration_time", "expiration_time must be PT30S..PT3H")
    return total


@dataclass(frozen=True)
class _KeyUse:
    request: tuple[str, str, Any]
    status: int
    order_id: str


class OrderDesk:
    """The Orders endpoints over a ``SimWorld`` (see the module docstring)."""

    def __init__(self, world: SimWorld) -> None:
        self.world = world
        self.keys: dict[str, _KeyUse] = {}
        self._notification_ids = itertools.count(1)
        world.order_notifier = self._notify

    # -- idempotency ---------------------------------------------------------------------

    def _replay(self, key: str | None, request: tuple[str, str, Any]) -> _KeyUse | None:
        if not key:
            raise SimApiError(400, "empty_required_header", "X-Idempotency-Key is required")
        used = self.keys.get(key)
        if used is None:
            return None
        if used.request != request:
            raise SimApiError(
                409,
                IDEMPOTENCY_CONFLICT,
                "the idempotency key was already used with another request",
            )
        return used

    def _remember(
        self, key: str, request: tuple[str, str, Any], status: int, order_id: str
    ) -> None:
        self.keys[key] = _KeyUse(request, status, order_id)

    # -- terminals -----------------------------------------------------------------------

    def list_terminals(self, query: Mapping[str, str]) -> dict[str, Any]:
        """``GET /terminals/v1/list``: ``data.terminals[]``, store ids as strings."""
        listing = self.world.list_devices(query)
        for device in listing["devices"]:
            device["store_id"] = str(device["store_id"])
        return {"data": {"terminals": listing["devices"]}, "paging": listing["paging"]}

    def setup_terminals(self, body: object) -> dict[str, Any]:
        """``PATCH /terminals/v1/setup`` with exactly one terminal."""
        terminals = body.get("terminals") if isinstance(body, Mapping) else None
        if not isinstance(terminals, list) or len(terminals) != 1:
            raise SimApiError(400, "bad_request", "terminals must list exactly one terminal")
        entry = terminals[0]
        terminal_id = entry.get("id") if isinstance(entry, Mapping) else None
        if not isinstance(terminal_id, str):
            raise SimApiError(400, "bad_request", "terminals[0].id is required")
        answer = self.world.set_mode(terminal_id, entry)
        return {"terminals": [{"id": terminal_id, "operating_mode": answer["operating_mode"]}]}

    # -- orders --------------------------------------------------------------------------

    def create(self, body: object, key: str | None, now: float) -> tuple[int, dict[str, Any], Any]:
        """``POST /v1/orders``: (status, order, how to lose the answer or None)."""
        request = ("POST", "/v1/orders", body)
        used = self._replay(key, request)
        if used is not None:
            return used.status, self.order_json(self._order(used.order_id)), None
        assert key is not None
        intent, expiration = self._parse_create(body, now)
        _, failure = self.world.open_intent(intent, now, abandon_after=expiration)
        self._remember(key, request, 201, intent.id)
        return 201, self.order_json(intent), failure

    def _parse_create(self, body: object, now: float) -> tuple[SimIntent, float]:
        if not isinstance(body, Mapping):
            raise SimApiError(400, "bad_request", "the body must be a JSON object")
        if body.get("type") != "point":
            raise SimApiError(400, "invalid_type", "type must be 'point'")
        reference = body.get("external_reference")
        if not isinstance(reference, str) or not EXTERNAL_REFERENCE.fullmatch(reference):
            raise SimApiError(
                400, "invalid_external_reference", "external_reference: 1-64 of [A-Za-z0-9_-]"
            )
        transactions = body.get("transactions")
        payments = transactions.get("payments") if isinstance(transactions, Mapping) else None
        if (
            not isinstance(payments, list)
            or len(payments) != 1
            or not isinstance(payments[0], Mapping)
        ):
            raise SimApiError(400, "bad_request", "transactions.payments must hold one payment")
        cents = _cents(payments[0].get("amount"), "transactions.payments[0].amount")
        rules = SITE_RULES[self.world.config.site]
        if not rules.min_cents <= cents <= rules.max_cents:
            raise SimApiError(400, "invalid_amount", "the amount is outside the site's limits")
        config = body.get("config")
        point = config.get("point") if isinstance(config, Mapping) else None
        terminal = point.get("terminal_id") if isinstance(point, Mapping) else None
        if not isinstance(point, Mapping) or not isinstance(terminal, str):
            raise SimApiError(400, "bad_request", "config.point.terminal_id is required")
        printing = point.get("print_on_terminal", "seller_ticket")
        if printing not in PRINT_OPTIONS:
            raise SimApiError(
                400, "bad_request", f"print_on_terminal must be one of {PRINT_OPTIONS}"
            )
        ticket = point.get("ticket_number")
        description = body.get("description")
        for name, value in (("ticket_number", ticket), ("description", description)):
            if value is not None and not isinstance(value, str):
                raise SimApiError(400, "bad_request", f"{name} must be a string")
        expiration = (
            float(_duration(body["expiration_time"]))
            if "expiration_time" in body
            else self.world.config.abandon_after
        )
        self.world.device(terminal)
        intent = SimIntent(
            id=_ulid_like("ORD"),
            device_id=terminal,
            amount=cents,
            external_reference=reference,
            ticket_number=ticket,
            print_on_terminal=printing == "seller_ticket",
            description=description,
            payment_options=None,
            scenario=Scenario(),
            created_at=now,
            state_changed_at=now,
            api=ORDERS_API,
            transaction_id=_ulid_like("PAY"),
        )
        return intent, expiration

    def _order(self, order_id: str) -> SimIntent:
        intent = self.world.intents.get(order_id)
        if intent is None or intent.api != ORDERS_API:
            raise SimApiError(404, "order_not_found", "The order was not found")
        return intent

    def read(self, order_id: str, now: float) -> dict[str, Any]:
        """``GET /v1/orders/{id}``, with the order's scripted GET quirks."""
        intent = self._order(order_id)
        self.world.check_get(intent, now)
        if intent.state in (FINISHED, CONFIRMATION_REQUIRED, CANCELED, ERROR, ABANDONED) and (
            intent.stale_gets_left
        ):
            intent.stale_gets_left -= 1
            return self.order_json(intent, stale=True)
        return self.order_json(intent)

    def cancel(
        self, order_id: str, key: str | None, at_terminal: bool, now: float
    ) -> tuple[int, dict[str, Any]]:
        """``POST /v1/orders/{id}/cancel``: 200 while created; 202 at_terminal with the header."""
        request = ("POST", f"/v1/orders/{order_id}/cancel", at_terminal)
        used = self._replay(key, request)
        if used is not None:
            return used.status, self.order_json(self._order(order_id))
        assert key is not None
        intent = self._order(order_id)
        if intent.state == OPEN:
            self.world.move(intent, CANCELED, now)
            status = 200
        elif intent.state == ON_TERMINAL and at_terminal:
            self.world.schedule_step(intent.id, ON_TERMINAL, CANCELED, now + TERMINAL_CANCEL_DELAY)
            status = 202
        else:
            raise SimApiError(
                409,
                "cannot_cancel_order",
                f"the order is {self.status(intent)} and cannot be canceled",
            )
        self._remember(key, request, status, intent.id)
        return status, self.order_json(intent)

    def refund(
        self, order_id: str, body: object, key: str | None, now: float
    ) -> tuple[int, dict[str, Any]]:
        """``POST /v1/orders/{id}/refund``: no body refunds what is left, else the amounts given."""
        request = ("POST", f"/v1/orders/{order_id}/refund", body)
        used = self._replay(key, request)
        if used is not None:
            return used.status, self.order_json(self._order(order_id))
        assert key is not None
        intent = self._order(order_id)
        payment = self.world.payments.get(intent.payment_id) if intent.payment_id else None
        if payment is None or payment.status != "approved":
            raise SimApiError(409, "invalid_order_status", "only a processed order can be refunded")
        left = payment.amount - self.world.refunded_cents(payment)
        if body is None:
            cents = left
        else:
            items = body.get("transactions") if isinstance(body, Mapping) else None
            if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], Mapping):
                raise SimApiError(400, "bad_request", "transactions must list the payment once")
            if items[0].get("id") != intent.transaction_id:
                raise SimApiError(400, "invalid_transaction_id", "no such payment in the order")
            cents = _cents(items[0].get("amount"), "transactions[0].amount")
        if cents <= 0 or cents > left:
            raise SimApiError(400, "invalid_refund_amount", "the amount exceeds what is left")
        entry = self.world.refund_now(payment, cents, now, "order")
        intent.order_refunds.append(
            {
                "id": _ulid_like("REF"),
                "transaction_id": intent.transaction_id,
                "reference_id": str(entry["id"]),
                "amount": units(cents),
                "status": "processed",
            }
        )
        self._remember(key, request, 201, intent.id)
        self._notify(intent, intent.state, now, refund=True)
        return 201, self.order_json(intent)

    # -- rendering -----------------------------------------------------------------------

    def status(self, intent: SimIntent, *, stale: bool = False) -> str:
        """The order status for the intent's state (its payment decides a finished one)."""
        if stale:
            return "at_terminal"
        if intent.state == FINISHED:
            payment = self.world.payments[intent.payment_id] if intent.payment_id else None
            return _FINISHED_BY_PAYMENT.get(payment.status if payment else "", "processed")
        if intent.state == CONFIRMATION_REQUIRED and intent.payment_id is not None:
            payment = self.world.payments[intent.payment_id]
            if payment.status == "refunded":
                return "refunded"
        return _STATUS.get(intent.state, "at_terminal")

    def order_json(self, intent: SimIntent, *, stale: bool = False) -> dict[str, Any]:
        """An order body as Mercado Pago's Orders API answers it."""
        status = self.status(intent, stale=stale)
        payment: dict[str, Any] = {
            "id": intent.transaction_id,
            "amount": units(intent.amount),
            "status": status,
        }
        if intent.payment_id is not None and not stale:
            payment["reference_id"] = str(intent.payment_id)
            payment["status_detail"] = self.world.payments[intent.payment_id].status_detail
        transactions: dict[str, Any] = {"payments": [payment]}
        if intent.order_refunds and not stale:
            transactions["refunds"] = [dict(r) for r in intent.order_refunds]
        point: dict[str, Any] = {
            "terminal_id": intent.device_id,
            "print_on_terminal": "seller_ticket" if intent.print_on_terminal else "no_ticket",
        }
        if intent.ticket_number is not None:
            point["ticket_number"] = intent.ticket_number
        body: dict[str, Any] = {
            "id": intent.id,
            "type": "point",
            "user_id": str(self.world.config.collector_id),
            "external_reference": intent.external_reference,
            "status": status,
            "status_detail": status,
            "total_amount": units(intent.amount),
            "currency": SITE_RULES[self.world.config.site].currency_id,
            "created_date": self.world.iso(intent.created_at),
            "last_updated_date": self.world.iso(intent.state_changed_at),
            "transactions": transactions,
            "config": {"point": point},
        }
        if intent.description is not None:
            body["description"] = intent.description
        return body

    # -- notifications -------------------------------------------------------------------

    def _notify(self, intent: SimIntent, state: str, at: float, *, refund: bool = False) -> None:
        world = self.world
        if world.config.webhook_url is None:
            return
        scenario = intent.scenario
        if scenario.webhook is WebhookQuirk.NEVER:
            return
        final = state in (FINISHED, CONFIRMATION_REQUIRED, CANCELED, ERROR, ABANDONED)
        if not (refund or final or world.config.notify_all_states):
            return
        status = self.status(intent)
        action = "order.updated" if refund and status != "refunded" else f"order.{status}"
        due = at + scenario.webhook_delay
        delivery = self._delivery(intent, status, action, at)
        world.schedule_delivery(due, delivery)
        if scenario.webhook is WebhookQuirk.DUPLICATE:
            world.schedule_delivery(due, delivery)
        if scenario.webhook is WebhookQuirk.OUT_OF_ORDER and final:
            world.schedule_delivery(
                due, self._delivery(intent, "at_terminal", "order.at_terminal", at)
            )

    def _delivery(self, intent: SimIntent, status: str, action: str, at: float) -> Delivery:
        world = self.world
        body = {
            "action": action,
            "api_version": "v1",
            "application_id": str(world.config.client_id),
            "date_created": world.iso(at),
            "id": str(next(self._notification_ids)),
            "live_mode": False,
            "type": ORDER_TOPIC,
            "user_id": str(world.config.collector_id),
            "data": {
                "id": intent.id,
                "external_reference": intent.external_reference,
                "status": status,
                "type": "point",
                "total_amount": units(intent.amount),
            },
        }
        signed = intent.id.lower() if world.config.order_signature_id == "lower" else None
        return Delivery(ORDER_TOPIC, intent.id, status, body, signed_id=signed)
