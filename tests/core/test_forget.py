"""Forgetting settled sales: only final, old sales go, and nothing late can misuse the gap."""

from __future__ import annotations

import dataclasses

from pointd.core.effects import AlertTechnician, CreateIntent, FetchPayment, TellRegister
from pointd.core.events import (
    AttemptNotFound,
    CancelRequested,
    CreateOutcomeUnknown,
    Event,
    FraudAlerted,
    HandoverConfirmed,
    IntentCreated,
    ObservationSource,
    OverrideDecision,
    OverrideGiven,
    PaymentNotFound,
    RefundRequested,
    RefundSent,
    SettledSalesForgotten,
    TimerExpired,
    TimerKind,
)
from pointd.core.machine import CoreState, Step, forget_settled, forgettable, step
from pointd.core.refunds import facts_of
from pointd.core.states import Refusal, SaleState
from tests.core.scenario import (
    POLICY,
    STORE,
    T0,
    check_invariants,
    observed,
    requested,
    verified,
)

S = SaleState
NOTIFIED = ObservationSource.NOTIFICATION
OLD, KEPT, HELD, NEWER = "S0001", "S0002", "S0003", "S0004"


def ref(sale_id: str, lane: int, attempt: int = 1) -> str:
    return f"pd1_{STORE}_{lane}_{sale_id}_{attempt}"


def paid(sale_id: str, lane: int) -> list[Event]:
    """A sale that is approved and handed over on its own lane and terminal."""
    intent, payment = f"I-{sale_id}", f"P-{sale_id}"
    return [requested(sale_id, lane, f"T{lane}"), IntentCreated(sale_id, 1, intent),
            observed("FINISHED", payment_id=payment, intent_id=intent,
                     reference=ref(sale_id, lane)),
            verified(payment_id=payment), HandoverConfirmed(sale_id)]


def held(sale_id: str, lane: int) -> list[Event]:
    """A sale left HELD on CONFIRMATION_REQUIRED (unfinished)."""
    intent, payment = f"I-{sale_id}", f"P-{sale_id}"
    return [requested(sale_id, lane, f"T{lane}"), IntentCreated(sale_id, 1, intent),
            observed("CONFIRMATION_REQUIRED", payment_id=payment, intent_id=intent,
                     reference=ref(sale_id, lane))]


class Run:
    """Feeds events at an explicit clock and keeps every step."""

    def __init__(self) -> None:
        self.state = CoreState.empty(STORE)
        self.now = T0

    def feed(self, *events: Event, gap: float = 1.0) -> Step:
        result: Step | None = None
        for event in events:
            self.now += gap
            result = step(self.state, event, now=self.now, policy=POLICY)
            self.state = result.state
            check_invariants(self.state)
        assert result is not None
        return result


def store_with_an_old_settled_sale() -> Run:
    """OLD settled long ago (with a supervisor override), KEPT settled recently, HELD live."""
    run = Run()
    run.feed(*held(OLD, 1))
    run.feed(OverrideGiven(OLD, OverrideDecision.RELEASE, "seen on the terminal", 0))
    run.feed(*held(HELD, 2))  # unfinished, as old as OLD
    run.now += 10 * 86400
    run.feed(*paid(KEPT, 3))
    run.feed(FraudAlerted("P-unlinked"))
    return run


def test_only_final_sales_changed_before_the_time_are_forgotten() -> None:
    run = store_with_an_old_settled_sale()
    before = run.state
    after = forget_settled(before, T0 + 5 * 86400)

    assert set(after.sales) == {KEPT, HELD}
    assert [s.sale_id for s in forgettable(before, T0 + 5 * 86400)] == [OLD]
    assert after.sales[HELD] == before.sales[HELD]  # unfinished: never forgotten, any age
    assert after.sales[KEPT] == before.sales[KEPT]
    assert dict(after.lanes) == dict(before.lanes) == {2: HELD}
    assert dict(after.terminals) == dict(before.terminals)
    assert after.fraud_alerts == before.fraud_alerts == {"P-unlinked"}
    assert f"I-{OLD}" not in after.intents
    assert f"P-{OLD}" not in after.payments
    assert after.intents[f"I-{HELD}"] == HELD
    assert after.payments[f"P-{KEPT}"] == KEPT
    assert OLD not in after.overrides
    assert after.forgotten_through == OLD
    check_invariants(after)
    # Pure: the input is untouched, and nothing to forget returns the same state.
    assert OLD in before.sales
    assert forget_settled(after, T0 + 5 * 86400) is after


def test_overrides_of_kept_sales_stay() -> None:
    run = store_with_an_old_settled_sale()
    run.feed(*held(NEWER, 4))
    run.feed(OverrideGiven(NEWER, OverrideDecision.VOID, "customer left", 0))
    after = forget_settled(run.state, T0 + 5 * 86400)
    assert after.overrides[NEWER].decision is OverrideDecision.VOID
    assert after.sales[NEWER].state is S.DECLINED


def test_the_event_forgets_as_the_function_does_and_refuses_the_future() -> None:
    run = store_with_an_old_settled_sale()
    before = run.state
    result = run.feed(SettledSalesForgotten(T0 + 5 * 86400))
    assert result.rejection is None
    assert result.effects == ()
    assert result.sale_id is None
    assert result.state == forget_settled(before, T0 + 5 * 86400)
    for bad in (run.now + 1, float("nan"), float("inf")):
        refused = step(run.state, SettledSalesForgotten(bad), now=run.now, policy=POLICY)
        assert refused.rejection is not None
        assert refused.state is run.state


def forgotten() -> Run:
    run = store_with_an_old_settled_sale()
    run.feed(SettledSalesForgotten(T0 + 5 * 86400))
    return run


def assert_harmless(result: Step, before: CoreState) -> None:
    assert result.rejection is not None
    assert result.sale_id is None
    assert not any(isinstance(e, FetchPayment | CreateIntent | TellRegister)
                   for e in result.effects)
    assert result.state.sales == before.sales


def test_late_notifications_for_a_forgotten_intent_are_rejected() -> None:
    run = forgotten()
    for state in ("FINISHED", "CONFIRMATION_REQUIRED", "OPEN", "CANCELED", "PROCESSING"):
        for source in ObservationSource:
            before = run.state
            late = observed(state, source, payment_id=f"P-{OLD}", intent_id=f"I-{OLD}",
                            reference=ref(OLD, 1))
            assert_harmless(run.feed(late), before)


def test_a_forgotten_intent_is_not_adopted_by_a_new_sale_on_its_lane_and_terminal() -> None:
    run = forgotten()
    run.feed(requested(NEWER, 1, "T1"))  # same lane and terminal as OLD, attempt 1, CREATING
    assert run.state.sales[NEWER].state is S.CREATING
    for reference in (ref(OLD, 1), None, "not-a-reference"):
        before = run.state
        late = observed("FINISHED", NOTIFIED, payment_id=f"P-{OLD}", intent_id=f"I-{OLD}",
                        reference=reference)
        assert_harmless(run.feed(late), before)
    assert run.state.sales[NEWER].intent_id is None
    assert run.state.sales[NEWER].payment_id is None


def test_a_forgotten_sale_id_is_never_admitted_again() -> None:
    run = forgotten()
    for sale_id in (OLD, "S0000", "A"):  # the forgotten id, and ids sorting below it
        result = run.feed(requested(sale_id, 5, "T5"))
        assert result.rejection is not None
        assert result.sale_id is None
        assert sale_id not in result.state.sales
        (tell,) = [e for e in result.effects if isinstance(e, TellRegister)]
        assert (tell.state, tell.refusal) == (S.FAILED, Refusal.INVALID_REQUEST)
        assert any(isinstance(e, AlertTechnician) for e in result.effects)
        assert 5 not in result.state.lanes
    # Even after a restart-like round trip through JSON the guard holds.
    restored = CoreState.from_json(run.state.to_json())
    assert step(restored, requested(OLD, 5, "T5"), now=run.now, policy=POLICY).sale_id is None
    admitted = run.feed(requested(NEWER, 5, "T5"))
    assert admitted.rejection is None
    assert admitted.state.sales[NEWER].state is S.CREATING


def test_a_late_verified_payment_of_a_forgotten_sale_attaches_nowhere() -> None:
    run = forgotten()
    # A new sale for the same amount on OLD's lane, verifying a payment of its own.
    run.feed(requested(NEWER, 1, "T1"), IntentCreated(NEWER, 1, f"I-{NEWER}"),
             observed("FINISHED", payment_id=f"P-{NEWER}", intent_id=f"I-{NEWER}",
                      reference=ref(NEWER, 1)))
    assert run.state.sales[NEWER].state is S.VERIFYING
    for reference in (ref(OLD, 1), None, ref(NEWER, 1)):
        for status in ("approved", "rejected", "refunded"):
            before = run.state
            late = verified(status, payment_id=f"P-{OLD}", reference=reference)
            result = run.feed(late)
            if reference == ref(NEWER, 1):
                # Routed by its reference to NEWER, whose payment it is not: refused loudly.
                assert result.sale_id == NEWER
                assert result.rejection is not None
                assert result.state.sales == before.sales
            else:
                assert_harmless(result, before)
    assert run.state.sales[NEWER].state is S.VERIFYING
    assert run.state.sales[NEWER].approved_payment_id is None
    for late_event in (PaymentNotFound(f"P-{OLD}"), FraudAlerted(f"P-{OLD}")):
        before = run.state
        result = run.feed(late_event)
        assert result.sale_id is None
        assert result.state.sales == before.sales
    assert f"P-{OLD}" in run.state.fraud_alerts  # recorded for the gate all the same


def test_a_forgotten_payment_named_again_never_releases_goods() -> None:
    """The payment index no longer names the forgotten sale. A notification naming the old
    payment for a kept sale changes nothing (rule 6); should Mercado Pago's own answer for
    the kept sale's intent ever name it, the gate still refuses."""
    run = forgotten()
    run.feed(requested(NEWER, 1, "T1"), IntentCreated(NEWER, 1, f"I-{NEWER}"))
    before = run.state.sales[NEWER]
    run.feed(observed("FINISHED", NOTIFIED, payment_id=f"P-{OLD}", intent_id=f"I-{NEWER}",
                      reference=ref(NEWER, 1)))
    assert run.state.sales[NEWER] == before
    run.feed(observed("FINISHED", payment_id=f"P-{OLD}", intent_id=f"I-{NEWER}",
                      reference=ref(NEWER, 1)))
    sale = run.state.sales[NEWER]
    assert (sale.state, sale.payment_id) == (S.VERIFYING, f"P-{OLD}")
    # Mercado Pago's record of the old payment names the old sale's attempt: mismatch.
    run.feed(verified(payment_id=f"P-{OLD}", reference=ref(OLD, 1)))
    assert run.state.sales[NEWER].state is S.ESCALATED
    assert not run.state.sales[NEWER].may_hand_over
    # A fraud alert on a forgotten sale's payment still blocks whoever claims it.
    blocked = forgotten()
    blocked.feed(FraudAlerted(f"P-{OLD}"), requested(NEWER, 1, "T1"),
                 IntentCreated(NEWER, 1, f"I-{NEWER}"),
                 observed("FINISHED", payment_id=f"P-{OLD}", intent_id=f"I-{NEWER}",
                          reference=ref(NEWER, 1)),
                 verified(payment_id=f"P-{OLD}"))
    assert blocked.state.sales[NEWER].state is S.BLOCKED


def test_late_register_and_supervisor_events_for_a_forgotten_sale_change_nothing() -> None:
    run = forgotten()
    for late in (HandoverConfirmed(OLD), CancelRequested(OLD, None, "register"),
                 OverrideGiven(OLD, OverrideDecision.RELEASE, "again", 0),
                 TimerExpired(OLD, TimerKind.VERIFY)):
        before = run.state
        assert_harmless(run.feed(late), before)


def test_attempt_numbering_of_a_kept_sale_is_unaffected() -> None:
    """A kept sale mid-reconciliation gets the same next attempt and reference either way."""

    def reconciling() -> Run:
        run = store_with_an_old_settled_sale()
        run.feed(requested(NEWER, 1, "T1"), CreateOutcomeUnknown(NEWER, 1, "read timeout"),
                 AttemptNotFound(NEWER, 1), CreateOutcomeUnknown(NEWER, 2, "read timeout"))
        return run

    plain, forgetting = reconciling(), reconciling()
    forgetting.feed(SettledSalesForgotten(T0 + 5 * 86400))
    forgetting.now = plain.now
    results = [r.feed(AttemptNotFound(NEWER, 2)) for r in (plain, forgetting)]
    assert results[0].effects == results[1].effects
    (create,) = [e for e in results[1].effects if isinstance(e, CreateIntent)]
    assert (create.attempt, create.external_reference) == (3, ref(NEWER, 1, 3))
    assert plain.state.sales[NEWER] == forgetting.state.sales[NEWER]
    # A late intent for the kept sale's earlier attempt is still refused as before.
    late = observed("OPEN", intent_id="I-stray", reference=ref(NEWER, 1, 1))
    assert forgetting.feed(late).rejection is not None
    assert forgetting.state.sales[NEWER].intent_id is None


def test_json_round_trip_of_a_forgotten_state() -> None:
    run = forgotten()
    text = run.state.to_json()
    assert CoreState.from_json(text) == run.state
    assert CoreState.from_json(text).to_json() == text
    assert dataclasses.replace(run.state, forgotten_through="") != run.state


def _refund(run: Run, refund_id: str, sale_id: str, amount: int | None) -> None:
    sale = run.state.sales.get(sale_id)
    run.feed(RefundRequested(refund_id, f"lane1:{refund_id}", refund_id, sale_id, amount,
                             "register", None, None if sale is None else facts_of(sale)))


def test_refunds_are_forgotten_with_their_sale_and_keep_an_unfinished_one_alive() -> None:
    run = Run()
    run.feed(*paid(OLD, 1))
    _refund(run, "RF-DONE", OLD, 500)
    run.feed(RefundSent("RF-DONE", "9001", "REFUNDED", 500, "api"))
    run.feed(*paid(KEPT, 2))
    _refund(run, "RF-LIVE", KEPT, 500)  # sent, no answer yet
    _refund(run, "RF-NOSALE", "S0404", 100)  # refused: no such sale
    run.now += 10 * 86400
    result = run.feed(SettledSalesForgotten(run.now - 86400))
    assert result.rejection is None
    book = run.state.refunds
    # OLD and its settled refund go; KEPT stays for its refund in progress; the refusal of
    # a refund of an unknown sale goes once it is as old as the forgotten sales.
    assert set(run.state.sales) == {KEPT}
    assert set(book.refunds) == {"RF-LIVE"}
    assert dict(book.by_sale) == {KEPT: ("RF-LIVE",)}
    assert set(book.by_request.values()) == {"RF-LIVE"}
    # What is forgotten stays forgotten through a snapshot.
    assert CoreState.from_json(run.state.to_json()) == run.state
