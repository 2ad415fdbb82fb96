"""Recovery after a restart from every state, and the orphan-intent decision table."""

from __future__ import annotations

import dataclasses

import pytest

from pointd.core.effects import (
    CancelIntent,
    CreateIntent,
    Effect,
    Notice,
    ReconcileAttempt,
    ScheduleTimer,
    TellRegister,
)
from pointd.core.events import (
    AttemptNotFound,
    FraudAlerted,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    TimerExpired,
    TimerKind,
)
from pointd.core.machine import CoreState, step, telling
from pointd.core.recovery import OrphanDecision, orphan_decision, recover
from pointd.core.states import FINAL_STATES, Refusal, SaleState
from tests.core.golden import golden, rendered
from tests.core.scenario import (
    INTENT,
    PAYMENT,
    POLICY,
    REF1,
    SALE,
    STORE,
    T0,
    reach,
    requested,
    run,
)

S = SaleState
LATER = T0 + 3600

EXPECTED: dict[SaleState, tuple[str, ...]] = {
    S.REQUESTED: ("TellRegister", "ScheduleTimer"),
    S.CREATING: ("TellRegister", "ReconcileAttempt", "ScheduleTimer"),
    S.CREATE_UNKNOWN: ("TellRegister", "ReconcileAttempt", "ScheduleTimer"),
    S.OPEN: ("TellRegister", "FetchIntent", "ScheduleTimer", "ScheduleTimer"),
    S.ON_TERMINAL: ("TellRegister", "FetchIntent", "ScheduleTimer"),
    S.PROCESSING: ("TellRegister", "FetchIntent", "ScheduleTimer"),
    S.CANCELING: ("TellRegister", "FetchIntent", "ScheduleTimer"),
    S.VERIFYING: ("TellRegister", "FetchPayment", "ScheduleTimer", "ScheduleTimer"),
    S.HELD: ("TellRegister", "FetchPayment", "ScheduleTimer", "ScheduleTimer"),
    S.ESCALATED: ("TellRegister", "FetchPayment", "ScheduleTimer"),
    S.APPROVED: ("TellRegister", "ScheduleTimer"),
    S.BLOCKED: ("TellRegister",),
}


def test_every_unfinished_state_has_a_recovery() -> None:
    assert set(EXPECTED) == set(SaleState) - FINAL_STATES


def golden_rows() -> list[tuple[str, tuple[Effect, ...]]]:
    """Each state's recovery effects as the core returns them (tests/core/golden.py)."""
    return [(state.value, tuple(recover(reach(state), LATER, POLICY))) for state in EXPECTED]


GOLDEN_EFFECTS = golden("recovery")


@pytest.mark.parametrize("state", list(EXPECTED), ids=lambda s: s.value)
def test_recovery_re_establishes_truth_and_re_tells_the_register(state: SaleState) -> None:
    effects = recover(reach(state), LATER, POLICY)
    assert tuple(type(e).__name__ for e in effects) == EXPECTED[state]
    assert rendered(effects) == GOLDEN_EFFECTS[state.value]
    tell = effects[0]
    assert isinstance(tell, TellRegister)
    assert tell.state is state
    assert not any(isinstance(e, CreateIntent | CancelIntent) for e in effects)
    for effect in effects:
        if isinstance(effect, ScheduleTimer):
            assert effect.kind in _owned(state)


def _owned(state: SaleState) -> frozenset[TimerKind]:
    from pointd.core.machine import OWNED_TIMERS

    return OWNED_TIMERS[state]


@pytest.mark.parametrize("state", sorted(FINAL_STATES), ids=lambda s: s.value)
def test_a_sale_that_ended_lately_is_only_told_again(state: SaleState) -> None:
    # Its RESULT may have died with the process; nothing is asked of the API, no timer runs.
    ended = reach(state)
    effects = recover(ended, ended.sales[SALE].updated_at + POLICY.sale_retry_window, POLICY)
    if state is S.HANDED_OVER:  # the register's HANDOVER_DONE proves it had the RESULT
        assert effects == ()
    else:
        assert effects == (telling(ended.sales[SALE]),)


@pytest.mark.parametrize("state", sorted(FINAL_STATES), ids=lambda s: s.value)
def test_a_sale_that_ended_before_the_retry_window_needs_no_recovery(state: SaleState) -> None:
    ended = reach(state)
    later = ended.sales[SALE].updated_at + POLICY.sale_retry_window + 1
    assert recover(ended, later, POLICY) == ()


def test_only_each_lanes_latest_ended_sale_is_told_again() -> None:
    first = reach(S.DECLINED)
    second, _ = run([requested("S2", amount=1600)], first, now=T0 + 60)
    assert second.sales["S2"].state is S.CREATING
    told = [e for e in recover(second, T0 + 70, POLICY) if isinstance(e, TellRegister)]
    assert [tell.sale_id for tell in told] == ["S2"]


def test_a_refusal_behind_a_held_sale_is_told_again_after_it() -> None:
    # Simulation seed 1089 (before the fix): a SALE refused LANE_BUSY while the lane's sale
    # was held; the daemon died between the refusal's DISPLAY and its RESULT, and the
    # register, which did not notice the restart, waited for that RESULT.
    held = reach(S.HELD)
    refused, steps = run([requested("S2", amount=1600)], held, now=T0 + 500)
    assert steps[0].state.sales["S2"].refusal is Refusal.LANE_BUSY
    told = [e for e in recover(refused, T0 + 600, POLICY) if isinstance(e, TellRegister)]
    assert [(tell.sale_id, tell.state, tell.refusal) for tell in told] == [
        (SALE, S.HELD, None), ("S2", S.FAILED, Refusal.LANE_BUSY)]


def test_hold_survives_a_restart_with_its_original_escalation_time() -> None:
    state = reach(S.HELD)
    due = state.sales[SALE].timer_due(TimerKind.ESCALATE)
    effects = recover(state, LATER, POLICY)
    timers = {e.kind: e.at for e in effects if isinstance(e, ScheduleTimer)}
    assert timers[TimerKind.ESCALATE] == due
    assert timers[TimerKind.VERIFY] <= LATER + POLICY.verify_initial_backoff
    assert effects[0] == TellRegister(3, f"c-{SALE}", SALE, S.HELD, None, PAYMENT, 1500)


def test_an_approved_sale_keeps_its_handover_deadline_or_gets_one() -> None:
    state = reach(S.APPROVED)
    due = state.sales[SALE].timer_due(TimerKind.HANDOVER)
    assert due is not None
    [timer] = [e for e in recover(state, LATER, POLICY) if isinstance(e, ScheduleTimer)]
    assert (timer.kind, timer.at) == (TimerKind.HANDOVER, due)
    # A journal written before the timer existed: the lane waits the full time from now.
    old = dataclasses.replace(state, sales=state.sales.set(
        SALE, dataclasses.replace(state.sales[SALE], timers=())))
    [timer] = [e for e in recover(old, LATER, POLICY) if isinstance(e, ScheduleTimer)]
    assert timer.at == LATER + POLICY.handover_confirm_after


def test_a_withdrawn_approval_and_an_unresolved_create_are_told_again() -> None:
    blocked, _ = run([FraudAlerted(PAYMENT)], reach(S.APPROVED), now=T0 + 50)
    tell = recover(blocked, LATER, POLICY)[0]
    assert isinstance(tell, TellRegister)
    assert (tell.state, tell.approval_withdrawn) == (S.BLOCKED, True)
    unresolved, _ = run([TimerExpired(SALE, TimerKind.RECONCILE)]
                        * POLICY.create_reconcile_attempts, reach(S.CREATE_UNKNOWN),
                        now=T0 + 50)
    tell = recover(unresolved, LATER, POLICY)[0]
    assert isinstance(tell, TellRegister)
    assert (tell.state, tell.notice) == (S.CREATE_UNKNOWN, Notice.CREATE_UNRESOLVED)
    assert recover(reach(S.CREATE_UNKNOWN), LATER, POLICY)[0].notice is None  # type: ignore[union-attr]


def test_a_creating_sale_is_reconciled_like_an_unknown_outcome() -> None:
    state = reach(S.CREATING)
    (reconcile,) = [e for e in recover(state, LATER, POLICY) if isinstance(e, ReconcileAttempt)]
    assert (reconcile.attempt, reconcile.external_reference) == (1, REF1)
    assert reconcile.since == state.sales[SALE].attempt_started_at
    # Every answer reconciliation can give is accepted in CREATING.
    adopted, _ = run([IntentCreated(SALE, 1, INTENT)], state)
    assert adopted.sales[SALE].state is S.OPEN
    _retried, steps = run([AttemptNotFound(SALE, 1)], state)
    assert [e.attempt for e in steps[0].effects if isinstance(e, CreateIntent)] == [2]
    silent = step(state, TimerExpired(SALE, TimerKind.RECONCILE), now=LATER, policy=POLICY)
    assert silent.state.sales[SALE].state is S.CREATE_UNKNOWN
    assert any(isinstance(e, ReconcileAttempt) for e in silent.effects)


def _intent(state: str, reference: str | None, intent_id: str = "orphan-1") -> IntentObserved:
    return IntentObserved(intent_id, state, None, None, ObservationSource.RECOVERY, reference)


@pytest.mark.parametrize(("known", "intent", "decision"), [
    (CoreState.empty(STORE), _intent("OPEN", None), OrphanDecision.CANCEL),
    (CoreState.empty(STORE), _intent("open", "information"), OrphanDecision.CANCEL),
    (CoreState.empty(STORE), _intent("ON_TERMINAL", None), OrphanDecision.IGNORE),
    (CoreState.empty(STORE), _intent("PROCESSING", REF1), OrphanDecision.IGNORE),
    (CoreState.empty(STORE), _intent("FINISHED", REF1), OrphanDecision.IGNORE),
    (CoreState.empty(STORE), _intent("OPEN", REF1), OrphanDecision.CANCEL),
    (reach(S.CREATING), _intent("OPEN", REF1), OrphanDecision.ADOPT),
    (reach(S.CREATE_UNKNOWN), _intent("ON_TERMINAL", REF1), OrphanDecision.ADOPT),
    (reach(S.CREATE_UNKNOWN), _intent("FINISHED", REF1), OrphanDecision.ADOPT),
    (reach(S.CREATE_UNKNOWN), _intent("OPEN", REF1.replace("_1", "_2")), OrphanDecision.CANCEL),
    (reach(S.CREATE_UNKNOWN), _intent("OPEN", REF1.replace("loja-centro", "outra")),
     OrphanDecision.CANCEL),
    (reach(S.OPEN), _intent("OPEN", REF1, INTENT), OrphanDecision.IGNORE),
    (reach(S.OPEN), _intent("OPEN", REF1), OrphanDecision.CANCEL),
    (reach(S.CANCELED), _intent("OPEN", REF1, INTENT), OrphanDecision.CANCEL),
    (reach(S.HANDED_OVER), _intent("FINISHED", REF1, INTENT), OrphanDecision.IGNORE),
    (reach(S.REQUESTED), _intent("OPEN", REF1), OrphanDecision.CANCEL),
])
def test_orphan_decision(known: CoreState, intent: IntentObserved,
                         decision: OrphanDecision) -> None:
    assert orphan_decision(intent, known) is decision
