"""What the daemon needs from Mercado Pago, independent of the API generation.

``CloudPort`` is the seam between the runtime and a Mercado Pago backend. The Payment
Intent API backend lives here; the Orders-API backend (``pointd.cloud.order_backend``)
implements the same protocol, translating its order statuses into the Payment Intent
vocabulary that ``IntentView`` uses (OPEN, ON_TERMINAL, PROCESSING, PROCESSED, FINISHED,
CONFIRMATION_REQUIRED, CANCELED, ERROR, ABANDONED), so that the core decides once for
both. ``pointd.cloud.backends.build_cloud_port`` picks one from the configuration.

Refunds look the same on both: ``refund_payment`` checks locally that the refund does
not exceed what the payment has left (``RefundExceedsBalance``, nothing sent), then
sends it with the caller's idempotency key; ``RefundView`` reports PENDING, REFUNDED or
FAILED. How each backend sends it is in docs/cloud-client.md.

Errors are those of ``pointd.cloud.errors`` for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Protocol

from pointd.cloud.client import PointApiClient, idempotency_header
from pointd.cloud.errors import InvalidRequest, RefundExceedsBalance
from pointd.cloud.models import IntentState, Payment, PaymentIntent, Refund, is_final_state
from pointd.cloud.sites import SITE_RULES

# Payment statuses a refund may start from; "refunded" is let through so that a resend
# after an unknown outcome gets RefundExceedsBalance with the refunded amount.
REFUNDABLE_STATUSES = frozenset({"approved", "refunded"})


@dataclass(frozen=True, slots=True)
class TerminalView:
    """A terminal the account owns, and whether it accepts integrated payments."""

    id: str
    operating_mode: str | None
    store_id: str | None
    pos_id: int | None
    external_pos_id: str | None


@dataclass(frozen=True, slots=True)
class IntentView:
    """One payment attempt's state in the Payment Intent vocabulary."""

    id: str
    state: str
    payment_id: str | None
    payment_state: str | None
    external_reference: str | None
    amount_cents: int

    @property
    def is_final(self) -> bool:
        """Whether this state never changes again."""
        return is_final_state(self.state)


@dataclass(frozen=True, slots=True)
class IntentStatus:
    """An (intent id, state) pair from the reconciliation listing."""

    intent_id: str
    state: str


class RefundState(StrEnum):
    """Where a refund is, for both backends."""

    PENDING = "PENDING"  # sent, not done yet (a refund intent waits on the terminal)
    REFUNDED = "REFUNDED"  # the money went back
    FAILED = "FAILED"  # refused, cancelled, abandoned or in error: nothing went back


@dataclass(frozen=True, slots=True)
class RefundView:
    """One refund: its id (for ``get_refund``), state and amount in cents."""

    id: str
    state: str
    amount_cents: int
    payment_id: str
    # "terminal" (a refund intent the cashier completes on the device) or "api".
    via: str

    @property
    def is_final(self) -> bool:
        """Whether this refund's state never changes again."""
        return self.state != RefundState.PENDING


def refund_amount(payment: Payment, amount_cents: int | None) -> int:
    """Cents a refund of ``payment`` would return; refuses locally what must not be sent.

    None means "all that is left". More than what is left is ``RefundExceedsBalance``;
    a payment that was never approved is ``InvalidRequest``.
    """
    if amount_cents is not None and (
        isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or amount_cents <= 0
    ):
        raise InvalidRequest("amount_cents must be a positive integer, or None for the rest")
    if payment.status not in REFUNDABLE_STATUSES:
        raise InvalidRequest(f"payment {payment.id} is {payment.status}: nothing to refund")
    left = payment.refundable_cents
    wanted = left if amount_cents is None else amount_cents
    if wanted <= 0 or wanted > left:
        raise RefundExceedsBalance(
            f"refund of {wanted} cents exceeds the {left} cents left of payment {payment.id}",
            paid_cents=payment.amount_cents,
            refunded_cents=payment.refunded_cents,
        )
    return wanted


def api_refund_state(status: str | None) -> RefundState:
    """A ``/v1/payments`` refund status in the port's vocabulary."""
    if status == "approved":
        return RefundState.REFUNDED
    if status in ("rejected", "cancelled", "canceled"):
        return RefundState.FAILED
    return RefundState.PENDING


def refund_intent_state(state: str | None) -> RefundState:
    """A refund intent's state in the port's vocabulary."""
    if state == IntentState.FINISHED:
        return RefundState.REFUNDED
    if state in (IntentState.CANCELED, IntentState.ERROR, IntentState.ABANDONED):
        return RefundState.FAILED
    return RefundState.PENDING


class CloudPort(Protocol):
    """The calls the daemon makes to Mercado Pago."""

    # True when resending a create with the same idempotency key returns the attempt the
    # first send made (Orders): reconciling an unknown create is then "send it again".
    creates_are_idempotent: bool

    async def list_terminals(self) -> list[TerminalView]:
        """Every terminal of the account."""
        ...

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
        """Create one payment attempt on a terminal; return its id. Never retried inside."""
        ...

    async def get_payment_state(self, intent_id: str) -> IntentView:
        """The attempt's current state."""
        ...

    async def cancel_payment(self, terminal_id: str, intent_id: str) -> None:
        """Cancel an attempt the terminal has not taken yet."""
        ...

    async def get_payment(self, payment_id: str) -> Payment:
        """The payment resource: the only authority for a handover."""
        ...

    async def find_payments(self, external_reference: str) -> list[Payment]:
        """Payments carrying an attempt's external_reference (reconciliation)."""
        ...

    async def intents_since(self, start: date, end: date) -> list[IntentStatus]:
        """Attempts with their latest state between two dates (reconciliation)."""
        ...

    async def refund_payment(
        self,
        terminal_id: str,
        intent_or_order_id: str,
        payment_id: str,
        amount_cents: int | None,
        idempotency_key: str,
    ) -> RefundView:
        """Refund ``amount_cents`` (None: all that is left) of a verified payment."""
        ...

    async def get_refund(
        self, intent_or_order_id: str, payment_id: str, refund_id: str
    ) -> RefundView:
        """A refund's current state."""
        ...


class PaymentIntentBackend:
    """``CloudPort`` over the Point Integration API (payment intents).

    A refund of the whole, never partly refunded payment goes to the terminal as a
    refund intent (the cashier completes it on the device) unless
    ``total_refunds_on_terminal`` is False; any other refund goes through
    ``POST /v1/payments/{id}/refunds`` with the idempotency key.
    """

    creates_are_idempotent = False

    def __init__(self, client: PointApiClient, *, total_refunds_on_terminal: bool = True) -> None:
        self._client = client
        self._total_refunds_on_terminal = total_refunds_on_terminal

    def __repr__(self) -> str:
        return f"PaymentIntentBackend({self._client!r})"

    async def list_terminals(self) -> list[TerminalView]:
        """Every device, as terminals."""
        return [
            TerminalView(
                id=d.id,
                operating_mode=d.operating_mode,
                store_id=d.store_id,
                pos_id=d.pos_id,
                external_pos_id=d.external_pos_id,
            )
            for d in await self._client.list_devices()
        ]

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
        """Create an intent. ``idempotency_key`` is unused: this API documents none.

        The unique ``external_reference`` is what reconciliation finds an attempt by. On a
        site that requires ``ticket_number`` (MLA) and none is given, the reference is used.
        """
        if ticket_number is None and SITE_RULES[self._client.site].requires_ticket_number:
            ticket_number = external_reference
        intent = await self._client.create_payment_intent(
            terminal_id,
            amount_cents,
            external_reference,
            print_on_terminal=print_on_terminal,
            ticket_number=ticket_number,
            description=description,
        )
        return intent.id

    async def get_payment_state(self, intent_id: str) -> IntentView:
        """GET the intent (paced to 1 request/second)."""
        return intent_view(await self._client.get_payment_intent(intent_id))

    async def cancel_payment(self, terminal_id: str, intent_id: str) -> None:
        """DELETE the intent; CannotCancel once it left OPEN."""
        await self._client.cancel_payment_intent(terminal_id, intent_id)

    async def get_payment(self, payment_id: str) -> Payment:
        """GET /v1/payments/{id}."""
        return await self._client.get_payment(payment_id)

    async def find_payments(self, external_reference: str) -> list[Payment]:
        """GET /v1/payments/search by external_reference."""
        return await self._client.search_payments(external_reference)

    async def intents_since(self, start: date, end: date) -> list[IntentStatus]:
        """GET /payment-intents/events for the range (at most 30 days)."""
        return [
            IntentStatus(intent_id=e.payment_intent_id, state=e.status)
            for e in await self._client.intent_events(start, end)
            if e.payment_intent_id
        ]

    async def refund_payment(
        self,
        terminal_id: str,
        intent_or_order_id: str,
        payment_id: str,
        amount_cents: int | None,
        idempotency_key: str,
    ) -> RefundView:
        """Refund intent on the terminal for a first, whole refund; the Payments API otherwise.

        A refund intent cannot carry an idempotency key (none is documented), so a
        resend while it is still queued meets DeviceBusy, and after it finished meets
        RefundExceedsBalance: either way no second refund is made.
        """
        idempotency_header(idempotency_key)
        payment = await self._client.get_payment(payment_id)
        cents = refund_amount(payment, amount_cents)
        whole = payment.refunded_cents == 0 and cents == payment.amount_cents
        if whole and self._total_refunds_on_terminal:
            intent = await self._client.create_refund_intent(terminal_id, payment_id)
            return RefundView(
                id=intent.id,
                state=refund_intent_state(intent.state),
                amount_cents=cents,
                payment_id=payment_id,
                via="terminal",
            )
        refund = await self._client.create_payment_refund(payment_id, cents, idempotency_key)
        return _api_refund_view(refund, payment_id, cents)

    async def get_refund(
        self, intent_or_order_id: str, payment_id: str, refund_id: str
    ) -> RefundView:
        """Numeric ids are Payments-API refunds; others are refund intents."""
        if refund_id.isdigit():
            refund = await self._client.get_payment_refund(payment_id, refund_id)
            return _api_refund_view(refund, payment_id, refund.amount_cents or 0)
        intent = await self._client.get_refund_intent(refund_id)
        payment = await self._client.get_payment(payment_id)
        return RefundView(
            id=intent.id,
            state=refund_intent_state(intent.state),
            amount_cents=payment.amount_cents,
            payment_id=payment_id,
            via="terminal",
        )


def _api_refund_view(refund: Refund, payment_id: str, cents: int) -> RefundView:
    assert refund.id is not None  # the client refuses refund answers without an id
    return RefundView(
        id=refund.id,
        state=api_refund_state(refund.status),
        amount_cents=refund.amount_cents if refund.amount_cents is not None else cents,
        payment_id=payment_id,
        via="api",
    )


def intent_view(intent: PaymentIntent) -> IntentView:
    """An intent as the port shows it; a create answer without a state is OPEN."""
    return IntentView(
        id=intent.id,
        state=intent.state or IntentState.OPEN.value,
        payment_id=intent.payment_id,
        payment_state=intent.payment_state,
        external_reference=intent.external_reference,
        amount_cents=intent.amount,
    )
