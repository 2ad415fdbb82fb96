"""Shared building blocks for the refund tests: a paid sale's facts and refund events."""

from __future__ import annotations

from pointd.core import machine
from pointd.core.events import Event, RefundableSale, RefundRequested
from pointd.core.records import CoreState, RefundBook
from pointd.core.states import SaleState
from pointd.core.table import Step
from tests.core.scenario import POLICY, STORE

SALE = "01JSALE0000000000000000001"
LANE = 2
PAID = 1500
INTENT = "intent-1"
PAYMENT = "98765432101"
T0 = 1_790_000_000.0


def paid_sale(state: SaleState = SaleState.HANDED_OVER, *, paid: int = PAID,
              payment_id: str | None = PAYMENT, sale_id: str = SALE) -> RefundableSale:
    """What the engine reads of a sale that may be refunded."""
    del sale_id
    return RefundableSale(state=state, lane=LANE, correlation_id="S-1", terminal_id="PAX_1",
                          intent_id=INTENT, payment_id=payment_id, paid_cents=paid)


def asked(refund_id: str, amount: int | None = None, *, key: str | None = None,
          sale: RefundableSale | None = None, sale_id: str = SALE,
          unknown_sale: bool = False) -> RefundRequested:
    """A register refund request (key defaults to the refund id)."""
    facts = None if unknown_sale else (sale or paid_sale())
    return RefundRequested(
        refund_id=refund_id, request_key=key or f"lane{LANE}:{refund_id}",
        correlation_id=refund_id, sale_id=sale_id, amount_cents=amount, by="register",
        uid=None, sale=facts,
    )


def step(book: RefundBook, event: Event, *, now: float) -> Step:
    """One refund event through the core's one ``step``, on a state holding only ``book``."""
    return machine.step(CoreState(store_id=STORE, refunds=book), event, now=now,
                        policy=POLICY)
