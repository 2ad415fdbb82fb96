"""Every (sale state, event) pair: a declared transition or an explicit, harmless rejection."""

from __future__ import annotations

from typing import Any

import pytest

from pointd.core.effects import CreateIntent
from pointd.core.events import (
    EVENT_TYPES,
    AttemptNotFound,
    CancelRefused,
    CancelRequested,
    CreateNotSent,
    CreateOutcomeUnknown,
    CreateRejected,
    Event,
    FoundPayment,
    FraudAlerted,
    HandoverConfirmed,
    IntentCreated,
    ObservationSource,
    OverrideDecision,
    OverrideGiven,
    PaymentNotFound,
    PaymentsFound,
    PaymentVerified,
    RefundableSale,
    RefundNotSent,
    RefundObserved,
    RefundOutcomeUnknown,
    RefundRejected,
    RefundRequested,
    RefundSent,
    RefundTimerExpired,
    SaleRequested,
    SettledSalesForgotten,
    TerminalBusy,
    TimerExpired,
    TimerKind,
)
from pointd.core.machine import TRANSITIONS, CoreState, classify, step
from pointd.core.refunds import REFUND_EVENT_TYPES
from pointd.core.states import FINAL_STATES, IntentState, SaleState
from pointd.core.table import Trigger
from tests.core.scenario import (
    AMOUNT,
    INTENT,
    LANE,
    PAYMENT,
    POLICY,
    REF1,
    SALE,
    SCENARIOS,
    T0,
    check_invariants,
    observed,
    reach_scenario,
    requested,
    verified,
)

NOTIFIED = ObservationSource.NOTIFICATION

VARIANTS: list[Event] = [
    requested(),
    IntentCreated(SALE, 1, INTENT),
    IntentCreated(SALE, 2, INTENT),
    IntentCreated(SALE, 1, "another-intent"),
    CreateNotSent(SALE, 1, "refused"),
    CreateNotSent(SALE, 2, "refused"),
    CreateOutcomeUnknown(SALE, 1, "timeout"),
    TerminalBusy(SALE, 1),
    CreateRejected(SALE, 1, "bad_request"),
    *[observed(s.value, source, PAYMENT if s in ("FINISHED", "CONFIRMATION_REQUIRED") else None)
      for s in IntentState for source in (ObservationSource.POLL, NOTIFIED)],
    observed("finished", payment_id=PAYMENT),
    observed("NOT_A_STATE"),
    observed("OPEN", intent_id="stray-intent"),
    observed("FINISHED", payment_id="22200000000", intent_id="stray-intent"),
    verified(),
    verified(amount=AMOUNT + 1),
    verified(amount=None),
    verified(currency="ARS"),
    verified(collector="1"),
    verified(reference="pd1_other_1_X_1"),
    verified("rejected"),
    verified("cancelled"),
    verified("pending"),
    verified("refunded"),
    verified("charged_back"),
    verified(payment_id="22200000000", reference=REF1),
    PaymentNotFound(PAYMENT),
    PaymentsFound(SALE, 1, (FoundPayment(PAYMENT, "approved", AMOUNT),)),
    PaymentsFound(SALE, 1, ()),
    PaymentsFound(SALE, 1, (FoundPayment(PAYMENT, "approved", AMOUNT),
                            FoundPayment("22200000000", "approved", AMOUNT))),
    AttemptNotFound(SALE, 1),
    AttemptNotFound(SALE, 2),
    AttemptNotFound(SALE, 3),
    FraudAlerted(PAYMENT),
    CancelRequested(SALE, None, "register"),
    CancelRequested(None, LANE, "register"),
    CancelRefused(SALE, "conflict_error"),
    *[TimerExpired(SALE, kind) for kind in TimerKind],
    HandoverConfirmed(SALE),
    OverrideGiven(SALE, OverrideDecision.RELEASE, "customer showed the receipt", 1000),
    OverrideGiven(SALE, OverrideDecision.VOID, "customer left", 1000),
    OverrideGiven(SALE, OverrideDecision.VOID, "  ", 1000),
    SettledSalesForgotten(T0 + 1000),  # later than now: refused (tests/core/test_forget.py)
    # Refund events are decided by pointd.core.refunds; they never change the sale.
    RefundRequested("RF1", "lane1:R1", "R1", SALE, None, "register", None,
                    RefundableSale(SaleState.HANDED_OVER, LANE, "r-1", "PAX", INTENT, PAYMENT,
                                   AMOUNT)),
    RefundSent("RF1", "777", "PENDING", AMOUNT, "terminal"),
    RefundNotSent("RF1", "refused", False),
    RefundOutcomeUnknown("RF1", "timeout"),
    RefundRejected("RF1", "bad_request", None),
    RefundObserved("RF1", "REFUNDED", AMOUNT),
    RefundTimerExpired("RF1"),
]


def test_variants_cover_every_event_type() -> None:
    assert {type(v) for v in VARIANTS} == set(EVENT_TYPES)


def _event_type(trigger: Trigger) -> type[Any]:
    return trigger[0] if isinstance(trigger, tuple) else trigger


def _trigger(before: CoreState, event: Event) -> Trigger | None:
    return classify(before.sales[SALE], event, before, POLICY)[0]


def test_every_table_row_is_keyed_by_a_state_and_an_event_type() -> None:
    for (state, trigger), row in TRANSITIONS.items():
        event_type = _event_type(trigger)
        assert state in SaleState
        assert event_type in EVENT_TYPES
        assert event_type is not SaleRequested  # admission precedes the table
        if state in FINAL_STATES:
            assert row.targets == frozenset(), (state, event_type)


def _is_exact_approval(event: Event) -> bool:
    return (isinstance(event, PaymentVerified) and event.status == "approved"
            and event.amount_cents == AMOUNT and event.currency == POLICY.currency
            and event.collector_id == POLICY.collector_id and event.payment_id == PAYMENT
            and event.external_reference in (None, REF1))


def test_every_declared_transition_is_taken_by_some_start_and_event() -> None:
    declared = {(state, trigger, target) for (state, trigger), row in TRANSITIONS.items()
                for target in row.targets if target is not state}
    taken = set()
    for name in SCENARIOS:
        before = reach_scenario(name)
        start = before.sales[SALE].state
        for event in VARIANTS:
            after = step(before, event, now=T0 + 100, policy=POLICY).state.sales[SALE].state
            if after is not start:
                taken.add((start, _trigger(before, event), after))
    assert taken <= declared
    assert declared - taken == set(), "declared but never taken: drop it from the table"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("event", VARIANTS, ids=lambda e: type(e).__name__)
def test_pair_is_a_declared_transition_or_an_explicit_rejection(
    scenario: str, event: Event
) -> None:
    before = reach_scenario(scenario)
    sale_before = before.sales[SALE]
    start = sale_before.state
    result = step(before, event, now=T0 + 100, policy=POLICY)
    sale_after = result.state.sales[SALE]
    check_invariants(result.state)
    trigger = _trigger(before, event)
    row = None if trigger is None else TRANSITIONS.get((start, trigger))
    if isinstance(event, REFUND_EVENT_TYPES):
        # Decided by pointd.core.refunds: the sale never changes.
        assert sale_after == sale_before
        assert result.state.sales == before.sales
    elif isinstance(event, SaleRequested):
        assert result.rejection is not None
        assert result.state is before
        assert result.effects == ()
    elif row is None or result.sale_id != SALE:
        # A fraud alert for a payment no sale knows yet is recorded for the gate, not
        # rejected; every other event that reaches no table row is rejected.
        recorded = isinstance(event, FraudAlerted) and result.sale_id is None
        assert recorded or result.rejection is not None, "outside the table: rejected"
        assert result.effects == ()
        assert sale_after == sale_before
        if not isinstance(event, FraudAlerted):
            assert result.state == before
    else:
        assert sale_after.state in row.targets | {start}, row.targets
    if result.rejection is not None:
        assert sale_after == sale_before, "a rejection must not change the sale"
    if start in FINAL_STATES:
        assert sale_after == sale_before, "final states never change"
    if sale_after.state is SaleState.APPROVED and start is not SaleState.APPROVED:
        assert _is_exact_approval(event)
    for effect in result.effects:
        if isinstance(effect, CreateIntent):
            assert sale_after.state is SaleState.CREATING
            assert effect.attempt == sale_after.attempt
            assert effect.external_reference == sale_after.reference
            fresh_attempt = isinstance(event, AttemptNotFound) and event.attempt + 1 == (
                effect.attempt)
            resend = isinstance(event, TimerExpired) and start is SaleState.REQUESTED
            assert fresh_attempt or resend, (start, event)
