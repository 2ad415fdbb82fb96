"""The refund state machine: one table from (refund status, trigger) to a handler and targets.

Theory of operation
-------------------
A refund returns (part of) a sale's verified payment. It is decided by the same core as
the sale, through the same ``pointd.core.machine.step`` and the same runner
(``pointd.core.table.run_row``), and lives in the same ``CoreState`` (``refunds``), so the
engine journals every refund event before it runs the effects decided for it
(write-ahead), a snapshot holds the refunds, and a refund is never sent without its record
and its idempotency key on disk first.

``RefundRequested`` is admitted (or refused) before any table lookup, because no refund
exists yet. The engine puts into the event what it read of the sale (``RefundableSale``,
built by ``facts_of``), so that replaying the journal decides exactly as the live daemon
did, whatever the sale table looks like by then. Admission keeps the money rules:

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

After that, every other event is routed by refund id; its trigger is the event type, and
for an answer carrying Mercado Pago's refund state (``RefundSent``, ``RefundObserved``) the
type qualified by the status that state means. ``TRANSITIONS`` is run like the sale table:
a missing row is rejected and changes nothing, a handler is held to its row's targets. A
send whose outcome is unknown is resent with the same key when the refund timer fires
(Mercado Pago returns the same refund for the same key; a refund intent, which carries no
key, answers "busy" while queued and "exceeds balance" once done, so either way nothing is
refunded twice). A PENDING refund is polled with ``FetchRefund`` on the timer until it is
final. Final statuses never change. Restart recovery (``recover``) re-arms the timers of
unfinished refunds and tells their registers where they stand: a SENDING refund whose
answer was lost is then resent with its key, as after an unknown outcome.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Union

from pointd.core.effects import (
    Effect,
    FetchRefund,
    Notice,
    ScheduleTimer,
    SendRefund,
    TellRefund,
)
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
    TimerKind,
)
from pointd.core.persistent import PersistentMap
from pointd.core.policy import Policy
from pointd.core.records import CoreState, Refund, RefundBook, Sale
from pointd.core.states import FINAL_REFUND_STATUSES, REFUNDABLE_SALE_STATES, RefundStatus
from pointd.core.table import Rejection, Step, Table, Transition, Trigger, Tx, run_row

# A refund intent waits for the cashier at the terminal; Point allows about one GET per
# second per intent, so polling every 2 s keeps the register current at half that budget.
REFUND_POLL_INTERVAL = 2.0
# After an unknown outcome, resend with the same key after this long: long enough for a
# flapping link or a 5xx burst to pass, short enough that the cashier is not kept waiting.
REFUND_RESEND_AFTER = 5.0

_CLOUD_STATES = {
    "PENDING": RefundStatus.PENDING,
    "REFUNDED": RefundStatus.REFUNDED,
    "FAILED": RefundStatus.FAILED,
}

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


def tell(refund: Refund) -> TellRefund:
    """The register message effect for a refund's current standing."""
    return TellRefund(
        lane=refund.lane, correlation_id=refund.correlation_id,
        sale_correlation_id=refund.sale_correlation_id, refund_id=refund.refund_id,
        status=refund.status, amount_cents=refund.amount_cents or None,
        refusal=refund.refusal, via=refund.via, detail=refund.detail,
    )


def facts_of(sale: Sale) -> RefundableSale:
    """What a refund request journals of its sale: state, ids and the verified payment."""
    return RefundableSale(
        state=sale.state, lane=sale.lane, correlation_id=sale.correlation_id,
        terminal_id=sale.terminal_id, intent_id=sale.intent_id,
        payment_id=sale.approved_payment_id, paid_cents=sale.amount_cents,
    )


class _RefundKind:
    """How the shared runner (``pointd.core.table``) handles a refund."""

    name = "refund"

    def state_of(self, record: Refund) -> RefundStatus:
        return record.status

    def owner_of(self, record: Refund) -> str:
        return record.refund_id

    def sale_of(self, record: Refund) -> str:
        return record.sale_id

    def owned_timers(self, state: StrEnum) -> frozenset[TimerKind]:
        if state in FINAL_REFUND_STATUSES:
            return frozenset()
        return frozenset({TimerKind.REFUND})

    def entering(self, record: Refund, state: StrEnum) -> Refund:
        return dataclasses.replace(record, status=RefundStatus(state))

    def telling(self, record: Refund, notice: Notice | None) -> Effect:
        return tell(record)

    def commit(self, core: CoreState, before: Refund, after: Refund) -> CoreState:
        book = core.refunds
        book = dataclasses.replace(book, refunds=book.refunds.set(after.refund_id, after))
        return dataclasses.replace(core, refunds=book)

    def step_ids(self, core: CoreState, record: Refund) -> tuple[str | None, str | None]:
        return (record.sale_id if record.sale_id in core.sales else None), record.refund_id


REFUNDS = _RefundKind()
RefundTx = Tx[Refund]
RefundTable = Table[Refund]


# --- admission -----------------------------------------------------------------------------


def idempotency_key(sale_id: str, number: int) -> str:
    """The idempotency key of a sale's ``number``-th admitted refund."""
    return f"rf_{sale_id}_{number}"


def _admit(core: CoreState, event: RefundRequested, now: float, policy: Policy) -> Step:
    book = core.refunds
    known_sale = event.sale_id if event.sale_id in core.sales else None
    known_id = book.by_request.get(event.request_key)
    if known_id is not None:
        known = book.refunds[known_id]
        sale_id = known.sale_id if known.sale_id in core.sales else None
        if known.sale_id != event.sale_id or known.requested_cents != event.amount_cents:
            reused = TellRefund(
                lane=event.sale.lane if event.sale else known.lane,
                correlation_id=event.correlation_id, sale_correlation_id=None,
                refund_id=known.refund_id, status=RefundStatus.REFUSED,
                amount_cents=event.amount_cents, refusal=RefundRefusal.ID_REUSED, via=None,
                detail="this refund id names another refund",
            )
            return Step(core, (reused,),
                        Rejection("refund id reused for another sale or amount", event),
                        sale_id, refund_id=known_id)
        return Step(core, (tell(known),), None, sale_id, refund_id=known_id)
    if event.refund_id in book.refunds:
        return Step(core, (), Rejection(f"refund id {event.refund_id} is already used", event),
                    known_sale)
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
    effects: list[Effect] = []
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
        tx = RefundTx(REFUNDS, core, refund, now=now, policy=policy)
        _send(tx)
        refund, effects = tx.record, [tell(tx.record), *tx.effects]
    new_book = RefundBook(
        refunds=book.refunds.set(refund.refund_id, refund),
        by_request=book.by_request.set(event.request_key, refund.refund_id),
        by_sale=book.by_sale.set(
            event.sale_id, (*book.by_sale.get(event.sale_id, ()), refund.refund_id)),
    )
    return Step(dataclasses.replace(core, refunds=new_book), tuple(effects), None, known_sale,
                refund_id=refund.refund_id)


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


def _send(tx: RefundTx) -> None:
    r = tx.record
    assert r.intent_id is not None
    assert r.payment_id is not None
    assert r.idempotency_key is not None
    tx.update(sends=r.sends + 1)
    tx.emit(SendRefund(r.refund_id, r.terminal_id, r.intent_id, r.payment_id, r.amount_cents,
                       r.idempotency_key))


def _cloud_status(state: str) -> RefundStatus:
    # A state Mercado Pago documents no meaning for is treated as still pending: polled on.
    return _CLOUD_STATES.get(state.upper(), RefundStatus.PENDING)


def _sent_pending(tx: RefundTx, event: RefundSent) -> None:
    tx.move(RefundStatus.PENDING, detail="", cloud_refund_id=event.cloud_refund_id,
            via=event.via)
    tx.schedule(TimerKind.REFUND, REFUND_POLL_INTERVAL)


def _sent_refunded(tx: RefundTx, event: RefundSent) -> None:
    tx.move(RefundStatus.REFUNDED, detail="", cloud_refund_id=event.cloud_refund_id,
            via=event.via)


def _sent_failed(tx: RefundTx, event: RefundSent) -> None:
    tx.move(RefundStatus.FAILED, detail="Mercado Pago failed it",
            cloud_refund_id=event.cloud_refund_id, via=event.via)


def _first_not_sent(tx: RefundTx, event: RefundNotSent) -> None:
    what = "the terminal is busy" if event.terminal_busy else event.reason
    tx.move(RefundStatus.FAILED, detail=f"not sent: {what}"[:200])


def _first_unknown(tx: RefundTx, event: RefundOutcomeUnknown) -> None:
    tx.move(RefundStatus.UNKNOWN, detail=f"outcome unknown: {event.reason}"[:200])
    tx.schedule(TimerKind.REFUND, REFUND_RESEND_AFTER)


def _unknown_again(tx: RefundTx, event: RefundOutcomeUnknown) -> None:
    tx.update(detail=f"outcome unknown: {event.reason}"[:200])
    tx.schedule(TimerKind.REFUND, REFUND_RESEND_AFTER)


def _resend_not_sent(tx: RefundTx, event: RefundNotSent) -> None:
    # An earlier send may have landed (a queued refund intent is what makes the terminal
    # busy): only an answer to the same key settles it.
    tx.schedule(TimerKind.REFUND, REFUND_RESEND_AFTER)


def _first_rejected(tx: RefundTx, event: RefundRejected) -> None:
    tx.move(RefundStatus.FAILED, detail=f"refused by Mercado Pago: {event.code}"[:200])


def _resend_rejected(tx: RefundTx, event: RefundRejected) -> None:
    r = tx.record
    others = tx.core.refunds.refunded_cents(r.sale_id)
    if event.refunded_cents is not None and event.refunded_cents >= others + r.amount_cents:
        # The resend found the payment already refunded by this amount: the first send landed.
        tx.move(RefundStatus.REFUNDED, detail="an earlier send of this refund landed")
    else:
        tx.move(RefundStatus.FAILED, detail=f"refused by Mercado Pago: {event.code}"[:200])


def _resend_after_restart(tx: RefundTx, event: RefundTimerExpired) -> None:
    # Recovery arms a SENDING refund's timer: its first send's answer was lost with the
    # process, so it is an unknown outcome now, resent with its key.
    tx.fired(TimerKind.REFUND)
    tx.move(RefundStatus.UNKNOWN, tell=False, detail="answer lost at a restart")
    _send(tx)


def _resend_due(tx: RefundTx, event: RefundTimerExpired) -> None:
    tx.fired(TimerKind.REFUND)
    _send(tx)


def _poll_due(tx: RefundTx, event: RefundTimerExpired) -> None:
    tx.fired(TimerKind.REFUND)
    r = tx.record
    assert r.intent_id is not None
    assert r.payment_id is not None
    assert r.cloud_refund_id is not None
    tx.emit(FetchRefund(r.refund_id, r.intent_id, r.payment_id, r.cloud_refund_id))
    tx.schedule(TimerKind.REFUND, REFUND_POLL_INTERVAL)


def _observed_refunded(tx: RefundTx, event: RefundObserved) -> None:
    tx.move(RefundStatus.REFUNDED, detail="")


def _observed_failed(tx: RefundTx, event: RefundObserved) -> None:
    tx.move(RefundStatus.FAILED, detail="Mercado Pago failed it")


def _still_pending(tx: RefundTx, event: RefundObserved) -> None:
    """Nothing to do: the poll timer, re-armed by the fetch, asks again."""


St = RefundStatus


def _build_table() -> dict[tuple[StrEnum, Trigger], Transition[Refund]]:
    def row(handler: Any, *targets: RefundStatus) -> Transition[Refund]:
        return Transition(handler, frozenset(targets))

    table: dict[tuple[StrEnum, Trigger], Transition[Refund]] = {}
    for status in (St.SENDING, St.UNKNOWN):
        table[status, (RefundSent, St.PENDING)] = row(_sent_pending, St.PENDING)
        table[status, (RefundSent, St.REFUNDED)] = row(_sent_refunded, St.REFUNDED)
        table[status, (RefundSent, St.FAILED)] = row(_sent_failed, St.FAILED)
    table[St.SENDING, RefundNotSent] = row(_first_not_sent, St.FAILED)
    table[St.SENDING, RefundOutcomeUnknown] = row(_first_unknown, St.UNKNOWN)
    table[St.SENDING, RefundRejected] = row(_first_rejected, St.FAILED)
    table[St.SENDING, RefundTimerExpired] = row(_resend_after_restart, St.UNKNOWN)
    table[St.UNKNOWN, RefundNotSent] = row(_resend_not_sent)
    table[St.UNKNOWN, RefundOutcomeUnknown] = row(_unknown_again)
    table[St.UNKNOWN, RefundRejected] = row(_resend_rejected, St.REFUNDED, St.FAILED)
    table[St.UNKNOWN, RefundTimerExpired] = row(_resend_due)
    table[St.PENDING, (RefundObserved, St.PENDING)] = row(_still_pending)
    table[St.PENDING, (RefundObserved, St.REFUNDED)] = row(_observed_refunded, St.REFUNDED)
    table[St.PENDING, (RefundObserved, St.FAILED)] = row(_observed_failed, St.FAILED)
    table[St.PENDING, RefundTimerExpired] = row(_poll_due)
    return table


TRANSITIONS: RefundTable = MappingProxyType(_build_table())


def classify(event: RefundEvent) -> Trigger:
    """The refund event's trigger: its type, qualified by the refund state it reports."""
    if isinstance(event, RefundSent | RefundObserved):
        return (type(event), _cloud_status(event.state))
    return type(event)


def step_refund(core: CoreState, event: RefundEvent, *, now: float, policy: Policy,
                table: RefundTable = TRANSITIONS) -> Step:
    """Apply one refund event (``pointd.core.machine.step`` sends them here)."""
    if isinstance(event, RefundRequested):
        return _admit(core, event, now, policy)
    refund = core.refunds.refunds.get(event.refund_id)
    if refund is None:
        return Step(core, (), Rejection(f"no refund {event.refund_id}", event), None)
    return run_row(REFUNDS, table, core, refund, trigger=classify(event), event=event,
                   now=now, policy=policy)


def recover(book: RefundBook, now: float) -> tuple[Effect, ...]:
    """After a restart: re-arm every unfinished refund's timer (resend or poll when due)."""
    effects: list[Effect] = []
    for refund in book.unfinished():
        at = refund.timer_due()
        effects.append(ScheduleTimer(refund.refund_id, TimerKind.REFUND,
                                     now if at is None else at))
        effects.append(tell(refund))
    return tuple(effects)


def forget_settled(book: RefundBook, before: float, gone: Collection[str],
                   sales: Mapping[str, Sale]) -> RefundBook:
    """``book`` without the refunds of forgotten sales, nor settled ones of unknown sales.

    The second kind are refusals of refunds asked for a sale the daemon did not (or no
    longer) hold: kept until they are as old as the settled sales being forgotten.
    """
    def goes(refund: Refund) -> bool:
        if refund.sale_id in gone:
            return True
        return (refund.sale_id not in sales and refund.is_final
                and refund.updated_at < before)

    leaving = [r for r in book.refunds.values() if goes(r)]
    if not leaving:
        return book
    ids = {r.refund_id for r in leaving}
    return RefundBook(
        refunds=PersistentMap({k: v for k, v in book.refunds.items() if k not in ids}),
        by_request=PersistentMap({k: v for k, v in book.by_request.items() if v not in ids}),
        by_sale=PersistentMap({sale: kept for sale, refund_ids in book.by_sale.items()
                               if (kept := tuple(r for r in refund_ids if r not in ids))}),
    )
