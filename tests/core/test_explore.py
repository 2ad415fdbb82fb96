"""The exhaustive explorer: the tables in force break no rule, and a broken rule is caught."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from pointd.core import answers, explore, machine
from pointd.core.events import (
    IntentObserved,
    ObservationSource,
    PaymentVerified,
    TimerExpired,
    TimerKind,
)
from pointd.core.gate import Verdict
from pointd.core.machine import LIVE_INTENT_STATES, SaleTx
from pointd.core.persistent import PersistentMap
from pointd.core.policy import Policy
from pointd.core.records import CoreState, Sale
from pointd.core.states import HANDOVER_ALLOWED_STATES, IntentState, SaleState
from pointd.core.table import Step, Transition, Trigger

S = SaleState


def doctored(rows: Iterable[tuple[SaleState, Trigger, Callable[[SaleTx, Any], None],
                                  Iterable[SaleState]]]) -> explore.Tables:
    """The sale table in force with these rows replaced (a copy: the real one is untouched)."""
    table: dict[tuple[Any, Trigger], Transition[Sale]] = dict(machine.TRANSITIONS)
    for state, trigger, handler, targets in rows:
        assert (state, trigger) in table, "a doctored row must replace a real one"
        table[state, trigger] = Transition(handler, frozenset(targets))
    return explore.Tables(sales=table)


def _trust_the_notification(tx: SaleTx, event: IntentObserved) -> None:
    tx.update(payment_id=event.payment_id, approved_payment_id=event.payment_id)
    tx.move(S.APPROVED)
    tx.schedule(TimerKind.HANDOVER, tx.policy.handover_confirm_after)


def _next_attempt_after_an_unknown_one(tx: SaleTx, event: TimerExpired) -> None:
    tx.fired(TimerKind.RECONCILE)
    s = tx.record
    tx.update(attempt=s.attempt + 1, reference=f"pd1_{tx.core.store_id}_{s.lane}_{s.sale_id}_"
              f"{s.attempt + 1}", sends=1)
    machine._send_attempt(tx)


NOTIFIED = (IntentObserved, ObservationSource.NOTIFICATION)
BREAKS = {
    "trust a notification's payment id": (doctored(
        (state, NOTIFIED, _trust_the_notification, [S.APPROVED])
        for state in LIVE_INTENT_STATES), "handover"),
    "release on WAIT": (doctored([
        (S.VERIFYING, (PaymentVerified, Verdict.WAIT), machine._release,
         [S.APPROVED])]), "handover"),
    "a second create after an unknown one": (doctored([
        (S.CREATE_UNKNOWN, (TimerExpired, TimerKind.RECONCILE),
         _next_attempt_after_an_unknown_one, [S.CREATING])]), "create"),
    "a handler that leaves its row's targets": (doctored([
        (S.OPEN, (IntentObserved, IntentState.ON_TERMINAL), machine._observe_live,
         [])]), "table"),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_each_broken_rule_is_reported_with_a_replayable_counterexample(name: str) -> None:
    tables, rule = BREAKS[name]
    report = explore.explore(4, tables=tables)
    violation = report.violation
    assert violation is not None, f"{name}: not caught"
    assert violation.rule == rule, violation.report()
    # The counterexample replays as a test: it breaks the doctored table, not the real one.
    assert [v.rule for v in explore.replay(violation.path, tables=tables)] == [rule]
    assert explore.replay(violation.path) == []
    assert "explore.replay(moves)" in violation.report()


# --- STATUS and admission: the core's answers and admission, doctored ----------------------

Status = Callable[[CoreState, int, str], answers.SaleStanding]
Admit = Callable[[CoreState, Any, float, Policy], Step]
real_status: Status = answers.status
real_admit: Admit = machine._admit


def _handover_from_the_state_alone(core: CoreState, lane: int, cid: str) -> answers.SaleStanding:
    # What the register session answered before the core did: the state, not the proof.
    standing = real_status(core, lane, cid)
    return dataclasses.replace(standing, handover=standing.state in HANDOVER_ALLOWED_STATES)


def _unknown_id_names_the_sale_in_progress(core: CoreState, lane: int,
                                           cid: str) -> answers.SaleStanding:
    standing = real_status(core, lane, cid)
    sale = core.sale_on_lane(lane)
    if standing.state is None and sale is not None:
        return real_status(core, lane, sale.correlation_id)
    return standing


def _id_looked_up_on_every_lane(core: CoreState, lane: int, cid: str) -> answers.SaleStanding:
    newest = max((s for s in core.sales.values() if s.correlation_id == cid),
                 key=lambda s: (s.requested_at, s.sale_id), default=None)
    return real_status(core, lane if newest is None else newest.lane, cid)


def _final_state_told_as_processing(core: CoreState, lane: int,
                                    cid: str) -> answers.SaleStanding:
    standing = real_status(core, lane, cid)
    sale = core.sale_of_request(lane, cid)
    if sale is not None and sale.is_final:
        return dataclasses.replace(standing, state=S.PROCESSING, handover=False)
    return standing


def _admit_on_a_held_terminal(core: CoreState, event: Any, now: float, policy: Policy) -> Step:
    return real_admit(dataclasses.replace(core, terminals=PersistentMap()), event, now, policy)


def _admit_on_a_busy_lane(core: CoreState, event: Any, now: float, policy: Policy) -> Step:
    return real_admit(dataclasses.replace(core, lanes=PersistentMap()), event, now, policy)


STATUS_BREAKS: dict[str, Status] = {
    "an unknown id answered with the sale in progress": _unknown_id_names_the_sale_in_progress,
    "an id answered with another lane's sale": _id_looked_up_on_every_lane,
    "a final state told as processing": _final_state_told_as_processing,
}
# Each with the SALE that is wrongly admitted.
ADMISSION_BREAKS: dict[str, tuple[Admit, str]] = {
    "a sale admitted on a terminal another lane's sale holds": (
        _admit_on_a_held_terminal, "lane 2: sale, terminal held"),
    "a second sale admitted on a busy lane": (_admit_on_a_busy_lane, "register: another sale"),
}


def _caught(monkeypatch: pytest.MonkeyPatch, rule: str) -> explore.Violation:
    report = explore.explore(4)
    violation = report.violation
    assert violation is not None, "not caught"
    assert violation.rule == rule, violation.report()
    assert [v.rule for v in explore.replay(violation.path)] == [rule]
    monkeypatch.undo()
    assert explore.replay(violation.path) == []
    return violation


@pytest.mark.parametrize("name", list(STATUS_BREAKS))
def test_each_wrong_status_answer_is_reported_with_a_counterexample(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(answers, "status", STATUS_BREAKS[name])
    violation = _caught(monkeypatch, "status")
    assert "STATUS" in violation.detail


@pytest.mark.parametrize("name", list(ADMISSION_BREAKS))
def test_each_broken_admission_is_reported_with_a_counterexample(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    admit, second_sale = ADMISSION_BREAKS[name]
    monkeypatch.setattr(machine, "_admit", admit)
    violation = _caught(monkeypatch, "admission")
    assert violation.path[0] == "register: sale"
    assert violation.path[-1] == second_sale


# The explorer found this at depth 7 when STATUS joined its alphabet: the register session
# answered handover=yes from the state alone, and the checkout HANDOVER_CHECK from the
# record alone, so a sale closed as handover_unconfirmed kept saying yes after a fraud alert
# named its payment.
LATE_FRAUD_ALERT = ["register: sale", "create: created", "api: intent FINISHED",
                    "payment: approved", "timer: S1 handover", "fraud: this payment"]


def test_handover_yes_from_the_state_alone_is_caught_after_a_late_fraud_alert(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moves = [*LATE_FRAUD_ALERT, "register: status"]
    assert explore.replay(moves) == []
    monkeypatch.setattr(answers, "status", _handover_from_the_state_alone)
    [violation] = explore.replay(moves)
    assert violation.rule == "status"
    assert "handover_unconfirmed handover=yes" in violation.detail


def test_a_handover_check_from_the_record_alone_is_caught_after_a_late_fraud_alert(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moves = [*LATE_FRAUD_ALERT, "register: handover check"]
    assert explore.replay(moves) == []
    monkeypatch.setattr(answers, "goods_may_leave", lambda core, sale: sale.may_hand_over)
    [violation] = explore.replay(moves)
    assert violation.rule == "handover"
    assert "HANDOVER_CHECK c1 says allowed=yes" in violation.detail


def test_the_restart_reconcile_race_found_by_the_explorer_stays_fixed() -> None:
    # After a restart, recovery arms a CREATING sale's RECONCILE timer in the engine only.
    # The sale's AttemptNotFound row used to leave it armed; it then fired while the next
    # attempt's create was in flight and let a third attempt follow a second that may be
    # charged. The old row, put back, is caught; the real one disarms the timer.
    old_row = doctored([(S.CREATING, machine.AttemptNotFound,
                         machine._on_attempt_not_found,
                         [S.CREATING, S.CANCELED, S.FAILED])])
    path = ["register: sale", "restart", "reconcile: attempt absent", "timer: S1 reconcile",
            "reconcile: attempt absent"]
    assert [v.rule for v in explore.replay(path, tables=old_row)] == ["create"]
    with pytest.raises(ValueError, match="timer: S1 reconcile"):
        explore.replay(path)


def test_the_tables_in_force_break_no_rule_to_depth_4() -> None:
    report = explore.explore(4)
    assert report.violation is None
    assert report.depth == 4
    assert report.states > 1000


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_tables_in_force_break_no_rule_to_depth_6() -> None:
    report = explore.explore(6)
    assert report.violation is None, report.violation and report.violation.report()
    assert report.depth == 6
    assert [states for _, states, _, _ in report.per_depth][-1] > 10_000


def test_the_command_prints_the_figures_and_exits_0_without_a_violation() -> None:
    done = subprocess.run([sys.executable, "-m", "pointd.core.explore", "--depth", "3"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "explored " in done.stdout
    assert "transitions to depth 3" in done.stdout
    assert done.stdout.rstrip().endswith("no violation")


def test_a_depth_below_one_is_a_clear_error() -> None:
    done = subprocess.run([sys.executable, "-m", "pointd.core.explore", "--depth", "0"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "--depth must be at least 1" in done.stderr


def test_a_refund_resent_after_its_sale_escalated_is_due_not_a_violation() -> None:
    # Depth 7 of the first bench run: the sale's payment no longer matched after a refund
    # was admitted, and the refund's send had an unknown outcome. The resend under the same
    # key is that same request (Mercado Pago refunds a key once); withholding it would leave
    # the refund unknown for ever. Only the first send needs a verified payment.
    moves = ["register: sale", "api: intent FINISHED", "payment: approved", "refund: 500",
             "payment: approved, other amount", "refund: unknown", "timer: R1 refund"]
    assert explore.replay(moves) == []
