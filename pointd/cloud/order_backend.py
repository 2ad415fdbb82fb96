"""``CloudPort`` over Mercado Pago's Orders API, in the Payment Intent vocabulary.

Theory of operation. The daemon's core speaks the Payment Intent states; this backend
translates each order into an ``IntentView`` (table in docs/cloud-client.md):

    created → OPEN · at_terminal → ON_TERMINAL · processing → PROCESSING
    processed → FINISHED (payment approved)
    failed with a card payment (reference_id) → FINISHED (payment rejected)
    failed without one → ERROR
    action_required → CONFIRMATION_REQUIRED, payment id = reference_id, no payment state
    canceled → CANCELED · expired → ABANDONED
    refunded → FINISHED (payment refunded)
    anything else → PROCESSING, so the core keeps asking instead of deciding

"failed" is split on the payment because a card that was read and declined is a
finished sale with a rejected payment, while a failure before any card payment leaves
nothing to verify. Neither releases goods: only ``/v1/payments`` does.

Idempotency: ``create_payment`` sends the caller's key, so the same call after an
unknown outcome returns the order the first one made (``creates_are_idempotent``).
The Orders API documents no listing of Point orders, so ``find_attempt`` can only find
payments by reference: an unknown create is reconciled by sending it again with the
same key, never by proving it absent. Cancels use a key derived from
the order id, which makes a repeated cancel the same request.
"""

from __future__ import annotations

import structlog

from pointd.cloud.client import PointApiClient, idempotency_header
from pointd.cloud.errors import AlreadyCanceled, InvalidRequest, NotFound, NotProven
from pointd.cloud.models import Payment
from pointd.cloud.orders import Order, OrderRefund, OrdersApiClient
from pointd.cloud.port import (
    AttemptFound,
    AttemptQuery,
    DeviceSettings,
    IntentView,
    RefundState,
    RefundView,
    TerminalView,
    payments_naming,
    refund_amount,
)
from pointd.core.states import IntentState

log = structlog.get_logger(__name__)

CANCEL_KEY_PREFIX = "cancel_"

_PLAIN_STATUS = {
    "created": IntentState.OPEN,
    "at_terminal": IntentState.ON_TERMINAL,
    "processing": IntentState.PROCESSING,
    "canceled": IntentState.CANCELED,
    "expired": IntentState.ABANDONED,
}


def order_view(order: Order) -> IntentView:
    """An order as the port shows it (mapping in the module docstring)."""
    payment = order.payment
    payment_id = payment.reference_id if payment is not None else None
    state: IntentState
    payment_state: str | None = None
    if order.status in _PLAIN_STATUS:
        state = _PLAIN_STATUS[order.status]
    elif order.status == "processed":
        state, payment_state = IntentState.FINISHED, "approved"
    elif order.status == "refunded":
        state, payment_state = IntentState.FINISHED, "refunded"
    elif order.status == "failed":
        if payment_id is not None:
            state, payment_state = IntentState.FINISHED, "rejected"
        else:
            state = IntentState.ERROR
    elif order.status == "action_required":
        state = IntentState.CONFIRMATION_REQUIRED
    else:
        log.warning("cloud.order_status_unknown", status=order.status[:40])
        state = IntentState.PROCESSING
    return IntentView(
        id=order.id,
        state=state.value,
        payment_id=payment_id,
        payment_state=payment_state,
        external_reference=order.external_reference,
        amount_cents=order.amount_cents or 0,
    )


def order_refund_state(status: str | None) -> RefundState:
    """An order refund transaction's status in the port's vocabulary."""
    if status in ("processed", "refunded", "approved"):
        return RefundState.REFUNDED
    if status in ("failed", "canceled", "rejected"):
        return RefundState.FAILED
    return RefundState.PENDING


class OrdersBackend(DeviceSettings):
    """``CloudPort`` over the Orders API; payments are still read from ``/v1/payments``."""

    creates_are_idempotent = True

    def __init__(
        self,
        client: PointApiClient,
        *,
        expiration_seconds: int | None = None,
        cancel_at_terminal: bool = False,
    ) -> None:
        super().__init__(client)
        self._client = client
        self._orders = OrdersApiClient(client)
        self._expiration_seconds = expiration_seconds
        self._cancel_at_terminal = cancel_at_terminal

    def __repr__(self) -> str:
        return f"OrdersBackend({self._client!r})"

    async def list_terminals(self) -> list[TerminalView]:
        """``GET /terminals/v1/list``, as terminals."""
        return [
            TerminalView(
                id=t.id,
                operating_mode=t.operating_mode,
                store_id=t.store_id,
                pos_id=t.pos_id,
                external_pos_id=t.external_pos_id,
            )
            for t in await self._orders.list_terminals()
        ]

    async def set_operating_mode(self, terminal_id: str, mode: str) -> str:
        """``PATCH /terminals/v1/setup`` for one terminal."""
        return await self._orders.setup_terminal(terminal_id, mode)

    async def create_payment(
        self,
        terminal_id: str,
        amount_cents: int,
        external_reference: str,
        idempotency_key: str,
        *,
        ticket_number: str | None = None,
        description: str | None = None,
        print_on_terminal: bool = True,
    ) -> str:
        """``POST /v1/orders`` with the key; the same call again returns the same order."""
        body = self._orders.create_body(
            terminal_id,
            amount_cents,
            external_reference,
            print_on_terminal=print_on_terminal,
            ticket_number=ticket_number,
            description=description,
            expiration_seconds=self._expiration_seconds,
        )
        order = await self._orders.create_order(body, idempotency_key)
        return order.id

    async def get_payment_state(self, intent_id: str) -> IntentView:
        """``GET /v1/orders/{id}``, mapped."""
        return order_view(await self._orders.get_order(intent_id))

    async def cancel_payment(self, terminal_id: str, intent_id: str) -> None:
        """Cancel while ``created``; also while ``at_terminal`` if so configured (async)."""
        key = f"{CANCEL_KEY_PREFIX}{intent_id}"[:64]
        try:
            accepted, _order = await self._orders.cancel_order(
                intent_id, key, at_terminal=self._cancel_at_terminal
            )
        except AlreadyCanceled:
            # What was asked is true: the caller's next read shows the canceled order.
            return
        if accepted:
            log.info("cloud.order_cancel_accepted", terminal_id=terminal_id)

    async def get_payment(self, payment_id: str) -> Payment:
        """GET /v1/payments/{id}."""
        return await self._client.get_payment(payment_id)

    async def find_payments(self, external_reference: str) -> list[Payment]:
        """GET /v1/payments/search by external_reference."""
        return await self._client.search_payments(external_reference)

    async def find_attempt(self, query: AttemptQuery) -> AttemptFound:
        """Payments by reference; never proof of absence (resend the create instead)."""
        payments = await payments_naming(self._client, query.external_reference)
        if payments:
            return AttemptFound(None, payments, ("payments_by_reference",))
        raise NotProven("the Orders API lists no orders: resend the create with its key")

    async def refund_payment(
        self,
        terminal_id: str,
        intent_or_order_id: str,
        payment_id: str,
        amount_cents: int | None,
        idempotency_key: str,
    ) -> RefundView:
        """``POST /v1/orders/{id}/refund``: no body for the whole payment, else partial."""
        idempotency_header(idempotency_key)
        order = await self._orders.get_order(intent_or_order_id)
        transaction = order.payment
        if transaction is None or transaction.reference_id != payment_id:
            raise InvalidRequest(f"order {order.id} has no payment {payment_id}")
        payment = await self._client.get_payment(payment_id)
        cents = refund_amount(payment, amount_cents)
        whole = payment.refunded_cents == 0 and cents == payment.amount_cents
        refunded = await self._orders.refund_order(
            order.id, idempotency_key, None if whole else [(transaction.id, cents)]
        )
        if not refunded.refunds:
            return RefundView(
                id=order.id,
                state=RefundState.PENDING,
                amount_cents=cents,
                payment_id=payment_id,
                via="api",
            )
        # The answer is the order; the refund this call made is the last one listed.
        return _refund_view(refunded.refunds[-1], payment_id, cents)

    async def get_refund(
        self, intent_or_order_id: str, payment_id: str, refund_id: str
    ) -> RefundView:
        """The refund as the order lists it now."""
        order = await self._orders.get_order(intent_or_order_id)
        for refund in order.refunds:
            if refund.id == refund_id:
                return _refund_view(refund, payment_id, refund.amount_cents or 0)
        if refund_id == order.id:
            return RefundView(
                id=order.id,
                state=RefundState.REFUNDED if order.status == "refunded" else RefundState.PENDING,
                amount_cents=order.amount_cents or 0,
                payment_id=payment_id,
                via="api",
            )
        raise NotFound(404, "not_found", f"order {order.id} lists no refund {refund_id}")


def _refund_view(refund: OrderRefund, payment_id: str, cents: int) -> RefundView:
    return RefundView(
        id=refund.id,
        state=order_refund_state(refund.status),
        amount_cents=refund.amount_cents if refund.amount_cents is not None else cents,
        payment_id=payment_id,
        via="api",
    )
