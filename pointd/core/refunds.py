"""The refund state machine: one table from (refund status, event type) to a handler.

Theory of operation
-------------------
A refund returns (part of) a sale's verified payment. Like a sale it is decided here, in
pure code, from journaled events; the engine journals each event before it runs the
effects decided for it (write-ahead), so a refund is never sent without its record and its
idempotency key on disk first.

``RefundRequested`` is admitted (or refused) before any table lookup, because no refund
exists yet. The engine puts into the event what it read of the sale (``RefundableSale``),
so that replaying the journal decides exactly as the live daemon did, whatever the sale
table looks like by then. Admission keeps the money rules:

* only a sale that is HANDED_OVER, HANDOVER_UNCONFIRMED, APPROVED or OVERRIDDEN with a
  verified approved payment (and the intent or order it came through) may be refunded;
* the amount (None: all that is left) may not exceed what was paid minus every refund of
  the sale that is done or may still happen (sending, unknown, pending): over-amount is
  refused before anything is sent;
* a request whose ``request_key`` is already known is the same refund: nothing new is
  decided, the register is told its standing again (another sale or amount under a known
  key is refused as a reused id);
* an admitted refund gets the idempotency key ``rf_<sale id>_<n>`` (n counts the sale's
  admitted refunds), journaled with the event, and one ``SendRefund``.

After that, every other event is routed by refund id and looked up in ``TRANSITIONS``; a
pair missing from the table is rejected and changes nothing. A send whose outcome is
unknown is resent with the same key when the refund timer fires (Mercado Pago returns the
same refund for the same key; a refund intent, which carries no key, answers "busy" while
queued and "exceeds balance" once done, so either way nothing is refunded twice). A
PENDING refund is polled with ``FetchRefund`` on the timer until it is final. Final
statuses never change. Restart recovery (``recover``) re-arms the timers of unfinished
refunds and tells their registers where they stand: a SENDING refund whose answer was lost
is then resent with its key, as after an unknown outcome.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Union

from pointd.core.events import (
    RefundableSale,
    RefundNotSent,
    RefundObserved,
    RefundOutcomeUnknown,
    RefundRefusal,
    RefundRejected,
    RefundRequested,
    RefundSent,
    RefundTimerExpired,
)
from pointd.core.persistent import PersistentMap
from pointd.core.states import SaleState

# A refund intent waits for the cashier at the terminal; Point allows about one GET per
# second per intent, so polling every 2 s keeps the register current at half that budget.
REFUND_POLL_INTERVAL = 2.0
# After an unknown outcome, resend with the same key after this long: long enough for a
# flapping link or a 5xx burst to pass, short enough that the cashier is not kept waiting.
REFUND_RESEND_AFTER = 5.0

# Sales whose payment may be refunded (the payment was verified or a supervisor released).
REFUNDABLE_SALE_STATES = frozenset(
    {SaleState.HANDED_OVER, SaleState.APPROVED, SaleState.OVERRIDDEN,
     SaleState.HANDOVER_UNCONFIRMED}
)


class RefundStatus(StrEnum):
    """Where one refund stands; the last three never change."""

    SENDING = "sending"  # key journaled; the first call is in flight
    UNKNOWN = "unknown"  # a call may have reached Mercado Pago: resent with the same key
    PENDING = "pending"  # Mercado Pago has it (a refund intent waits on the terminal)
    REFUNDED = "refunded"  # final: the money went back
    FAILED = "failed"  # final: Mercado Pago refused or failed it; nothing was refunded
    REFUSED = "refused"  # final: refused by the daemon before anything was sent


FINAL_REFUND_STATUSES = frozenset(
    {RefundStatus.REFUNDED, RefundStatus.FAILED, RefundStatus.REFUSED}
)
# Refunds counted against the payment: done, or possibly about to be.
COMMITTED_STATUSES = frozenset(
    {RefundStatus.SENDING, RefundStatus.UNKNOWN, RefundStatus.PENDING, RefundStatus.REFUNDED}
)
_CLOUD_STATES = {
    "PENDING": RefundStatus.PENDING,
    "REFUNDED": RefundStatus.REFUNDED,
    "FAILED": RefundStatus.FAILED,
}


# --- effects -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendRefund:
    """Call ``refund_payment`` with this key; report RefundSent/NotSent/OutcomeUnknown/Rejected."""

    refund_id: str
    terminal_id: str
    intent_id: str
    payment_id: str
    amount_cents: int
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class FetchRefund:
    """Call ``get_refund`` and report RefundObserved (nothing when the API is unreachable)."""

    refund_id: str
    intent_id: str
    payment_id: str
    cloud_refund_id: str


@dataclass(frozen=True, slots=True)
class ArmRefundTimer:
    """Submit RefundTimerExpired at wall-clock time ``at`` (replaces a pending one)."""

    refund_id: str
    at: float


@dataclass(frozen=True, slots=True)
class DisarmRefundTimer:
    """Drop the refund's pending timer, if any."""

    refund_id: str


@dataclass(frozen=True, slots=True)
class TellRefund:
    """Show the refund's standing on the register of ``lane`` (None: no lane to tell)."""

    lane: int | None
    correlation_id: str
    sale_correlation_id: str | None
    refund_id: str
    status: RefundStatus
    amount_cents: int | None
    refusal: RefundRefusal | None
    via: str | None
    detail: str


RefundEffect = Union[  # noqa: UP007 - a runtime value, also used for isinstance checks
    SendRefund, FetchRefund, ArmRefundTimer, DisarmRefundTimer, TellRefund
]
RefundEvent = Union[  # noqa: UP007 - a runtime value, also used for isinstance checks
    RefundRequested,
    RefundSent,
    RefundNotSent,
    RefundOutcomeUnknown,
    RefundRejected,
    RefundObserved,
    RefundTimerExpired,
]
REFUND_EVENT_TYPES: tuple[type[Any], ...] = RefundEvent.__args__  # type: ignore[attr-defined]
REFUND_EVENT_KINDS: tuple[str, ...] = tuple(cls.__name__ for cls in REFUND_EVENT_TYPES)


# --- state ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refund:
    """Everything the daemon knows about one refund."""

    refund_id: str
    request_key: str
    correlation_id: str
    sale_id: str
    requested_cents: int | None  # as asked (None: all that was left)
    amount_cents: int  # what is (or would have been) refunded; 0 when refused unresolved
    status: RefundStatus
    by: str
    uid: int | None
    requested_at: float
    updated_at: float
    lane: int | None = None
    sale_correlation_id: str | None = None
    terminal_id: str = ""
    intent_id: str | None = None
    payment_id: str | None = None
    paid_cents: int = 0
    idempotency_key: str | None = None
    sends: int = 0
    cloud_refund_id: str | None = None
    via: str | None = None
    refusal: RefundRefusal | None = None
    detail: str = ""
    timer_at: float | None = None

    @property
    def is_final(self) -> bool:
        """True once the refund can never change again."""
        return self.status in FINAL_REFUND_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The refund as plain JSON-able values (for views)."""
        body: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            body[item.name] = value.value if isinstance(value, StrEnum) else value
        return body


@dataclass(frozen=True, slots=True)
class RefundBook:
    """Every refund, by id, and the indexes admission reads."""

    refunds: PersistentMap[str, Refund] = field(default_factory=PersistentMap)
    by_request: PersistentMap[str, str] = field(default_factory=PersistentMap)
    by_sale: PersistentMap[str, tuple[str, ...]] = field(default_factory=PersistentMap)

    def of_sale(self, sale_id: str) -> tuple[Refund, ...]:
        """The sale's refunds, oldest first."""
        return tuple(self.refunds[r] for r in self.by_sale.get(sale_id, ()))

    def committed_cents(self, sale_id: str) -> int:
        """Cents of the sale's refunds that are done or may still happen."""
        return sum(r.amount_cents for r in self.of_sale(sale_id) if r.status in COMMITTED_STATUSES)

    def refunded_cents(self, sale_id: str) -> int:
        """Cents of the sale's refunds known to be done."""
        return sum(r.amount_cents for r in self.of_sale(sale_id)
                   if r.status is RefundStatus.REFUNDED)

    def unfinished(self) -> tuple[Refund, ...]:
        """Refunds not yet final, in id order."""
        return tuple(sorted((r for r in self.refunds.values() if not r.is_final),
                            key=lambda r: r.refund_id))


@dataclass(frozen=True, slots=True)
class RefundStep:
    """The outcome of one refund event: new book, effects in order, any rejection."""

    book: RefundBook
    effects: tuple[RefundEffect, ...]
    rejection: str | None
    refund_id: str | None
    sale_id: str | None


class _Tx:
    """One event's work on one refund."""

    def __init__(self, book: RefundBook, refund: Refund, now: float) -> None:
        self.book = book
        self.refund = refund
        self.now = now
        self.effects: list[RefundEffect] = []
        self.rejection: str | None = None

    def update(self, **changes: Any) -> None:
        self.refund = dataclasses.replace(self.refund, **changes)

    def reject(self, reason: str) -> None:
        self.rejection = reason

    def move(self, status: RefundStatus, detail: str | None = None) -> None:
        self.update(status=status, detail=self.refund.detail if detail is None else detail)
        if status in FINAL_REFUND_STATUSES and self.refund.timer_at is not None:
            self.update(timer_at=None)
            self.effects.append(DisarmRefundTimer(self.refund.refund_id))
        self.effects.append(tell(self.refund))

    def arm(self, delay: float) -> None:
        at = self.now + delay
        self.update(timer_at=at)
        self.effects.append(ArmRefundTimer(self.refund.refund_id, at))

    def send(self) -> None:
        r = self.refund
        assert r.intent_id is not None
        assert r.payment_id is not None
        assert r.idempotency_key is not None
        self.update(sends=r.sends + 1, timer_at=None)
        self.effects.append(SendRefund(r.refund_id, r.terminal_id, r.intent_id, r.payment_id,
                                       r.amount_cents, r.idempotency_key))


def tell(refund: Refund) -> TellRefund:
    """The register message effect for a refund's current standing."""
    return TellRefund(
        lane=refund.lane, correlation_id=refund.correlation_id,
        sale_correlation_id=refund.sale_correlation_id, refund_id=refund.refund_id,
        status=refund.status, amount_cents=refund.amount_cents or None,
        refusal=refund.refusal, via=refund.via, detail=refund.detail,
    )


# --- admission -----------------------------------------------------------------------------


def idempotency_key(sale_id: str, number: int) -> str:
    """The idempotency key of a sale's ``number``-th admitted refund."""
    return f"rf_{sale_id}_{number}"


def _admit(book: RefundBook, event: RefundRequested, now: float) -> RefundStep:
    known_id = book.by_request.get(event.request_key)
    if known_id is not None:
        known = book.refunds[known_id]
        if known.sale_id != event.sale_id or known.requested_cents != event.amount_cents:
            reused = TellRefund(
                lane=event.sale.lane if event.sale else known.lane,
                correlation_id=event.correlation_id, sale_correlation_id=None,
                refund_id=known.refund_id, status=RefundStatus.REFUSED,
                amount_cents=event.amount_cents, refusal=RefundRefusal.ID_REUSED, via=None,
                detail="this refund id names another refund",
            )
            return RefundStep(book, (reused,), "refund id reused for another sale or amount",
                              known_id, known.sale_id)
        return RefundStep(book, (tell(known),), None, known_id, known.sale_id)
    if event.refund_id in book.refunds:
        return RefundStep(book, (), f"refund id {event.refund_id} is already used", None,
                          event.sale_id)
    sale = event.sale
    refund = Refund(
        refund_id=event.refund_id, request_key=event.request_key,
        correlation_id=event.correlation_id, sale_id=event.sale_id,
        requested_cents=event.amount_cents, amount_cents=event.amount_cents or 0,
        status=RefundStatus.REFUSED, by=event.by, uid=event.uid, requested_at=now,
        updated_at=now,
    )
    refusal = _refusal(book, event, sale)
    if sale is not None:
        refund = dataclasses.replace(
            refund, lane=sale.lane, sale_correlation_id=sale.correlation_id,
            terminal_id=sale.terminal_id, intent_id=sale.intent_id,
            payment_id=sale.payment_id, paid_cents=sale.paid_cents,
        )
    effects: list[RefundEffect] = []
    if refusal is not None:
        refund = dataclasses.replace(refund, refusal=refusal, detail=_refusal_detail(
            book, event, sale, refusal))
        effects.append(tell(refund))
    else:
        assert sale is not None
        left = sale.paid_cents - book.committed_cents(event.sale_id)
        number = 1 + sum(1 for r in book.of_sale(event.sale_id) if r.idempotency_key)
        refund = dataclasses.replace(
            refund, status=RefundStatus.SENDING, amount_cents=event.amount_cents or left,
            idempotency_key=idempotency_key(event.sale_id, number),
        )
        tx = _Tx(book, refund, now)
        tx.send()
        tx.effects.insert(0, tell(tx.refund))
        refund, effects = tx.refund, tx.effects
    new_book = RefundBook(
        refunds=book.refunds.set(refund.refund_id, refund),
        by_request=book.by_request.set(event.request_key, refund.refund_id),
        by_sale=book.by_sale.set(
            event.sale_id, (*book.by_sale.get(event.sale_id, ()), refund.refund_id)),
    )
    return RefundStep(new_book, tuple(effects), None, refund.refund_id, event.sale_id)


def _refusal(book: RefundBook, event: RefundRequested,
             sale: RefundableSale | None) -> RefundRefusal | None:
    if sale is None:
        return RefundRefusal.UNKNOWN_SALE
    if (sale.state not in REFUNDABLE_SALE_STATES or sale.payment_id is None
            or sale.intent_id is None or sale.paid_cents <= 0):
        return RefundRefusal.NOT_REFUNDABLE
    if event.amount_cents is not None and event.amount_cents <= 0:
        return RefundRefusal.INVALID_AMOUNT
    left = sale.paid_cents - book.committed_cents(event.sale_id)
    if left <= 0:
        return RefundRefusal.NOTHING_LEFT
    if event.amount_cents is not None and event.amount_cents > left:
        return RefundRefusal.OVER_AMOUNT
    return None


def _refusal_detail(book: RefundBook, event: RefundRequested, sale: RefundableSale | None,
                    refusal: RefundRefusal) -> str:
    if sale is None:
        return f"no sale {event.sale_id}"
    committed = book.committed_cents(event.sale_id)
    if refusal in (RefundRefusal.OVER_AMOUNT, RefundRefusal.NOTHING_LEFT):
        return (f"asked {event.amount_cents if event.amount_cents is not None else 'the rest'}"
                f"; paid {sale.paid_cents}, already refunded or refunding {committed}")
    if refusal is RefundRefusal.INVALID_AMOUNT:
        return "the amount must be at least 1 cent"
    return f"sale is {sale.state.value} without a verified approved payment"


# --- the table -----------------------------------------------------------------------------


def _on_sent(tx: _Tx, event: RefundSent) -> None:
    status = _CLOUD_STATES.get(event.state.upper(), RefundStatus.PENDING)
    tx.update(cloud_refund_id=event.cloud_refund_id, via=event.via)
    if status is RefundStatus.PENDING:
        tx.move(RefundStatus.PENDING, "")
        tx.arm(REFUND_POLL_INTERVAL)
    else:
        tx.move(status, "" if status is RefundStatus.REFUNDED else "Mercado Pago failed it")


def _on_first_not_sent(tx: _Tx, event: RefundNotSent) -> None:
    what = "the terminal is busy" if event.terminal_busy else event.reason
    tx.move(RefundStatus.FAILED, f"not sent: {what}"[:200])


def _on_unknown(tx: _Tx, event: RefundOutcomeUnknown) -> None:
    first = tx.refund.status is RefundStatus.SENDING
    tx.update(status=RefundStatus.UNKNOWN, detail=f"outcome unknown: {event.reason}"[:200])
    if first:
        tx.effects.append(tell(tx.refund))
    tx.arm(REFUND_RESEND_AFTER)


def _on_resend_not_sent(tx: _Tx, event: RefundNotSent) -> None:
    # An earlier send may have landed (a queued refund intent is what makes the terminal
    # busy): only an answer to the same key settles it.
    tx.arm(REFUND_RESEND_AFTER)


def _on_first_rejected(tx: _Tx, event: RefundRejected) -> None:
    tx.move(RefundStatus.FAILED, f"refused by Mercado Pago: {event.code}"[:200])


def _on_resend_rejected(tx: _Tx, event: RefundRejected) -> None:
    r = tx.refund
    others = tx.book.refunded_cents(r.sale_id)
    if event.refunded_cents is not None and event.refunded_cents >= others + r.amount_cents:
        # The resend found the payment already refunded by this amount: the first send landed.
        tx.move(RefundStatus.REFUNDED, "an earlier send of this refund landed")
    else:
        tx.move(RefundStatus.FAILED, f"refused by Mercado Pago: {event.code}"[:200])


def _on_resend_due(tx: _Tx, event: RefundTimerExpired) -> None:
    if tx.refund.status is RefundStatus.SENDING:
        tx.update(status=RefundStatus.UNKNOWN, detail="answer lost at a restart")
    tx.send()


def _on_poll_due(tx: _Tx, event: RefundTimerExpired) -> None:
    r = tx.refund
    assert r.intent_id is not None
    assert r.payment_id is not None
    assert r.cloud_refund_id is not None
    tx.effects.append(FetchRefund(r.refund_id, r.intent_id, r.payment_id, r.cloud_refund_id))
    tx.arm(REFUND_POLL_INTERVAL)


def _on_observed(tx: _Tx, event: RefundObserved) -> None:
    status = _CLOUD_STATES.get(event.state.upper(), RefundStatus.PENDING)
    if status is RefundStatus.PENDING:
        return
    tx.move(status, "" if status is RefundStatus.REFUNDED else "Mercado Pago failed it")


RefundHandler = Callable[[_Tx, Any], None]
St = RefundStatus

TRANSITIONS: Mapping[tuple[RefundStatus, type[Any]], RefundHandler] = {
    (St.SENDING, RefundSent): _on_sent,
    (St.SENDING, RefundNotSent): _on_first_not_sent,
    (St.SENDING, RefundOutcomeUnknown): _on_unknown,
    (St.SENDING, RefundRejected): _on_first_rejected,
    (St.SENDING, RefundTimerExpired): _on_resend_due,
    (St.UNKNOWN, RefundSent): _on_sent,
    (St.UNKNOWN, RefundNotSent): _on_resend_not_sent,
    (St.UNKNOWN, RefundOutcomeUnknown): _on_unknown,
    (St.UNKNOWN, RefundRejected): _on_resend_rejected,
    (St.UNKNOWN, RefundTimerExpired): _on_resend_due,
    (St.PENDING, RefundObserved): _on_observed,
    (St.PENDING, RefundTimerExpired): _on_poll_due,
}


def step(book: RefundBook, event: RefundEvent, *, now: float) -> RefundStep:
    """Apply one refund event at wall-clock time ``now``; see the module docstring."""
    if isinstance(event, RefundRequested):
        return _admit(book, event, now)
    refund = book.refunds.get(event.refund_id)
    if refund is None:
        return RefundStep(book, (), f"no refund {event.refund_id}", None, None)
    handler = TRANSITIONS.get((refund.status, type(event)))
    if handler is None:
        reason = f"{type(event).__name__} does not apply to a refund that is {refund.status}"
        return RefundStep(book, (), reason, refund.refund_id, refund.sale_id)
    tx = _Tx(book, refund, now)
    handler(tx, event)
    new = dataclasses.replace(tx.refund, updated_at=now)
    return RefundStep(dataclasses.replace(book, refunds=book.refunds.set(new.refund_id, new)),
                      tuple(tx.effects), tx.rejection, new.refund_id, new.sale_id)


def replay(events: Iterable[tuple[float, RefundEvent]]) -> RefundBook:
    """The book that journaled (time, event) pairs lead to."""
    book = RefundBook()
    for at, event in events:
        book = step(book, event, now=at).book
    return book


def recover(book: RefundBook, now: float) -> tuple[RefundEffect, ...]:
    """After a restart: re-arm every unfinished refund's timer (resend or poll when due)."""
    effects: list[RefundEffect] = []
    for refund in book.unfinished():
        at = refund.timer_at if refund.timer_at is not None else now
        effects.append(ArmRefundTimer(refund.refund_id, at))
        effects.append(tell(refund))
    return tuple(effects)
