"""What the core promises the register: no lane locked for ever, withdrawn approvals, escalation.

The register protocol (docs/register-protocol.md §6 and §7) rests on these decisions; the
session turns them into WITHDRAW, HOLD and DISPLAY messages (tests/register).
"""

from __future__ import annotations

import pytest

from pointd.core.effects import AlertTechnician, Notice, Severity, TellRegister
from pointd.core.events import (
    FraudAlerted,
    HandoverConfirmed,
    OverrideDecision,
    OverrideGiven,
    TimerExpired,
    TimerKind,
)
from pointd.core.machine import is_retry, step
from pointd.core.states import SaleState
from tests.core.scenario import (
    LANE,
    PAYMENT,
    POLICY,
    SALE,
    T0,
    TERMINAL,
    reach,
    requested,
    run,
    verified,
)

S = SaleState


def tells(steps: list) -> list[TellRegister]:  # type: ignore[type-arg]
    return [e for s in steps for e in s.effects if isinstance(e, TellRegister)]


def test_an_approved_sale_holds_its_lane_until_handover_done_at_most_the_policy_time() -> None:
    state = reach(S.APPROVED)
    sale = state.sales[SALE]
    assert sale.timer_due(TimerKind.HANDOVER) == sale.updated_at + POLICY.handover_confirm_after
    busy = step(state, requested("S2", terminal="T-other"), now=T0 + 60, policy=POLICY)
    assert busy.state.sales["S2"].refusal is not None

    expired, steps = run([TimerExpired(SALE, TimerKind.HANDOVER)], state, now=T0 + 200)
    sale = expired.sales[SALE]
    assert (sale.state, sale.is_final, sale.may_hand_over) == (S.HANDOVER_UNCONFIRMED, True,
                                                               True)
    assert expired.sale_on_lane(LANE) is None
    [alert] = [e for e in steps[0].effects if isinstance(e, AlertTechnician)]
    assert alert.severity is Severity.WARNING
    assert "HANDOVER_DONE" in alert.message
    admitted = step(expired, requested("S2", terminal=TERMINAL), now=T0 + 201, policy=POLICY)
    assert admitted.state.sales["S2"].state is S.CREATING


def test_handover_done_ends_the_wait_and_a_late_one_is_no_alarm() -> None:
    done, _steps = run([HandoverConfirmed(SALE)], reach(S.APPROVED), now=T0 + 30)
    assert done.sales[SALE].state is S.HANDED_OVER
    assert done.sales[SALE].timers == ()
    closed, _ = run([TimerExpired(SALE, TimerKind.HANDOVER)], reach(S.APPROVED), now=T0 + 200)
    late = step(closed, HandoverConfirmed(SALE), now=T0 + 300, policy=POLICY)
    assert late.state == closed
    assert [e.severity for e in late.effects if isinstance(e, AlertTechnician)] == [
        Severity.INFO]


@pytest.mark.parametrize(("event", "after"), [
    (FraudAlerted(PAYMENT), S.BLOCKED),
    (verified("refunded"), S.ESCALATED),
    (verified("charged_back"), S.ESCALATED),
    (verified("in_mediation"), S.ESCALATED),
    (verified("cancelled"), S.DECLINED),
])
def test_an_approval_that_stops_holding_before_handover_is_withdrawn(event: object,
                                                                     after: SaleState) -> None:
    state, steps = run([event], reach(S.APPROVED), now=T0 + 40)  # type: ignore[list-item]
    sale = state.sales[SALE]
    assert (sale.state, sale.approval_withdrawn, sale.may_hand_over) == (after, True, False)
    assert [(t.state, t.approval_withdrawn) for t in tells(steps)] == [(after, True)]
    if not sale.is_final:
        assert state.sale_on_lane(LANE) is not None  # still the register's open sale


def test_a_new_approval_or_a_release_ends_the_withdrawal() -> None:
    escalated, _ = run([verified("refunded")], reach(S.APPROVED), now=T0 + 40)
    again, steps = run([verified()], escalated, now=T0 + 50)
    assert (again.sales[SALE].state, again.sales[SALE].approval_withdrawn) == (S.APPROVED,
                                                                              False)
    assert again.sales[SALE].timer_due(TimerKind.HANDOVER) is not None
    assert [t.approval_withdrawn for t in tells(steps)] == [False]
    blocked, _ = run([FraudAlerted(PAYMENT)], reach(S.APPROVED), now=T0 + 40)
    released, steps = run([OverrideGiven(SALE, OverrideDecision.RELEASE, "checked", 0)],
                          blocked, now=T0 + 50)
    assert released.sales[SALE].approval_withdrawn is False
    assert [t.state for t in tells(steps)] == [S.OVERRIDDEN]


def test_handed_over_goods_are_not_withdrawn() -> None:
    done, steps = run([HandoverConfirmed(SALE), FraudAlerted(PAYMENT)], reach(S.APPROVED),
                      now=T0 + 30)
    assert done.sales[SALE].state is S.HANDED_OVER
    assert not done.sales[SALE].approval_withdrawn
    assert [e.severity for e in steps[1].effects if isinstance(e, AlertTechnician)] == [
        Severity.CRITICAL]


def test_an_unresolved_create_is_escalated_to_the_register_once() -> None:
    state = reach(S.CREATE_UNKNOWN)
    rounds = POLICY.create_reconcile_attempts
    state, steps = run([TimerExpired(SALE, TimerKind.RECONCILE)] * (rounds + 2), state,
                       now=T0 + 10)
    told = tells(steps)
    assert [(t.state, t.notice) for t in told] == [(S.CREATE_UNKNOWN, Notice.CREATE_UNRESOLVED)]
    assert [s for s in steps if tells([s])] == [steps[rounds - 1]]
    assert state.sales[SALE].state is S.CREATE_UNKNOWN  # and it keeps reconciling
    assert "supervisor" in state.sales[SALE].detail


def test_a_repeat_is_a_retry_while_in_progress_and_shortly_after_the_end_only() -> None:
    in_progress = reach(S.OPEN).sales[SALE]
    assert is_retry(in_progress, T0 + 10 * POLICY.sale_retry_window, POLICY)
    ended = reach(S.DECLINED).sales[SALE]
    assert is_retry(ended, ended.updated_at + POLICY.sale_retry_window, POLICY)
    assert not is_retry(ended, ended.updated_at + POLICY.sale_retry_window + 1, POLICY)
    assert not is_retry(ended, ended.updated_at + 3 * 86400, POLICY)  # days later
