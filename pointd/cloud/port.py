"""What the daemon needs from Mercado Pago, independent of the API generation.

``CloudPort`` is the seam between the runtime and a Mercado Pago backend. The Payment
Intent API backend lives here; an Orders-API backend will implement the same protocol,
translating its order statuses into the Payment Intent vocabulary that ``IntentView``
uses (OPEN, ON_TERMINAL, PROCESSING, PROCESSED, FINISHED, CONFIRMATION_REQUIRED,
CANCELED, ERROR, ABANDONED), so that the core decides once for both.

Errors are those of ``pointd.cloud.errors`` for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Protocol

from pointd.cloud.client import PointApiClient
from pointd.cloud.models import IntentState, Payment, PaymentIntent, is_final_state
from pointd.cloud.sites import SITE_RULES


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


class CloudPort(Protocol):
    """The calls the daemon makes to Mercado Pago."""

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


class PaymentIntentBackend:
    """``CloudPort`` over the Point Integration API (payment intents)."""

    def __init__(self, client: PointApiClient) -> None:
        self._client = client

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
