"""What the core answers when a register asks about a sale (STATUS, HANDOVER_CHECK).

Neither question changes anything, so neither is an event: the checkout asks these pure
functions of the current state and the register session only encodes the answer. Deciding
here, and not in the session, keeps the one judgement that matters to money (may the goods
leave?) in the core, where the explorer checks it in every state it reaches.

A fraud alert that names the payment after the sale closed as HANDOVER_UNCONFIRMED (the
register never confirmed that the goods left) cannot change the sale, but it takes back
the permission: a register that lost its RESULT and asks again must not hand over on that
payment. A supervisor's release stands: a person decided, and is alerted.
"""

from __future__ import annotations

from dataclasses import dataclass

from pointd.core.events import OverrideDecision
from pointd.core.records import CoreState, Sale
from pointd.core.states import HANDOVER_ALLOWED_STATES, SaleState


@dataclass(frozen=True, slots=True)
class SaleStanding:
    """Where the sale a register's correlation id names stands; ``state`` None: no such sale."""

    correlation_id: str
    sale_id: str | None
    state: SaleState | None
    # The goods may leave now: a verified approval or a supervisor's release stands, and
    # they have not left yet (HANDED_OVER says no: register-protocol.md, STATUS_REPLY).
    handover: bool
    amount_cents: int | None = None
    payment_id: str | None = None


def goods_may_leave(core: CoreState, sale: Sale) -> bool:
    """HANDOVER_CHECK: a verified approval no fraud alert names, or a supervisor's release."""
    if not sale.may_hand_over:
        return False
    released = sale.override is not None and sale.override.decision is OverrideDecision.RELEASE
    return released or sale.approved_payment_id not in core.fraud_alerts


def status(core: CoreState, lane: int, correlation_id: str) -> SaleStanding:
    """The answer to STATUS for ``correlation_id`` from ``lane``'s register.

    It names the newest sale that lane's register asked for under the id (an id names
    nothing on another lane), and ``unknown`` when there is none: the SALE never arrived,
    so the register may send it again.
    """
    sale = core.sale_of_request(lane, correlation_id)
    if sale is None:
        return SaleStanding(correlation_id, None, None, handover=False)
    return SaleStanding(
        correlation_id,
        sale.sale_id,
        sale.state,
        handover=sale.state in HANDOVER_ALLOWED_STATES and goods_may_leave(core, sale),
        amount_cents=sale.amount_cents,
        payment_id=sale.payment_id,
    )
