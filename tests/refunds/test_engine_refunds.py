"""Refunds through the real engine, journal and simulator, on both backends."""

from __future__ import annotations

import pytest

from pointd.app.engine import Engine
from pointd.cloud.errors import RefundNeedsPerson, RefundRetryLater
from pointd.cloud.port import RefundView
from pointd.core.events import RefundRefusal
from pointd.core.refunds import REFUND_RESEND_AFTER, RefundStatus
from tests.refunds.conftest import POLICY, STORE, Rig, eventually

St = RefundStatus


async def test_total_refund(rig: Rig) -> None:
    sale_id = await rig.paid_sale(1500)
    step = await rig.engine.request_refund(sale_id=sale_id, amount_cents=None, by="test")
    assert step.refund_id is not None
    refund = await rig.settle(step.refund_id)
    assert (refund.status, refund.amount_cents) == (St.REFUNDED, 1500)
    assert refund.idempotency_key == f"rf_{sale_id}_1"
    if rig.backend == "payment-intent":
        assert refund.via == "terminal"  # a whole refund is completed on the terminal
        assert St.PENDING in [t.status for t in rig.screens.refunds]
    assert rig.payment_of(sale_id).status == "refunded"
    assert rig.refunded_cents(sale_id) == 1500
    # Journaled before it was sent: the request is the first refund event of the sale.
    kinds = [e.kind for e in rig.journal.timeline(sale_id)]
    assert kinds.index("RefundRequested") < kinds.index("RefundSent")
    assert rig.screens.refunds[-1].status is St.REFUNDED
    assert rig.state_of(sale_id).value == "handed_over"  # the sale itself never changes


async def test_partial_refunds_then_the_rest(rig: Rig) -> None:
    sale_id = await rig.paid_sale(1500)
    first = await rig.engine.request_refund(sale_id=sale_id, amount_cents=500, by="test")
    assert first.refund_id is not None
    assert (await rig.settle(first.refund_id)).status is St.REFUNDED
    assert rig.refunded_cents(sale_id) == 500
    rest = await rig.engine.request_refund(sale_id=sale_id, amount_cents=None, by="test")
    assert rest.refund_id is not None
    refund = await rig.settle(rest.refund_id)
    assert (refund.status, refund.amount_cents) == (St.REFUNDED, 1000)
    assert refund.idempotency_key == f"rf_{sale_id}_2"
    assert rig.refunded_cents(sale_id) == 1500
    assert rig.payment_of(sale_id).status == "refunded"


async def test_a_repeated_request_refunds_once(rig: Rig) -> None:
    sale_id = await rig.paid_sale(1500)
    first = await rig.engine.request_refund(sale_id=sale_id, amount_cents=700, by="register",
                                            request_key="lane1:R-9", correlation_id="R-9")
    again = await rig.engine.request_refund(sale_id=sale_id, amount_cents=700, by="register",
                                            request_key="lane1:R-9", correlation_id="R-9")
    assert again.refund_id == first.refund_id
    assert first.refund_id is not None
    assert (await rig.settle(first.refund_id)).status is St.REFUNDED
    late = await rig.engine.request_refund(sale_id=sale_id, amount_cents=700, by="register",
                                           request_key="lane1:R-9", correlation_id="R-9")
    assert late.refund_id == first.refund_id
    assert len(rig.engine.refund_book.refunds) == 1
    assert rig.refunded_cents(sale_id) == 700
    assert [r["amount"] for r in rig.payment_of(sale_id).refunds] == [7.0]


async def test_over_amount_is_refused_and_nothing_is_sent(rig: Rig) -> None:
    sale_id = await rig.paid_sale(1500)
    partial = await rig.engine.request_refund(sale_id=sale_id, amount_cents=1000, by="test")
    assert partial.refund_id is not None
    await rig.settle(partial.refund_id)
    over = await rig.engine.request_refund(sale_id=sale_id, amount_cents=501, by="test")
    assert over.refund_id is not None
    refused = rig.refund(over.refund_id)
    assert (refused.status, refused.refusal) == (St.REFUSED, RefundRefusal.OVER_AMOUNT)
    assert refused.idempotency_key is None
    await eventually("the refusal on the register",
                     lambda: rig.screens.refunds[-1].refusal is RefundRefusal.OVER_AMOUNT)
    assert rig.refunded_cents(sale_id) == 1000
    assert len(rig.payment_of(sale_id).refunds) == 1
    too_much = await rig.engine.request_refund(sale_id=sale_id, amount_cents=5000, by="test")
    assert too_much.refund_id is not None
    assert rig.refund(too_much.refund_id).refusal is RefundRefusal.OVER_AMOUNT


async def test_the_refund_book_is_rebuilt_from_the_journal(rig: Rig) -> None:
    sale_id = await rig.paid_sale(1500)
    done = await rig.engine.request_refund(sale_id=sale_id, amount_cents=300, by="test")
    assert done.refund_id is not None
    await rig.settle(done.refund_id)
    await rig.engine.request_refund(sale_id=sale_id, amount_cents=9999, by="test")
    for from_snapshot in (False, True):
        rig.journal.write_snapshot(rig.engine.state, rig.journal.last_seq())
        rebuilt = rig.journal.rebuild(STORE, POLICY, from_snapshot=from_snapshot)
        restarted = Engine(journal=rig.journal, state=rebuilt, policy=POLICY,
                           cloud=rig.cloud, register=rig.screens, wall_clock=rig.clock,
                           timers=rig.clock)
        assert restarted.refund_book == rig.engine.refund_book
        assert restarted.refund_book.committed_cents(sale_id) == 300
        assert rebuilt == rig.engine.state


# Only refund intents wait on the terminal: an Orders refund answers final at once, so
# nothing can be pending at a restart there.
@pytest.mark.parametrize("rig", ["payment-intent"], indirect=True)
async def test_a_refund_pending_at_a_restart_is_polled_to_its_end(rig: Rig) -> None:
    sale_id = await rig.paid_sale(1500)
    step = await rig.engine.request_refund(sale_id=sale_id, amount_cents=None, by="test")
    assert step.refund_id is not None
    refund_id = step.refund_id
    await eventually("the refund intent", lambda: rig.refund(refund_id).status is St.PENDING)
    await rig.engine.stop()
    restarted = Engine(journal=rig.journal, state=rig.journal.rebuild(STORE, POLICY),
                       policy=POLICY, cloud=rig.cloud, register=rig.screens,
                       wall_clock=rig.clock, timers=rig.clock)
    rig.engine = restarted
    assert restarted.refund_book.refunds[refund_id].status is St.PENDING
    restarted.resume_refunds()
    refund = await rig.settle(refund_id)
    assert (refund.status, refund.sends) == (St.REFUNDED, 1)
    assert rig.refunded_cents(sale_id) == 1500


async def test_a_refund_mercado_pago_is_still_busy_with_is_resent_with_its_key(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    sale_id = await rig.paid_sale(1500)
    real = rig.cloud.refund_payment
    keys: list[str] = []

    async def busy_once(
        terminal_id: str, order_id: str, payment_id: str, cents: int | None, key: str
    ) -> RefundView:
        keys.append(key)
        if len(keys) == 1:
            raise RefundRetryLater(409, "refund_in_progress", "Refund in progress")
        return await real(terminal_id, order_id, payment_id, cents, key)

    monkeypatch.setattr(rig.cloud, "refund_payment", busy_once)
    step = await rig.engine.request_refund(sale_id=sale_id, amount_cents=500, by="test")
    assert step.refund_id is not None
    refund_id = step.refund_id
    await eventually("the answer", lambda: rig.refund(refund_id).status is St.UNKNOWN)
    rig.clock.advance(REFUND_RESEND_AFTER)
    await eventually("the resend's answer",
                     lambda: len(keys) == 2 and rig.refund(refund_id).status is not St.UNKNOWN)
    assert (await rig.settle(refund_id)).status is St.REFUNDED
    assert keys == [f"rf_{sale_id}_1"] * 2
    assert rig.refunded_cents(sale_id) == 500


async def test_a_refund_a_person_must_make_fails_with_the_code(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    sale_id = await rig.paid_sale(1500)

    async def no_money(*args: object) -> RefundView:
        raise RefundNeedsPerson(428, "insufficient_money_for_refund", "insufficient money")

    monkeypatch.setattr(rig.cloud, "refund_payment", no_money)
    step = await rig.engine.request_refund(sale_id=sale_id, amount_cents=None, by="test")
    assert step.refund_id is not None
    refund_id = step.refund_id
    await eventually("the refusal", lambda: rig.refund(refund_id).status is St.FAILED)
    assert "insufficient_money_for_refund" in rig.refund(refund_id).detail
    assert rig.refunded_cents(sale_id) == 0
