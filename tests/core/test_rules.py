"""The money-safety rules of architecture.md §2, each attacked with event sequences."""

from __future__ import annotations

import dataclasses

import pytest

from pointd.core.effects import (
    AlertTechnician,
    CreateIntent,
    Effect,
    FetchIntent,
    ReconcileAttempt,
    ScheduleTimer,
    Severity,
    TellRegister,
)
from pointd.core.events import (
    AttemptNotFound,
    CreateNotSent,
    CreateOutcomeUnknown,
    Event,
    FraudAlerted,
    HandoverConfirmed,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    SaleRequested,
    TimerExpired,
    TimerKind,
)
from pointd.core.machine import CoreState, Step, step
from pointd.core.policy import backoff
from pointd.core.states import Refusal, SaleState
from tests.core.scenario import (
    AMOUNT,
    INTENT,
    LANE,
    PAYMENT,
    POLICY,
    REF1,
    SALE,
    STORE,
    T0,
    TERMINAL,
    check_invariants,
    observed,
    reach,
    requested,
    run,
    verified,
)

S = SaleState
N = ObservationSource.NOTIFICATION
P = ObservationSource.POLL


def effects_of(steps: list[Step], kind: type[Effect]) -> list[Effect]:
    return [e for s in steps for e in s.effects if isinstance(e, kind)]


# --- rule 1: handover only on a verified payment ---------------------------------------


def test_an_api_answer_saying_approved_only_starts_verification() -> None:
    answer = IntentObserved(INTENT, "FINISHED", PAYMENT, "approved", P, REF1)
    state, _ = run([*([requested(), IntentCreated(SALE, 1, INTENT)]), answer, answer])
    sale = state.sales[SALE]
    assert sale.state is S.VERIFYING
    assert not sale.may_hand_over
    state, _ = run([HandoverConfirmed(SALE)], state)
    assert state.sales[SALE].state is S.VERIFYING


def test_a_notification_names_no_payment_and_moves_no_sale() -> None:
    body = IntentObserved(INTENT, "FINISHED", PAYMENT, "approved", N, REF1)
    state, steps = run([requested(), IntentCreated(SALE, 1, INTENT), body])
    sale = state.sales[SALE]
    assert (sale.state, sale.payment_id, sale.intent_state) == (S.OPEN, None, "OPEN")
    assert PAYMENT not in state.payments
    assert steps[-1].effects == ()
    assert steps[-1].rejection is not None
    assert steps[-1].sale_id == SALE


@pytest.mark.parametrize("bad", [
    verified(amount=AMOUNT + 1), verified(amount=AMOUNT - 1), verified(amount=None),
    verified(amount=AMOUNT * 100), verified(currency="ARS"), verified(currency="brl"),
    verified(collector="123"), verified(reference="pd1_loja-centro_3_S1_2"),
    verified("approved ", amount=AMOUNT + 1), verified("authorized"), verified("in_mediation"),
    verified("charged_back"), verified("refunded"), verified("weird"),
])
def test_nothing_but_an_exact_approval_reaches_approved(bad: Event) -> None:
    state, _steps = run([bad], reach(S.VERIFYING))
    assert state.sales[SALE].state in (S.HELD, S.ESCALATED)
    assert not state.sales[SALE].may_hand_over


def test_fraud_alert_before_verification_blocks_a_later_approval() -> None:
    state, _ = run([FraudAlerted(PAYMENT)], reach(S.PROCESSING))
    assert state.sales[SALE].state is S.PROCESSING  # payment not linked yet: only recorded
    state, _ = run([observed("FINISHED", payment_id=PAYMENT), verified()], state)
    assert state.sales[SALE].state is S.BLOCKED
    state, steps = run([HandoverConfirmed(SALE)], state)
    assert state.sales[SALE].state is S.BLOCKED
    assert any(a.severity is Severity.CRITICAL  # type: ignore[union-attr]
               for a in effects_of(steps, AlertTechnician))


def test_finished_with_rejected_payment_ends_declined() -> None:
    hint = IntentObserved(INTENT, "FINISHED", PAYMENT, "rejected", ObservationSource.POLL, REF1)
    state, _ = run([hint, verified("rejected")], reach(S.OPEN))
    assert state.sales[SALE].state is S.DECLINED
    assert state.sales[SALE].is_final
    assert not state.lanes


# --- rule 2: CONFIRMATION_REQUIRED holds, backs off, escalates ----------------------------


def test_hold_verifies_with_doubling_back_off_then_escalates_and_keeps_verifying() -> None:
    state = reach(S.HELD)
    sale = state.sales[SALE]
    started = sale.verify_started_at
    assert started is not None
    assert sale.timer_due(TimerKind.ESCALATE) == started + POLICY.confirmation_escalate_after
    delays = []
    now = sale.timer_due(TimerKind.VERIFY)
    assert now is not None
    for _ in range(8):
        result = step(state, TimerExpired(SALE, TimerKind.VERIFY), now=now, policy=POLICY)
        state = result.state
        (timer,) = [e for e in result.effects if isinstance(e, ScheduleTimer)]
        delays.append(timer.at - now)
        now = timer.at
        state = step(state, verified("pending"), now=now, policy=POLICY).state
    assert delays == [backoff(2.0, 60.0, n) for n in range(1, 9)]
    assert delays[-1] == POLICY.verify_max_backoff
    result = step(state, TimerExpired(SALE, TimerKind.ESCALATE), now=now, policy=POLICY)
    assert result.state.sales[SALE].state is S.ESCALATED
    assert any(isinstance(e, AlertTechnician) for e in result.effects)
    assert result.state.sales[SALE].timer_due(TimerKind.VERIFY) is not None
    state = step(result.state, verified(), now=now + 1, policy=POLICY).state
    assert state.sales[SALE].state is S.APPROVED


def test_hold_prompt_is_told_to_the_register() -> None:
    result = step(reach(S.OPEN), observed("CONFIRMATION_REQUIRED", P, PAYMENT), now=T0 + 9,
                  policy=POLICY)
    tells = [e for e in result.effects if isinstance(e, TellRegister)]
    assert [t.state for t in tells] == [S.HELD]
    assert tells[0].payment_id == PAYMENT


# --- rule 3: never charge twice ------------------------------------------------------------


def test_unknown_outcome_never_resends_until_proven_absent() -> None:
    state = reach(S.CREATE_UNKNOWN)
    steps = []
    for n in range(POLICY.create_reconcile_attempts + 3):
        result = step(state, TimerExpired(SALE, TimerKind.RECONCILE), now=T0 + 100 * n,
                      policy=POLICY)
        state = result.state
        steps.append(result)
        for again in (CreateOutcomeUnknown(SALE, 1, "x"), CreateNotSent(SALE, 1, "x"),
                      TimerExpired(SALE, TimerKind.CREATE_RETRY)):
            probe = step(state, again, now=T0 + 100 * n, policy=POLICY)
            assert probe.rejection is not None
            steps.append(probe)
    assert effects_of(steps, CreateIntent) == []
    assert len(effects_of(steps, ReconcileAttempt)) == POLICY.create_reconcile_attempts + 3
    alerts = effects_of(steps, AlertTechnician)
    assert len(alerts) == 1  # exactly once, when the configured rounds are used up
    result = step(state, AttemptNotFound(SALE, 1), now=T0 + 5000, policy=POLICY)
    (create,) = [e for e in result.effects if isinstance(e, CreateIntent)]
    assert create.attempt == 2
    assert create.external_reference == f"pd1_{STORE}_{LANE}_{SALE}_2"
    assert result.state.sales[SALE].timer_due(TimerKind.RECONCILE) is None


def test_reconciliation_finding_the_intent_adopts_it_without_a_new_create() -> None:
    for found in (IntentCreated(SALE, 1, INTENT),
                  observed("ON_TERMINAL", ObservationSource.RECONCILIATION)):
        state, steps = run([found], reach(S.CREATE_UNKNOWN))
        assert state.sales[SALE].intent_id == INTENT
        assert state.sales[SALE].state in (S.OPEN, S.ON_TERMINAL)
        assert effects_of(steps, CreateIntent) == []


def test_proof_for_another_attempt_is_not_proof() -> None:
    state, steps = run([AttemptNotFound(SALE, 2), AttemptNotFound(SALE, 0)],
                       reach(S.CREATE_UNKNOWN))
    assert state.sales[SALE].state is S.CREATE_UNKNOWN
    assert effects_of(steps, CreateIntent) == []


def test_attempts_stop_at_the_configured_maximum() -> None:
    state = reach(S.CREATE_UNKNOWN)
    creates = []
    for attempt in range(1, POLICY.max_create_attempts + 1):
        state, steps = run([AttemptNotFound(SALE, attempt)], state)
        creates += effects_of(steps, CreateIntent)
        if not state.sales[SALE].is_final:
            state, _ = run([CreateOutcomeUnknown(SALE, attempt + 1, "timeout")], state)
    assert [c.attempt for c in creates] == list(range(2, POLICY.max_create_attempts + 1))
    assert state.sales[SALE].state is S.FAILED
    assert state.sales[SALE].refusal is Refusal.CLOUD_UNAVAILABLE


def test_intent_of_a_disproven_attempt_raises_a_critical_alert() -> None:
    state, _ = run([AttemptNotFound(SALE, 1)], reach(S.CREATE_UNKNOWN))
    stray = observed("FINISHED", payment_id=PAYMENT, intent_id="late-intent")
    state, steps = run([stray], state)
    assert state.sales[SALE].intent_id is None
    alerts = effects_of(steps, AlertTechnician)
    assert alerts
    assert alerts[0].severity is Severity.CRITICAL


def test_not_sent_resends_the_same_attempt_a_bounded_number_of_times() -> None:
    state = reach(S.CREATING)
    creates = []
    for _ in range(POLICY.max_create_sends + 2):
        state, steps = run([CreateNotSent(SALE, state.sales[SALE].attempt, "refused"),
                            TimerExpired(SALE, TimerKind.CREATE_RETRY)], state)
        creates += effects_of(steps, CreateIntent)
    assert {c.external_reference for c in creates} == {REF1}  # type: ignore[union-attr]
    assert len(creates) == POLICY.max_create_sends - 1
    assert state.sales[SALE].state is S.FAILED
    assert state.sales[SALE].refusal is Refusal.CLOUD_UNAVAILABLE


def test_cancel_while_create_is_in_flight_cancels_the_intent_once_known() -> None:
    state, steps = run([requested(), _cancel(), IntentCreated(SALE, 1, INTENT)])
    assert state.sales[SALE].state is S.CANCELING
    assert [type(e).__name__ for e in steps[-1].effects][-1] == "CancelIntent"
    state, _ = run([requested("S2", lane=4, terminal="T2"), _cancel("S2"),
                    CreateOutcomeUnknown("S2", 1, "t"), AttemptNotFound("S2", 1)], state)
    assert state.sales["S2"].state is S.CANCELED


def _cancel(sale_id: str = SALE) -> Event:
    from pointd.core.events import CancelRequested

    return CancelRequested(sale_id, None, "register")


# --- rule 4: one live intent per terminal, one sale per lane ------------------------------


@pytest.mark.parametrize(("event", "refusal"), [
    (requested("S2"), Refusal.LANE_BUSY),
    (requested("S2", lane=LANE + 1), Refusal.TERMINAL_BUSY),
    (SaleRequested("S2", LANE + 1, "c", AMOUNT, "OTHER", Refusal.TERMINAL_NOT_PDV),
     Refusal.TERMINAL_NOT_PDV),
])
@pytest.mark.parametrize("start", [S.REQUESTED, S.CREATING, S.CREATE_UNKNOWN, S.OPEN,
                                   S.ON_TERMINAL, S.PROCESSING, S.CANCELING])
def test_busy_lane_or_terminal_refuses_without_a_create(
    start: SaleState, event: SaleRequested, refusal: Refusal
) -> None:
    result = step(reach(start), event, now=T0 + 50, policy=POLICY)
    assert [type(e).__name__ for e in result.effects] == ["TellRegister"]
    tell = result.effects[0]
    assert isinstance(tell, TellRegister)
    assert (tell.state, tell.refusal, tell.sale_id) == (S.FAILED, refusal, "S2")
    assert result.state.sales["S2"].state is S.FAILED
    assert result.state.lanes[LANE] == SALE
    check_invariants(result.state)


def test_terminal_is_free_once_the_intent_ended_but_the_lane_is_not() -> None:
    state = reach(S.HELD)
    state, steps = run([requested("S2", lane=LANE + 1), requested("S3")], state)
    assert state.sales["S2"].state is S.CREATING
    assert state.sales["S3"].refusal is Refusal.LANE_BUSY
    assert len(effects_of(steps, CreateIntent)) == 1


def test_repeated_request_is_answered_with_the_existing_sale() -> None:
    state = reach(S.OPEN)
    result = step(state, requested("S9", correlation=f"c-{SALE}"), now=T0 + 5, policy=POLICY)
    assert result.rejection is not None
    assert "S9" not in result.state.sales
    (tell,) = result.effects
    assert isinstance(tell, TellRegister)
    assert (tell.sale_id, tell.state) == (SALE, S.OPEN)


@pytest.mark.parametrize(("event", "refusal"), [
    (requested(amount=0), Refusal.AMOUNT_OUT_OF_RANGE),
    (requested(amount=-5), Refusal.AMOUNT_OUT_OF_RANGE),
    (requested(amount=POLICY.min_amount_cents - 1), Refusal.AMOUNT_OUT_OF_RANGE),
    (requested(amount=POLICY.max_amount_cents + 1), Refusal.AMOUNT_OUT_OF_RANGE),
    (dataclasses.replace(requested(), amount_cents=True), Refusal.AMOUNT_OUT_OF_RANGE),
    (dataclasses.replace(requested(), amount_cents=15.0), Refusal.AMOUNT_OUT_OF_RANGE),
    (requested(lane=0), Refusal.INVALID_REQUEST),
    (requested(lane=1000), Refusal.INVALID_REQUEST),
    (requested(terminal=""), Refusal.TERMINAL_UNKNOWN),
    *[(dataclasses.replace(requested(), terminal_ok=r), r) for r in Refusal],
])
def test_admission_refusals(event: SaleRequested, refusal: Refusal) -> None:
    result = step(CoreState.empty(STORE), event, now=T0, policy=POLICY)
    assert result.rejection is None
    assert result.state.sales[SALE].state is S.FAILED
    assert result.state.sales[SALE].refusal is refusal
    assert [type(e).__name__ for e in result.effects] == ["TellRegister"]
    assert not result.state.lanes
    assert not result.state.terminals


def test_malformed_sale_id_is_refused_without_a_record() -> None:
    result = step(CoreState.empty(STORE), requested("bad id"), now=T0, policy=POLICY)
    assert result.rejection is not None
    assert not result.state.sales
    (tell,) = result.effects
    assert isinstance(tell, TellRegister)
    assert tell.refusal is Refusal.INVALID_REQUEST


def test_boundary_amounts_are_accepted() -> None:
    for amount in (POLICY.min_amount_cents, POLICY.max_amount_cents):
        result = step(CoreState.empty(STORE), requested(amount=amount), now=T0, policy=POLICY)
        assert result.state.sales[SALE].state is S.CREATING


# --- rule 5: stale, duplicate and out-of-order observations -------------------------------


@pytest.mark.parametrize("late", ["OPEN", "ON_TERMINAL", "PROCESSING", "PROCESSED",
                                  "FINISHED", "CANCELED", "ERROR"])
def test_nothing_moves_a_verifying_sale_backwards(late: str) -> None:
    for source in ObservationSource:
        result = step(reach(S.VERIFYING), observed(late, source, PAYMENT), now=T0 + 60,
                      policy=POLICY)
        assert result.state.sales[SALE].state is S.VERIFYING
        assert result.rejection is not None
        assert result.effects == ()


def test_out_of_order_progress_keeps_the_highest_state() -> None:
    state, steps = run([observed("PROCESSING"), observed("ON_TERMINAL"),
                        observed("OPEN"), observed("PROCESSING")], reach(S.OPEN))
    assert state.sales[SALE].state is S.PROCESSING
    assert [s.rejection is None for s in steps] == [True, False, False, False]


# --- rule 6: polling fallback and abandon, truth from the API ------------------------------


def test_poll_timer_armed_rearmed_and_kept_by_answers_showing_progress() -> None:
    state = reach(S.OPEN)
    created_at = state.sales[SALE].updated_at
    assert state.sales[SALE].timer_due(TimerKind.POLL) == created_at + POLICY.poll_fallback_after
    result = step(state, TimerExpired(SALE, TimerKind.POLL), now=T0 + 500, policy=POLICY)
    assert [type(e) for e in result.effects] == [FetchIntent, ScheduleTimer]
    assert result.state.sales[SALE].timer_due(TimerKind.POLL) == (
        T0 + 500 + POLICY.poll_fallback_after)
    result = step(result.state, observed("ON_TERMINAL"), now=T0 + 503, policy=POLICY)
    assert result.state.sales[SALE].timer_due(TimerKind.POLL) == (
        T0 + 500 + POLICY.poll_fallback_after)


def test_abandon_is_never_a_local_guess() -> None:
    state = reach(S.OPEN)
    result = step(state, TimerExpired(SALE, TimerKind.ABANDON), now=T0 + 2000, policy=POLICY)
    assert result.state.sales[SALE].state is S.OPEN
    assert [type(e) for e in result.effects] == [FetchIntent]
    hint = step(result.state, observed("ABANDONED", N), now=T0 + 2001, policy=POLICY)
    assert hint.state.sales[SALE].state is S.OPEN
    truth = step(hint.state, observed("ABANDONED"), now=T0 + 2002, policy=POLICY)
    assert truth.state.sales[SALE].state is S.ABANDONED


def test_lane_and_terminal_are_released_by_every_final_state() -> None:
    for final in (S.HANDED_OVER, S.DECLINED, S.CANCELED, S.FAILED, S.ABANDONED, S.OVERRIDDEN):
        state = reach(final)
        assert not state.lanes
        assert not state.terminals
        result = step(state, requested("S2", terminal=TERMINAL), now=T0 + 99, policy=POLICY)
        assert result.state.sales["S2"].state is S.CREATING
