"""Mercado Pago's Orders API for Point (``/v1/orders``, ``/terminals/v1``) as typed calls.

Theory of operation. The Orders API replaces the Payment Intent API (mercadopago-api.md
§4). It uses the same HTTP client, error tree and retry rules as ``PointApiClient``,
whose transport this module borrows; what differs is the wire:

- every create, cancel and refund carries an ``X-Idempotency-Key`` (mandatory there).
  Sending the same key with the same body again answers the order the first request
  made, which is how a create with an unknown outcome is recovered; the same key with a
  different body is ``IdempotencyConflict``;
- amounts are decimal strings in major units (``"15.00"``), never floats;
- an order names its terminal in ``config.point.terminal_id``; statuses are lower case
  (``created``, ``at_terminal``, ``processed``, ``failed``, ``action_required``,
  ``canceled``, ``expired``, ``refunded``); the ``/v1/payments`` id of the card payment
  is ``transactions.payments[].reference_id`` in answers and ``reference.id`` in
  notifications (both are read); a terminal tip makes ``paid_amount`` exceed ``amount``;
- cancelling an order the terminal already shows needs the header
  ``x-allow-cancelable-status: at_terminal``; it is accepted with a 202, or with a 2xx
  whose order still says ``at_terminal``: the terminal cancels later, and the order says
  so when it has.

Parsing is tolerant in the same way as ``pointd.cloud.models``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import quote

from pointd.cloud.client import (
    EXTERNAL_REFERENCE,
    OPERATING_MODES,
    PATH_ID,
    PointApiClient,
    cents_to_units,
    idempotency_header,
)
from pointd.cloud.errors import InvalidRequest, MalformedResponse
from pointd.cloud.models import (
    JSON,
    Device,
    ModelError,
    decimal_to_cents,
)
from pointd.cloud.sites import SITE_RULES
from pointd.cloud.wire import CallKind

ORDERS = "/v1/orders"
TERMINALS = "/terminals/v1"
TERMINAL_PAGE_LIMIT = 50
# A loop guard for paging: no account has 50,000 terminals.
MAX_PAGES = 1000
# Mercado Pago accepts PT30S..PT3H and defaults to PT15M (mercadopago-api.md §4).
MIN_EXPIRATION_SECONDS = 30
MAX_EXPIRATION_SECONDS = 3 * 3600
MAX_DESCRIPTION = 150
ALLOW_CANCEL_AT_TERMINAL = {"x-allow-cancelable-status": "at_terminal"}
ORDER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _mapping(value: object) -> JSON:
    return value if isinstance(value, Mapping) else {}


def _text(data: JSON, key: str) -> str | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def _cents(data: JSON, key: str) -> int | None:
    try:
        return decimal_to_cents(data.get(key))
    except ModelError:
        return None


def iso_duration(seconds: int) -> str:
    """Whole seconds as an ISO-8601 duration Mercado Pago accepts (900 → ``PT15M``)."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "H"), (minutes, "M"), (secs, "S")]
    return "PT" + "".join(f"{value}{unit}" for value, unit in parts if value)


@dataclass(frozen=True, slots=True)
class OrderPayment:
    """One element of ``transactions.payments``."""

    id: str
    amount_cents: int | None
    status: str | None
    status_detail: str | None
    reference_id: str | None
    # What the card was charged, tip included, and the tip the terminal added.
    paid_cents: int | None = None
    tip_cents: int | None = None

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse a payment transaction; ``reference_id`` is the ``/v1/payments`` id."""
        transaction_id = _text(data, "id")
        if transaction_id is None:
            raise ModelError("order payment: missing 'id'")
        status = _text(data, "status")
        detail = _text(data, "status_detail")
        return cls(
            id=transaction_id,
            amount_cents=_cents(data, "amount"),
            status=status.lower() if status else None,
            status_detail=detail.lower() if detail else None,
            reference_id=_text(data, "reference_id")
            or _text(_mapping(data.get("reference")), "id"),
            paid_cents=_cents(data, "paid_amount"),
            tip_cents=_cents(data, "tip_amount"),
        )


@dataclass(frozen=True, slots=True)
class OrderRefund:
    """One element of ``transactions.refunds``."""

    id: str
    transaction_id: str | None
    reference_id: str | None
    amount_cents: int | None
    status: str | None

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse a refund transaction."""
        refund_id = _text(data, "id")
        if refund_id is None:
            raise ModelError("order refund: missing 'id'")
        status = _text(data, "status")
        return cls(
            id=refund_id,
            transaction_id=_text(data, "transaction_id"),
            reference_id=_text(data, "reference_id"),
            amount_cents=_cents(data, "amount"),
            status=status.lower() if status else None,
        )


@dataclass(frozen=True, slots=True)
class Order:
    """A Point order, from create, GET, cancel or refund answers."""

    id: str
    status: str
    status_detail: str | None
    external_reference: str | None
    terminal_id: str | None
    amount_cents: int | None
    payments: tuple[OrderPayment, ...]
    refunds: tuple[OrderRefund, ...]

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse an order; ``id`` and ``status`` are required, the rest is optional."""
        order_id = _text(data, "id")
        status = _text(data, "status")
        if order_id is None or status is None:
            raise ModelError("order: missing 'id' or 'status'")
        transactions = _mapping(data.get("transactions"))
        payments = transactions.get("payments")
        refunds = transactions.get("refunds")
        parsed = tuple(
            OrderPayment.from_json(_mapping(p))
            for p in (payments if isinstance(payments, list) else [])
        )
        amount = _cents(data, "total_amount")
        if amount is None and parsed:
            amount = parsed[0].amount_cents
        return cls(
            id=order_id,
            status=status.lower(),
            status_detail=_text(data, "status_detail"),
            external_reference=_text(data, "external_reference"),
            terminal_id=_text(_mapping(_mapping(data.get("config")).get("point")), "terminal_id"),
            amount_cents=amount,
            payments=parsed,
            refunds=tuple(
                OrderRefund.from_json(_mapping(r))
                for r in (refunds if isinstance(refunds, list) else [])
            ),
        )

    @property
    def payment(self) -> OrderPayment | None:
        """The order's card payment (a Point order has exactly one)."""
        return self.payments[0] if self.payments else None


@dataclass(frozen=True, slots=True)
class TerminalPage:
    """One page of ``GET /terminals/v1/list``."""

    terminals: tuple[Device, ...]
    total: int

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse ``data.terminals[]``; paging may sit at the top or under ``data``."""
        inner = _mapping(data.get("data"))
        raw = inner.get("terminals")
        if not isinstance(raw, list):
            raise ModelError("terminal list: missing 'data.terminals' array")
        terminals = tuple(Device.from_json(_mapping(item)) for item in raw)
        paging = _mapping(data.get("paging")) or _mapping(inner.get("paging"))
        total = _text(paging, "total")
        count = int(total) if total and total.isdigit() else len(terminals)
        return cls(terminals=terminals, total=count)


def _order_id(value: object) -> str:
    if not isinstance(value, str) or not ORDER_ID.fullmatch(value):
        raise InvalidRequest("order_id must be 1-64 of [A-Za-z0-9_-]")
    return quote(value, safe="")


class OrdersApiClient:
    """The Orders API for Point terminals, over a ``PointApiClient``'s transport."""

    def __init__(self, http: PointApiClient) -> None:
        self._http = http
        self.site = http.site

    def __repr__(self) -> str:
        return f"OrdersApiClient({self._http!r})"

    # -- terminals ---------------------------------------------------------------------

    async def terminal_pages(
        self, store_id: str | None = None, pos_id: int | None = None
    ) -> AsyncIterator[TerminalPage]:
        """Yield every page of ``GET /terminals/v1/list``."""
        offset = 0
        for _ in range(MAX_PAGES):
            params: dict[str, str | int] = {"limit": TERMINAL_PAGE_LIMIT, "offset": offset}
            if store_id is not None:
                params["store_id"] = store_id
            if pos_id is not None:
                params["pos_id"] = pos_id
            body = await self._http.get_json(f"{TERMINALS}/list", params=params)
            page = self._http.parse(TerminalPage.from_json, body, CallKind.READ)
            yield page
            offset += len(page.terminals)
            if not page.terminals or offset >= page.total:
                return

    async def list_terminals(
        self, store_id: str | None = None, pos_id: int | None = None
    ) -> list[Device]:
        """Every terminal of the account (all pages); mode may be ``UNDEFINED``."""
        return [t async for page in self.terminal_pages(store_id, pos_id) for t in page.terminals]

    async def setup_terminal(self, terminal_id: str, mode: str) -> str:
        """Ask for PDV or STANDALONE on one terminal; effective after it restarts."""
        if mode not in OPERATING_MODES:
            raise InvalidRequest(f"operating_mode must be one of {sorted(OPERATING_MODES)}")
        if not isinstance(terminal_id, str) or not PATH_ID.fullmatch(terminal_id):
            raise InvalidRequest("terminal_id must be a non-empty id without '/' or spaces")
        body = await self._http.send_json(
            "PATCH",
            f"{TERMINALS}/setup",
            f"{TERMINALS}/setup",
            {"terminals": [{"id": terminal_id, "operating_mode": mode}]},
            CallKind.UPDATE,
        )
        answered = body.get("terminals")
        if isinstance(answered, list) and answered and isinstance(answered[0], Mapping):
            value = answered[0].get("operating_mode")
            if isinstance(value, str):
                return value
        return mode

    # -- orders ------------------------------------------------------------------------

    def create_body(
        self,
        terminal_id: str,
        amount_cents: int,
        external_reference: str,
        *,
        print_on_terminal: bool = True,
        ticket_number: str | None = None,
        description: str | None = None,
        expiration_seconds: int | None = None,
    ) -> dict[str, Any]:
        """The ``POST /v1/orders`` body, validated; InvalidRequest names what is wrong."""
        if not isinstance(terminal_id, str) or not PATH_ID.fullmatch(terminal_id):
            raise InvalidRequest("terminal_id must be a non-empty id without '/' or spaces")
        if not isinstance(external_reference, str) or not EXTERNAL_REFERENCE.fullmatch(
            external_reference
        ):
            raise InvalidRequest("external_reference must be 1-64 of [A-Za-z0-9_-]")
        rules = SITE_RULES[self.site]
        if isinstance(amount_cents, bool) or not isinstance(amount_cents, int):
            raise InvalidRequest("amount_cents must be an integer")
        if not rules.min_cents <= amount_cents <= rules.max_cents:
            raise InvalidRequest(
                f"amount must be {rules.min_cents}..{rules.max_cents} cents on {self.site.value}"
            )
        point: dict[str, Any] = {
            "terminal_id": terminal_id,
            "print_on_terminal": "seller_ticket" if print_on_terminal else "no_ticket",
        }
        if ticket_number is not None:
            if not isinstance(ticket_number, str) or not ticket_number:
                raise InvalidRequest("ticket_number must be a non-empty string")
            point["ticket_number"] = ticket_number
        body: dict[str, Any] = {
            "type": "point",
            "external_reference": external_reference,
            "transactions": {"payments": [{"amount": str(cents_to_units(amount_cents))}]},
            "config": {"point": point},
        }
        if description is not None:
            if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
                raise InvalidRequest(f"description must be a string of at most {MAX_DESCRIPTION}")
            body["description"] = description
        if expiration_seconds is not None:
            if not MIN_EXPIRATION_SECONDS <= expiration_seconds <= MAX_EXPIRATION_SECONDS:
                raise InvalidRequest(
                    f"expiration must be {MIN_EXPIRATION_SECONDS}..{MAX_EXPIRATION_SECONDS} s"
                )
            body["expiration_time"] = iso_duration(expiration_seconds)
        return body

    async def create_order(self, body: Mapping[str, Any], idempotency_key: str) -> Order:
        """``POST /v1/orders`` (201). Never retried here; resend with the same key instead."""
        headers = idempotency_header(idempotency_key)
        answer = await self._http.send_json(
            "POST", ORDERS, ORDERS, body, CallKind.CREATE, headers=headers
        )
        return self._http.parse(Order.from_json, answer, CallKind.CREATE)

    async def get_order(self, order_id: str) -> Order:
        """``GET /v1/orders/{id}``."""
        path = f"{ORDERS}/{_order_id(order_id)}"
        body = await self._http.get_json(path, template=f"{ORDERS}/{{id}}")
        return self._http.parse(Order.from_json, body, CallKind.READ)

    async def cancel_order(
        self, order_id: str, idempotency_key: str, *, at_terminal: bool = False
    ) -> tuple[bool, Order | None]:
        """Cancel an order; return (accepted for later, the order if answered).

        Without ``at_terminal`` only a ``created`` order can be cancelled (CannotCancel
        after). With it, an ``at_terminal`` order is accepted (202, or a 2xx whose order
        still says ``at_terminal``) and the terminal cancels it later.
        """
        headers = idempotency_header(idempotency_key)
        if at_terminal:
            headers |= ALLOW_CANCEL_AT_TERMINAL
        path = f"{ORDERS}/{_order_id(order_id)}/cancel"
        status, body = await self._http.send_for_status(
            "POST", path, f"{ORDERS}/{{id}}/cancel", None, CallKind.CANCEL, headers=headers
        )
        order = self._http.parse(Order.from_json, body, CallKind.CANCEL) if body else None
        later = status == 202 or (order is not None and order.status == "at_terminal")
        return later, order

    async def refund_order(
        self,
        order_id: str,
        idempotency_key: str,
        transactions: Sequence[tuple[str, int]] | None = None,
    ) -> Order:
        """Refund an order: everything (no body), or the given (transaction id, cents)."""
        headers = idempotency_header(idempotency_key)
        payload: dict[str, Any] | None = None
        if transactions is not None:
            if not transactions:
                raise InvalidRequest("a partial refund names at least one transaction")
            items = []
            for transaction_id, cents in transactions:
                if isinstance(cents, bool) or not isinstance(cents, int) or cents <= 0:
                    raise InvalidRequest("a refund amount must be a positive number of cents")
                items.append({"id": transaction_id, "amount": str(cents_to_units(cents))})
            payload = {"transactions": items}
        path = f"{ORDERS}/{_order_id(order_id)}/refund"
        body = await self._http.send_json(
            "POST", path, f"{ORDERS}/{{id}}/refund", payload, CallKind.REFUND, headers=headers
        )
        if not body:
            raise MalformedResponse(f"{ORDERS}/{{id}}/refund: empty answer")
        return self._http.parse(Order.from_json, body, CallKind.REFUND)
