"""The pure refund state machine: every (status, event) pair, and each money rule by example."""

from __future__ import annotations

from typing import Any

import pytest

from pointd.core import refunds as rf
from pointd.core.effects import CancelTimer, FetchRefund, ScheduleTimer, SendRefund, TellRefund
from pointd.core.events import (
    RefundNotSent,
    RefundObserved,
    RefundOutcomeUnknown,
    RefundRefusal,
    RefundRejected,
    RefundSent,
    RefundTimerExpired,
    TimerKind,
)
from pointd.core.records import CoreState, RefundBook
from pointd.core.states import FINAL_REFUND_STATUSES, RefundStatus, SaleState
from tests.core.scenario import STORE
from tests.refunds.scenario import PAID, PAYMENT, SALE, T0, asked, paid_sale, step

St = RefundStatus
RID = "RF1"


def run(*events: Any, book: RefundBook | None = None) -> tuple[RefundBook, list[Any]]:
    """Step every event; return the book and every effect."""
    book = book or RefundBook()
    effects: list[Any] = []
    for n, event in enumerate(events):
        result = step(book, event, now=T0 + n)
        book = result.book
        effects.extend(result.effects)
    return book, effects


def sends(effects: list[Any]) -> list[SendRefund]:
    return [e for e in effects if isinstance(e, SendRefund)]


def tells(effects: list[Any]) -> list[TellRefund]:
    return [e for e in effects if isinstance(e, TellRefund)]


# Events that bring refund RID to each status.
REACH: dict[RefundStatus, tuple[Any, ...]] = {
    St.SENDING: (asked(RID, 500),),
    St.UNKNOWN: (asked(RID, 500), RefundOutcomeUnknown(RID, "timeout")),
    St.PENDING: (asked(RID), RefundSent(RID, "uuid-1", "PENDING", PAID, "terminal")),
    St.REFUNDED: (asked(RID, 500), RefundSent(RID, "111", "REFUNDED", 500, "api")),
    St.FAILED: (asked(RID, 500), RefundRejected(RID, "bad_request", None)),
    St.REFUSED: (asked(RID, PAID + 1),),
}

VARIANTS: list[Any] = [
    RefundSent(RID, "111", "REFUNDED", 500, "api"),
    RefundSent(RID, "uuid-1", "PENDING", 500, "terminal"),
    RefundSent(RID, "111", "FAILED", 500, "api"),
    RefundNotSent(RID, "connection refused", False),
    RefundNotSent(RID, "busy", True),
    RefundOutcomeUnknown(RID, "timeout"),
    RefundRejected(RID, "exceeds_balance", 500),
    RefundRejected(RID, "exceeds_balance", 0),
    RefundRejected(RID, "bad_request", None),
    RefundObserved(RID, "REFUNDED", 500),
    RefundObserved(RID, "PENDING", 500),
    RefundObserved(RID, "FAILED", 500),
    RefundTimerExpired(RID),
]


def test_every_status_is_reachable() -> None:
    for status, events in REACH.items():
        book, _ = run(*events)
        assert book.refunds[RID].status is status


@pytest.mark.parametrize("status", list(REACH))
@pytest.mark.parametrize("event", VARIANTS, ids=lambda e: f"{type(e).__name__}")
def test_pair_is_a_declared_transition_or_a_harmless_rejection(
    status: RefundStatus, event: Any
) -> None:
    book, _ = run(*REACH[status])
    before = book.refunds[RID]
    result = step(book, event, now=T0 + 100)
    after = result.book.refunds[RID]
    if (status, rf.classify(event)) not in rf.TRANSITIONS:
        assert result.rejection is not None
        assert result.effects == ()
        assert result.book is book
        return
    assert result.rejection is None
    if status in FINAL_REFUND_STATUSES:
        pytest.fail("final statuses have no table rows")
    # The amount and key never change once admitted; a send always reuses the key.
    assert (after.amount_cents, after.idempotency_key) == (before.amount_cents,
                                                           before.idempotency_key)
    for send in sends(list(result.effects)):
        assert send.idempotency_key == before.idempotency_key
        assert send.amount_cents == before.amount_cents
    if after.status is St.REFUNDED:
        refunded_by_answer = isinstance(event, RefundSent | RefundObserved)
        landed_earlier = (isinstance(event, RefundRejected) and status is St.UNKNOWN
                          and event.refunded_cents is not None
                          and event.refunded_cents >= before.amount_cents)
        assert refunded_by_answer or landed_earlier, event


def test_final_statuses_have_no_rows() -> None:
    assert all(status not in FINAL_REFUND_STATUSES for status, _ in rf.TRANSITIONS)


def test_unknown_refund_id_is_rejected() -> None:
    result = step(RefundBook(), RefundTimerExpired("nope"), now=T0)
    assert str(result.rejection) == "no refund nope"
    assert result.effects == ()


# --- admission --------------------------------------------------------------------------------


def test_total_refund_sends_everything_left_with_a_deterministic_key() -> None:
    book, effects = run(asked(RID))
    (send,) = sends(effects)
    assert send == SendRefund(RID, "PAX_1", "intent-1", PAYMENT, PAID, f"rf_{SALE}_1")
    assert tells(effects)[0].status is St.SENDING
    assert book.committed_cents(SALE) == PAID


def test_partial_refunds_then_the_rest_and_then_nothing_left() -> None:
    book, effects = run(asked("A", 500), asked("B", 400), asked("C"))
    assert [(s.amount_cents, s.idempotency_key) for s in sends(effects)] == [
        (500, f"rf_{SALE}_1"), (400, f"rf_{SALE}_2"), (600, f"rf_{SALE}_3")]
    book, effects = run(asked("D", 1), book=book)
    assert sends(effects) == []
    assert book.refunds["D"].status is St.REFUSED
    assert book.refunds["D"].refusal is RefundRefusal.NOTHING_LEFT


def test_over_amount_is_refused_before_anything_is_sent() -> None:
    book, effects = run(asked("A", 1000), asked("B", 501))
    assert [s.amount_cents for s in sends(effects)] == [1000]
    refused = book.refunds["B"]
    assert (refused.status, refused.refusal) == (St.REFUSED, RefundRefusal.OVER_AMOUNT)
    assert refused.idempotency_key is None
    assert tells(effects)[-1].refusal is RefundRefusal.OVER_AMOUNT
    assert book.committed_cents(SALE) == 1000


def test_a_failed_refund_frees_its_amount_again() -> None:
    book, _ = run(asked("A", 1000), RefundRejected("A", "bad_request", None))
    book, effects = run(asked("B", PAID), book=book)
    assert [s.amount_cents for s in sends(effects)] == [PAID]
    assert sends(effects)[0].idempotency_key == f"rf_{SALE}_2"


@pytest.mark.parametrize(
    ("facts", "refusal"),
    [
        (paid_sale(SaleState.VERIFYING), RefundRefusal.NOT_REFUNDABLE),
        (paid_sale(SaleState.DECLINED), RefundRefusal.NOT_REFUNDABLE),
        (paid_sale(SaleState.OVERRIDDEN, payment_id=None), RefundRefusal.NOT_REFUNDABLE),
        (None, RefundRefusal.UNKNOWN_SALE),
    ],
)
def test_only_a_paid_settled_sale_is_refundable(facts: Any, refusal: RefundRefusal) -> None:
    book, effects = run(asked(RID, 100, sale=facts, unknown_sale=facts is None))
    assert sends(effects) == []
    assert book.refunds[RID].refusal is refusal


@pytest.mark.parametrize("state", [SaleState.APPROVED, SaleState.HANDED_OVER,
                                   SaleState.OVERRIDDEN])
def test_approved_handed_over_and_overridden_sales_with_a_payment_are_refundable(
    state: SaleState
) -> None:
    _, effects = run(asked(RID, 100, sale=paid_sale(state)))
    assert len(sends(effects)) == 1


def test_a_zero_amount_is_refused() -> None:
    book, effects = run(asked(RID, 0))
    assert sends(effects) == []
    assert book.refunds[RID].refusal is RefundRefusal.INVALID_AMOUNT


def test_a_repeated_request_is_the_same_refund_and_sends_nothing_new() -> None:
    book, first = run(asked(RID, 500))
    again = step(book, asked("RF-other-id", 500, key=f"lane2:{RID}"), now=T0 + 5)
    assert again.book is book
    assert sends(list(again.effects)) == []
    (told,) = tells(list(again.effects))
    assert (told.refund_id, told.status) == (RID, St.SENDING)
    assert len(sends(first)) == 1


def test_a_repeat_after_the_end_tells_the_outcome_again() -> None:
    book, _ = run(*REACH[St.REFUNDED])
    again = step(book, asked("X", 500, key=f"lane2:{RID}"), now=T0 + 9)
    assert [t.status for t in tells(list(again.effects))] == [St.REFUNDED]


def test_a_reused_key_with_another_amount_is_refused_and_changes_nothing() -> None:
    book, _ = run(asked(RID, 500))
    again = step(book, asked("X", 700, key=f"lane2:{RID}"), now=T0 + 5)
    assert again.book is book
    assert again.rejection is not None
    assert [t.refusal for t in tells(list(again.effects))] == [RefundRefusal.ID_REUSED]


# --- after sending ----------------------------------------------------------------------------


def test_unknown_outcome_is_resent_with_the_same_key_on_the_timer() -> None:
    book, effects = run(asked(RID, 500), RefundOutcomeUnknown(RID, "timeout"))
    (arm,) = [e for e in effects if isinstance(e, ScheduleTimer)]
    assert arm.at == T0 + 1 + rf.REFUND_RESEND_AFTER
    book, effects = run(RefundTimerExpired(RID), book=book)
    (resend,) = sends(effects)
    assert (resend.idempotency_key, resend.amount_cents) == (f"rf_{SALE}_1", 500)
    assert book.refunds[RID].sends == 2


def test_a_resend_meeting_a_refunded_balance_means_the_first_send_landed() -> None:
    book, _ = run(asked(RID), RefundOutcomeUnknown(RID, "reset"), RefundTimerExpired(RID),
                  RefundRejected(RID, "exceeds_balance", PAID))
    assert book.refunds[RID].status is St.REFUNDED


def test_a_resend_refused_without_the_refund_on_the_payment_fails() -> None:
    book, _ = run(asked(RID, 500), RefundOutcomeUnknown(RID, "reset"), RefundTimerExpired(RID),
                  RefundRejected(RID, "exceeds_balance", 0))
    assert book.refunds[RID].status is St.FAILED


def test_a_busy_terminal_on_a_resend_keeps_asking() -> None:
    book, effects = run(asked(RID), RefundOutcomeUnknown(RID, "reset"), RefundTimerExpired(RID),
                        RefundNotSent(RID, "busy", True))
    assert book.refunds[RID].status is St.UNKNOWN
    assert isinstance(effects[-1], ScheduleTimer)


def test_not_sent_on_the_first_send_fails_with_nothing_refunded() -> None:
    book, effects = run(asked(RID), RefundNotSent(RID, "busy", True))
    assert book.refunds[RID].status is St.FAILED
    assert book.committed_cents(SALE) == 0
    assert tells(effects)[-1].status is St.FAILED


def test_a_pending_refund_is_polled_until_final_then_its_timer_is_dropped() -> None:
    book, effects = run(*REACH[St.PENDING])
    assert tells(effects)[-1].via == "terminal"
    book, effects = run(RefundTimerExpired(RID), book=book)
    assert [type(e) for e in effects] == [FetchRefund, ScheduleTimer]
    book, effects = run(RefundObserved(RID, "PENDING", PAID), book=book)
    assert effects == []
    book, effects = run(RefundObserved(RID, "REFUNDED", PAID), book=book)
    assert book.refunds[RID].status is St.REFUNDED
    assert CancelTimer(RID, TimerKind.REFUND) in effects


def test_recovery_rearms_every_unfinished_refund_and_nothing_else() -> None:
    book, _ = run(asked("A", 100), asked("B", 100), RefundOutcomeUnknown("B", "t"),
                  asked("C", 100), RefundSent("C", "uuid", "PENDING", 100, "terminal"),
                  asked("D", 100), RefundSent("D", "9", "REFUNDED", 100, "api"))
    effects = rf.recover(book, T0 + 50)
    armed = {e.owner for e in effects if isinstance(e, ScheduleTimer)}
    assert armed == {"A", "B", "C"}
    after, resent = run(RefundTimerExpired("A"), book=book)
    assert after.refunds["A"].status is St.UNKNOWN
    assert sends(resent)[0].idempotency_key == f"rf_{SALE}_1"


def test_a_snapshot_holds_the_refund_book_exactly() -> None:
    events = [*REACH[St.PENDING], RefundObserved(RID, "REFUNDED", PAID), asked("B", 1),
              asked("C", 5), RefundOutcomeUnknown("C", "timeout")]
    live, _ = run(*events)
    state = CoreState(store_id=STORE, refunds=live)
    assert CoreState.from_json(state.to_json()).refunds == live
