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

Reconciling an unknown create (``find_attempt``) never rests on one source. An attempt is
proven absent only when the payments search by its external_reference answers empty
*and* a second source answers too: the intent events list (gone from the public reference
in devsite-docs PR #2220, so it may stop answering), or, once any intent the attempt made
must have ended, a payments search over the attempt's time window that finds no payment
of its amount. Whichever of the two answers is used; when neither does, ``NotProven``
keeps the sale reconciling. docs/cloud-client.md has the table.

Errors are those of ``pointd.cloud.errors`` for every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Protocol

import structlog

from pointd.cloud.client import MAX_EVENTS_RANGE_DAYS, PointApiClient, idempotency_header
from pointd.cloud.errors import CloudError, InvalidRequest, NotProven, NotSent, RefundExceedsBalance
from pointd.cloud.models import Integrator, Payment, PaymentIntent, Refund, is_final_state
from pointd.cloud.sites import SITE_RULES
from pointd.core.states import IntentState

log = structlog.get_logger(__name__)

# Mercado Pago abandons an intent nobody took after 15 minutes (mercadopago-api.md W1);
# one that was taken ends on the terminal, paid or not, well within that.
INTENT_LIFETIME = 900.0
# Clock skew between the store PC and Mercado Pago, and the lag before a payment is listed.
CLOCK_MARGIN = 300.0
# The events list is asked by day; a day either side covers time zones and midnight.
EVENTS_DAY_MARGIN = timedelta(days=1)

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
class AttemptQuery:
    """One attempt whose create may or may not have reached Mercado Pago."""

    terminal_id: str
    external_reference: str
    amount_cents: int
    since: float  # wall-clock seconds the attempt was first sent
    now: float  # wall-clock seconds now
    known_intents: frozenset[str] = frozenset()  # ids other sales already own


@dataclass(frozen=True, slots=True)
class AttemptFound:
    """What reconciliation found: the attempt's intent, its payments, or proven nothing.

    Both empty means proven absent; ``proofs`` names the sources that proved it.
    """

    intent: IntentView | None
    payments: tuple[Payment, ...]
    proofs: tuple[str, ...]


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

    async def find_attempt(self, query: AttemptQuery) -> AttemptFound:
        """Find an attempt's intent or payments, or prove both absent; else ``NotProven``."""
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

    async def set_operating_mode(self, terminal_id: str, mode: str) -> str:
        """Ask for PDV or STANDALONE on one terminal (effective after it restarts)."""
        ...

    async def get_integrator(self) -> Integrator:
        """The account's integrator record: which device-event channels are on."""
        ...

    async def set_device_event_channels(self, channels: Sequence[str]) -> None:
        """Set the device-event channels (``["email"]`` or ``[]``)."""
        ...


class DeviceSettings:
    """The account-wide device settings, the same on both backends (Point Integration API)."""

    def __init__(self, client: PointApiClient) -> None:
        self._client = client

    async def get_integrator(self) -> Integrator:
        """``GET /point/integration-api/integrator``."""
        return await self._client.get_integrator()

    async def set_device_event_channels(self, channels: Sequence[str]) -> None:
        """``PATCH /point/integration-api/integrator`` with ``event_channel_devices``."""
        await self._client.patch_integrator(channels)


class PaymentIntentBackend(DeviceSettings):
    """``CloudPort`` over the Point Integration API (payment intents).

    A refund of the whole, never partly refunded payment goes to the terminal as a
    refund intent (the cashier completes it on the device) unless
    ``total_refunds_on_terminal`` is False; any other refund goes through
    ``POST /v1/payments/{id}/refunds`` with the idempotency key.
    """

    creates_are_idempotent = False

    def __init__(self, client: PointApiClient, *, total_refunds_on_terminal: bool = True) -> None:
        super().__init__(client)
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

    async def set_operating_mode(self, terminal_id: str, mode: str) -> str:
        """``PATCH /devices/{id}`` with the operating mode."""
        return await self._client.set_operating_mode(terminal_id, mode)

    async def cancel_payment(self, terminal_id: str, intent_id: str) -> None:
        """DELETE the intent; CannotCancel once it left OPEN."""
        await self._client.cancel_payment_intent(terminal_id, intent_id)

    async def get_payment(self, payment_id: str) -> Payment:
        """GET /v1/payments/{id}."""
        return await self._client.get_payment(payment_id)

    async def find_payments(self, external_reference: str) -> list[Payment]:
        """GET /v1/payments/search by external_reference."""
        return await self._client.search_payments(external_reference)

    async def find_attempt(self, query: AttemptQuery) -> AttemptFound:
        """The intent from the events list; payments by reference; then the proofs above."""
        events_answered = False
        try:
            intent = await self._intent_from_events(query)
        except NotSent:
            raise
        except CloudError as exc:
            # The endpoint left the public reference: a 404 or worse is no proof either way.
            log.warning("cloud.intent_events_unavailable", error=type(exc).__name__)
        else:
            if intent is not None:
                return AttemptFound(intent, (), ("intent_events",))
            events_answered = True
        by_reference = await payments_naming(self._client, query.external_reference)
        if by_reference:
            return AttemptFound(None, by_reference, ("payments_by_reference",))
        if events_answered:
            return AttemptFound(None, (), ("payments_by_reference", "intent_events"))
        return await self._prove_by_window(query)

    async def _intent_from_events(self, query: AttemptQuery) -> IntentView | None:
        start = _day(query.since) - EVENTS_DAY_MARGIN
        end = max(start, _day(query.now) + EVENTS_DAY_MARGIN)
        start = max(start, end - timedelta(days=MAX_EVENTS_RANGE_DAYS))
        for event in await self._client.intent_events(start, end):
            if not event.payment_intent_id or event.payment_intent_id in query.known_intents:
                continue
            view = await self.get_payment_state(event.payment_intent_id)
            if view.external_reference == query.external_reference:
                return view
        return None

    async def _prove_by_window(self, query: AttemptQuery) -> AttemptFound:
        if query.now < query.since + INTENT_LIFETIME + CLOCK_MARGIN:
            raise NotProven(
                "the intent events list did not answer and an intent of this attempt may "
                "still be live; asking again later"
            )
        found = await self._client.search_payments(
            begin_date=_moment(query.since - CLOCK_MARGIN), end_date=_moment(query.now)
        )
        # Any payment of at least the amount (a tip adds to it) that does not name another
        # attempt could be this one's: that is no proof of absence.
        candidates = [
            p.id
            for p in found
            if p.amount_cents >= query.amount_cents
            and p.external_reference in (None, query.external_reference)
        ]
        if candidates:
            raise NotProven(
                f"payments {', '.join(candidates[:5])} of this amount have no reference: "
                "they may be this attempt's; a technician must look"
            )
        return AttemptFound(None, (), ("payments_by_reference", "payments_in_window"))

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


async def payments_naming(client: PointApiClient, reference: str) -> tuple[Payment, ...]:
    """Payments the search returns for ``reference`` that do carry it.

    The search's filter names are not in Mercado Pago's reference (docs/cloud-client.md):
    should one be ignored, the answer would hold other payments, which prove nothing.
    """
    found = await client.search_payments(reference)
    return tuple(p for p in found if p.external_reference == reference)


def _day(moment: float) -> date:
    return datetime.fromtimestamp(moment, tz=UTC).date()


def _moment(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, tz=UTC)


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
