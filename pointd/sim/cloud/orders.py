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

Errors use the Orders API's nested body ``{"errors": [{"code", "message"}]}`` and only
codes its reference documents (docs/simulator.md lists the few cases where the reference
names no code and which documented code the simulator then answers).

Status details follow the Point status page: the order carries ``processed``,
``partially_refunded``, ``action_required``, ``refunded``, ...; its payment transaction
``accredited``, ``check_on_terminal``, ``canceled_by_api``, ``canceled_on_terminal``,
``cancellation_requested``, ``rejected_by_issuer``, ``processing_error``, ...

Notifications are ``type: "order"``, ``action: "order.<status>"`` with the order summary in
``data`` (status, status_detail, transactions.payments[] with ``reference.id``), as the
Point notifications page shows. The signature's id is the order id exactly as sent in
``data.id`` unless ``order_signature_id`` is "lower".
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from pointd.cloud.sites import SITE_RULES
from pointd.cloud.wire import ONE_PDV_PER_POS
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
    PROCESSED,
    PROCESSING,
    Delivery,
    SimIntent,
    SimWorld,
    orders_error,
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

ORDER_ID = re.compile(r"ORD[0-9A-Z]{26}")
MAX_TERMINAL_PAGE = 50
_STATUS = {
    OPEN: "created",
    ON_TERMINAL: "at_terminal",
    PROCESSING: "at_terminal",
    PROCESSED: "at_terminal",
    CONFIRMATION_REQUIRED: "action_required",
    CANCELED: "canceled",
    ERROR: "failed",
    ABANDONED: "expired",
}
_FINISHED_BY_PAYMENT = {"approved": "processed", "rejected": "failed", "refunded": "refunded"}
# The payment transaction's status_detail for each order status (Point status page); which
# of the documented failure details a decline carries is the simulator's choice.
_TRANSACTION_DETAIL = {
    "created": "created",
    "at_terminal": "at_terminal",
    "processed": "accredited",
    "action_required": "check_on_terminal",
    "expired": "expired",
    "refunded": "refunded",
}


def _ulid_like(prefix: str, value: int) -> str:
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return prefix + "".join(chars)


def units(cents: int) -> str:
    """Cents as the Orders API's decimal string."""
    return f"{Decimal(cents) / 100:.2f}"


def _cents(text: object, what: str) -> int:
    if not isinstance(text, str):
        raise orders_error(400, "property_type", f"{what}: expected string")
    if not AMOUNT.fullmatch(text):
        raise orders_error(400, "property_value", f"{what} must be a decimal like '15.00'")
    return int(Decimal(text) * 100)


def _duration(text: object) -> int:
    match = DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None or text == "PT":
        raise orders_error(400, "property_value", "expiration_time must be like PT15M")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not MIN_EXPIRATION <= total <= MAX_EXPIRATION:
        raise orders_error(400, "property_value", "expiration_time must be PT30S..PT3H")
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
            raise orders_error(400, "empty_required_header", "Missing X-Idempotency-Key header")
        used = self.keys.get(key)
        if used is None:
            return None
        if used.request != request:
            raise orders_error(
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
        """``GET /terminals/v1/list``: ``data.terminals[]``, store ids as strings, limit 1-50."""
        try:
            limit = int(query.get("limit", str(MAX_TERMINAL_PAGE)))
        except ValueError:
            raise orders_error(400, "property_type", "limit: expected integer") from None
        if limit < 1:
            raise orders_error(400, "property_value", "limit must be 1 to 50")
        # Mercado Pago answers a larger limit with its maximum (docs/simulator.md).
        listing = self.world.list_devices(dict(query, limit=str(min(limit, MAX_TERMINAL_PAGE))))
        for device in listing["devices"]:
            device["store_id"] = str(device["store_id"])
        return {"data": {"terminals": listing["devices"]}, "paging": listing["paging"]}

    def setup_terminals(self, body: object) -> dict[str, Any]:
        """``PATCH /terminals/v1/setup`` with exactly one terminal."""
        terminals = body.get("terminals") if isinstance(body, Mapping) else None
        if not isinstance(terminals, list) or not terminals:
            raise orders_error(400, "required_properties", "terminals is required")
        if len(terminals) != 1:
            raise orders_error(400, "maximum_items", "maximum 1 items required")
        entry = terminals[0]
        terminal_id = entry.get("id") if isinstance(entry, Mapping) else None
        mode = entry.get("operating_mode") if isinstance(entry, Mapping) else None
        if not isinstance(terminal_id, str) or terminal_id not in self.world.devices:
            raise orders_error(404, "not_found", "terminal not found")
        if mode not in ("PDV", "STANDALONE"):
            raise orders_error(400, "property_value", "operating_mode must be PDV or STANDALONE")
        device = self.world.devices[terminal_id]
        if not device.config.logged_in:
            raise orders_error(403, "store_pos_not_found", "the terminal has no store or POS")
        if mode == "PDV" and self._another_pdv_on_pos(terminal_id):
            raise orders_error(412, ONE_PDV_PER_POS, ONE_PDV_PER_POS)
        answer = self.world.set_mode(terminal_id, entry)
        return {"terminals": [{"id": terminal_id, "operating_mode": answer["operating_mode"]}]}

    def _another_pdv_on_pos(self, terminal_id: str) -> bool:
        mine = self.world.devices[terminal_id].config
        return any(
            other_id != terminal_id
            and (d.config.store_id, d.config.pos_id) == (mine.store_id, mine.pos_id)
            and "PDV" in (d.operating_mode, d.pending_mode)
            for other_id, d in self.world.devices.items()
        )

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
            raise orders_error(400, "json_syntax_error", "the body must be a JSON object")
        if body.get("type") != "point":
            raise orders_error(400, "property_value", "type must be 'point'")
        reference = body.get("external_reference")
        if not isinstance(reference, str) or not EXTERNAL_REFERENCE.fullmatch(reference):
            raise orders_error(
                400, "property_value", "external_reference: 1-64 of [A-Za-z0-9_-]"
            )
        transactions = body.get("transactions")
        payments = transactions.get("payments") if isinstance(transactions, Mapping) else None
        if not isinstance(payments, list) or not payments:
            raise orders_error(400, "required_properties", "transactions.payments is required")
        if len(payments) != 1:
            raise orders_error(400, "maximum_items", "maximum 1 items required")
        if not isinstance(payments[0], Mapping):
            raise orders_error(400, "property_type", "transactions.payments[0]: expected object")
        cents = _cents(payments[0].get("amount"), "transactions.payments[0].amount")
        rules = SITE_RULES[self.world.config.site]
        if not rules.min_cents <= cents <= rules.max_cents:
            raise orders_error(400, "property_value", "the amount is outside the site's limits")
        config = body.get("config")
        point = config.get("point") if isinstance(config, Mapping) else None
        terminal = point.get("terminal_id") if isinstance(point, Mapping) else None
        if not isinstance(point, Mapping) or not isinstance(terminal, str):
            raise orders_error(400, "required_properties", "config.point.terminal_id is required")
        if terminal not in self.world.devices:
            raise orders_error(
                403,
                "forbidden_checking_terminal_owner",
                "The Point terminal does not belong to the user",
            )
        printing = point.get("print_on_terminal", "seller_ticket")
        if printing not in PRINT_OPTIONS:
            raise orders_error(
                400, "property_value", f"print_on_terminal must be one of {PRINT_OPTIONS}"
            )
        ticket = point.get("ticket_number")
        description = body.get("description")
        for name, value in (("ticket_number", ticket), ("description", description)):
            if value is not None and not isinstance(value, str):
                raise orders_error(400, "property_type", f"{name}: expected string")
        expiration = (
            float(_duration(body["expiration_time"]))
            if "expiration_time" in body
            else self.world.config.abandon_after
        )
        intent = SimIntent(
            id=_ulid_like("ORD", self.world.new_uuid().int),
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
            transaction_id=_ulid_like("PAY", self.world.new_uuid().int),
        )
        return intent, expiration

    def _order(self, order_id: str) -> SimIntent:
        if not ORDER_ID.fullmatch(order_id):
            raise orders_error(400, "invalid_path_param", "path param order id is invalid")
        intent = self.world.intents.get(order_id)
        if intent is None or intent.api != ORDERS_API:
            raise orders_error(404, "order_not_found", "Order not found.")
        return intent

    def read(self, order_id: str, now: float) -> dict[str, Any]:
        """``GET /v1/orders/{id}``, with the order's scripted GET quirks."""
        intent = self._order(order_id)
        self.world.check_get(intent, now)
        if intent.state in (FINISHED, CONFIRMATION_REQUIRED, CANCELED, ERROR, ABANDONED) and (
            intent.stale_gets_left
        ):
            intent.stale_gets_left -= 1
            self.world.fired["stale_gets"] += 1
            return self.order_json(intent, stale=True)
        return self.order_json(intent)

    def cancel(
        self, order_id: str, key: str | None, at_terminal: bool, now: float
    ) -> tuple[int, dict[str, Any]]:
        """``POST /v1/orders/{id}/cancel``: while created; at_terminal only with the header.

        An at_terminal cancel is accepted with 200 and the order still ``at_terminal``
        (payment ``cancellation_requested``); the terminal drops it a little later.
        """
        request = ("POST", f"/v1/orders/{order_id}/cancel", at_terminal)
        used = self._replay(key, request)
        if used is not None:
            return used.status, self.order_json(self._order(order_id))
        assert key is not None
        intent = self._order(order_id)
        if intent.state == OPEN:
            intent.cancel_requested = True
            self.world.move(intent, CANCELED, now)
        elif intent.state == ON_TERMINAL and at_terminal:
            intent.cancel_requested = True
            self.world.schedule_step(intent.id, ON_TERMINAL, CANCELED, now + TERMINAL_CANCEL_DELAY)
        elif intent.state == CANCELED:
            raise orders_error(
                409, "order_already_canceled", "The order has already been canceled."
            )
        else:
            raise orders_error(
                409,
                "cannot_cancel_order",
                f"the order is {self.status(intent)}: only a created order can be canceled",
            )
        self._remember(key, request, 200, intent.id)
        return 200, self.order_json(intent)

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
        if payment is not None and payment.status == "refunded":
            raise orders_error(409, "order_already_refunded", "The order was already refunded.")
        if payment is None or payment.status != "approved":
            raise orders_error(
                409, "cannot_refund_order", "The order status does not allow refund."
            )
        left = payment.amount - self.world.refunded_cents(payment)
        if body is None:
            cents = left
        else:
            items = body.get("transactions") if isinstance(body, Mapping) else None
            if not isinstance(items, list) or not items:
                raise orders_error(400, "required_properties", "transactions is required")
            if len(items) != 1 or not isinstance(items[0], Mapping):
                raise orders_error(400, "maximum_items", "maximum 1 items required")
            if items[0].get("id") != intent.transaction_id:
                raise orders_error(404, "transaction_not_found", "Transaction not found.")
            if payment.tip:
                raise orders_error(
                    403,
                    "partial_refund_forbidden_with_tips",
                    "Partial refunds are not allowed when the order has tips.",
                )
            cents = _cents(items[0].get("amount"), "transactions[0].amount")
        if cents <= 0 or cents > left:
            raise orders_error(
                400, "refund_amount_exceeds", "Refund amount exceeds the available amount."
            )
        entry = self.world.refund_now(payment, cents, now, "order")
        intent.order_refunds.append(
            {
                "id": _ulid_like("REF", self.world.new_uuid().int),
                "transaction_id": intent.transaction_id,
                "reference_id": str(entry["id"]),
                "amount": units(cents),
                "status": "processed",
            }
        )
        self._remember(key, request, 201, intent.id)
        self._notify(intent, intent.state, now, refund=True)
        return 201, self.order_json(intent)

    def online_only(self, order_id: str | None) -> dict[str, Any]:
        """Search, process, capture and transaction edits: Orders calls for online orders.

        The Point reference documents none of them, so the simulator refuses them for
        point orders with a documented code (its choice; docs/simulator.md).
        """
        if order_id is not None:
            self._order(order_id)
        raise orders_error(400, "property_value", "not available for orders of type point")

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

    def _details(self, intent: SimIntent, status: str) -> tuple[str, str]:
        """(order status_detail, payment transaction status_detail) for ``status``."""
        payment = self.world.payments.get(intent.payment_id) if intent.payment_id else None
        if status == "processed":
            if payment is not None and self.world.refunded_cents(payment) > 0:
                return "partially_refunded", "partially_refunded"
            return "processed", "accredited"
        if status == "canceled":
            return "canceled", "canceled_by_api" if intent.cancel_requested else (
                "canceled_on_terminal"
            )
        if status == "at_terminal" and intent.cancel_requested:
            return "at_terminal", "cancellation_requested"
        if status == "failed":
            detail = intent.scenario.decline_detail if payment is not None else "processing_error"
            return "failed", detail
        return status, _TRANSACTION_DETAIL.get(status, status)

    def order_json(self, intent: SimIntent, *, stale: bool = False) -> dict[str, Any]:
        """An order body as Mercado Pago's Orders API answers it."""
        status = self.status(intent, stale=stale)
        order_detail, payment_detail = self._details(intent, status)
        payment: dict[str, Any] = {
            "id": intent.transaction_id,
            "amount": units(intent.amount),
            "status": status,
            "status_detail": payment_detail,
        }
        charged = self.world.payments.get(intent.payment_id) if intent.payment_id else None
        if charged is not None and not stale:
            payment["reference_id"] = str(charged.id)
            payment["paid_amount"] = units(charged.amount)
            if charged.tip:
                payment["tip_amount"] = units(charged.tip)
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
            "processing_mode": "automatic",
            "user_id": str(self.world.config.collector_id),
            "external_reference": intent.external_reference,
            "status": status,
            "status_detail": order_detail,
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
        final = state in (FINISHED, CONFIRMATION_REQUIRED, CANCELED, ERROR, ABANDONED)
        if not (refund or final or world.config.notify_all_states):
            return
        if scenario.webhook is WebhookQuirk.NEVER:
            world.fired["webhook_missing"] += 1
            return
        due = at + scenario.webhook_delay
        late = "webhook_late" if scenario.webhook_delay > 0 else None
        delivery = replace(self._delivery(intent, self.order_json(intent), at), quirk=late)
        world.schedule_delivery(due, delivery)
        if scenario.webhook is WebhookQuirk.DUPLICATE:
            world.schedule_delivery(due, replace(delivery, quirk="webhook_duplicate"))
        if scenario.webhook is WebhookQuirk.OUT_OF_ORDER and final:
            stale = self.order_json(intent, stale=True)
            world.schedule_delivery(due, replace(self._delivery(intent, stale, at),
                                                 quirk="webhook_out_of_order"))

    def _delivery(self, intent: SimIntent, order: dict[str, Any], at: float) -> Delivery:
        world = self.world
        intent.notifications_sent += 1
        status = order["status"]
        payment = order["transactions"]["payments"][0]
        summary: dict[str, Any] = {
            key: payment[key]
            for key in ("id", "amount", "paid_amount", "status", "status_detail")
            if key in payment
        }
        if "reference_id" in payment:
            summary["reference"] = {"id": payment["reference_id"]}
        data: dict[str, Any] = {
            "id": intent.id,
            "external_reference": intent.external_reference,
            "status": status,
            "status_detail": order["status_detail"],
            "transactions": {"payments": [summary]},
            "type": "point",
            "version": intent.notifications_sent,
        }
        if "paid_amount" in payment:
            data["total_paid_amount"] = payment["paid_amount"]
        action = "order.updated" if order["status_detail"] == "partially_refunded" else (
            f"order.{status}"
        )
        body = {
            "action": action,
            "api_version": "v1",
            "application_id": str(world.config.client_id),
            "data": data,
            "date_created": world.iso(at),
            "live_mode": False,
            "type": ORDER_TOPIC,
            "user_id": str(world.config.collector_id),
        }
        signed = intent.id.lower() if world.config.order_signature_id == "lower" else None
        return Delivery(ORDER_TOPIC, intent.id, status, body, signed_id=signed)
