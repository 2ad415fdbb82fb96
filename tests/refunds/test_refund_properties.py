"""Properties of the refund state machine under any order of requests and answers."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pointd.core.effects import SendRefund
from pointd.core.events import (
    RefundNotSent,
    RefundObserved,
    RefundOutcomeUnknown,
    RefundRejected,
    RefundSent,
    RefundTimerExpired,
)
from pointd.core.records import RefundBook
from pointd.core.states import RefundStatus
from tests.refunds.scenario import PAID, SALE, T0, asked, step

IDS = [f"R{n}" for n in range(6)]


def answers(refund_id: str) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(RefundSent, st.just(refund_id), st.sampled_from(["1", "u"]),
                  st.sampled_from(["PENDING", "REFUNDED", "FAILED", "odd"]),
                  st.integers(0, 2 * PAID), st.sampled_from(["api", "terminal"])),
        st.builds(RefundNotSent, st.just(refund_id), st.just("x"), st.booleans()),
        st.builds(RefundOutcomeUnknown, st.just(refund_id), st.just("x")),
        st.builds(RefundRejected, st.just(refund_id), st.just("exceeds_balance"),
                  st.none() | st.integers(0, 2 * PAID)),
        st.builds(RefundObserved, st.just(refund_id),
                  st.sampled_from(["PENDING", "REFUNDED", "FAILED"]), st.integers(0, PAID)),
        st.builds(RefundTimerExpired, st.just(refund_id)),
    )


requests = st.builds(
    lambda rid, key, amount: asked(rid, amount, key=f"lane2:{key}"),
    st.sampled_from(IDS), st.sampled_from(IDS),
    st.none() | st.integers(-5, PAID + 10),
)
events = st.lists(
    st.one_of(requests, st.sampled_from(IDS).flatmap(answers)), max_size=40
)


@settings(max_examples=150, deadline=None)
@given(events)
def test_never_more_than_paid_and_one_refund_per_key(sequence: list[Any]) -> None:
    book = RefundBook()
    key_amounts: dict[str, int] = {}
    key_refunds: dict[str, str] = {}
    for n, event in enumerate(sequence):
        before = book
        result = step(book, event, now=T0 + n)
        book = result.book
        # What is done or may still happen never exceeds what was paid.
        assert book.committed_cents(SALE) <= PAID
        for effect in result.effects:
            if isinstance(effect, SendRefund):
                assert effect.amount_cents > 0
                # One key, one refund, one amount: a resend is the same request again.
                assert key_amounts.setdefault(effect.idempotency_key,
                                              effect.amount_cents) == effect.amount_cents
                assert key_refunds.setdefault(effect.idempotency_key,
                                              effect.refund_id) == effect.refund_id
        for refund_id, old in before.refunds.items():
            new = book.refunds[refund_id]
            if old.is_final:
                assert new == old, "final refunds never change"
            assert new.idempotency_key == old.idempotency_key
            assert new.amount_cents == old.amount_cents
        if result.rejection is not None:
            assert result.book is before
    keys = [r.idempotency_key for r in book.refunds.values() if r.idempotency_key]
    assert len(keys) == len(set(keys))
    refused = [r for r in book.refunds.values() if r.status is RefundStatus.REFUSED]
    assert all(r.idempotency_key is None and r.sends == 0 for r in refused)
