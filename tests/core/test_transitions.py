"""Golden transitions: for each start state and event, the exact next state and effects."""

from __future__ import annotations

import pytest

from pointd.core.effects import Effect, Notice, TellRegister
from pointd.core.events import (
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
    TerminalBusy,
    TimerExpired,
    TimerKind,
)
from pointd.core.machine import step
from pointd.core.states import Refusal, SaleState
from tests.core.golden import golden, rendered
from tests.core.scenario import (
    AMOUNT,
    INTENT,
    LANE,
    PAYMENT,
    POLICY,
    SALE,
    T0,
    check_invariants,
    observed,
    reach,
    verified,
)

S = SaleState
N = ObservationSource.NOTIFICATION
RELEASE = OverrideGiven(SALE, OverrideDecision.RELEASE, "checked on the terminal", 0)
VOID = OverrideGiven(SALE, OverrideDecision.VOID, "customer left", 0)

# (start, event, expected state, expected effect kinds in order)
GOLDEN: list[tuple[SaleState, Event, SaleState, tuple[str, ...]]] = [
    # rule 6: a notification is no fact, whatever it says: nothing moves, nothing is asked
    (S.OPEN, observed("ON_TERMINAL", N), S.OPEN, ()),
    (S.OPEN, observed("ABANDONED", N), S.OPEN, ()),
    (S.PROCESSING, observed("CANCELED", N), S.PROCESSING, ()),
    (S.PROCESSING, observed("FINISHED", N, PAYMENT), S.PROCESSING, ()),
    (S.OPEN, observed("CONFIRMATION_REQUIRED", N, PAYMENT), S.OPEN, ()),
    (S.CREATE_UNKNOWN, observed("FINISHED", N, PAYMENT), S.CREATE_UNKNOWN, ()),
    (S.VERIFYING, observed("FINISHED", N, "22200000000"), S.VERIFYING, ()),
    # create outcomes
    (S.CREATING, IntentCreated(SALE, 1, INTENT), S.OPEN,
     ("TellRegister", "ScheduleTimer", "ScheduleTimer")),
    (S.CREATING, CreateNotSent(SALE, 1, "refused"), S.REQUESTED,
     ("TellRegister", "ScheduleTimer")),
    (S.CREATING, CreateOutcomeUnknown(SALE, 1, "timeout"), S.CREATE_UNKNOWN,
     ("TellRegister", "ReconcileAttempt", "ScheduleTimer")),
    (S.CREATING, TerminalBusy(SALE, 1), S.FAILED, ("TellRegister",)),
    (S.CREATING, CreateRejected(SALE, 1, "forbidden"), S.FAILED,
     ("TellRegister", "AlertTechnician")),
    (S.REQUESTED, TimerExpired(SALE, TimerKind.CREATE_RETRY), S.CREATING,
     ("TellRegister", "CreateIntent")),
    (S.REQUESTED, CancelRequested(SALE, None, "register"), S.CANCELED,
     ("CancelTimer", "TellRegister")),
    # reconciliation
    (S.CREATE_UNKNOWN, IntentCreated(SALE, 1, INTENT), S.OPEN,
     ("CancelTimer", "TellRegister", "ScheduleTimer", "ScheduleTimer")),
    (S.CREATE_UNKNOWN, AttemptNotFound(SALE, 1), S.CREATING,
     ("CancelTimer", "TellRegister", "CreateIntent")),
    (S.CREATE_UNKNOWN, PaymentsFound(SALE, 1, (FoundPayment(PAYMENT, "approved", AMOUNT),)),
     S.VERIFYING,
     ("CancelTimer", "TellRegister", "FetchPayment", "ScheduleTimer", "ScheduleTimer")),
    (S.CREATE_UNKNOWN, PaymentsFound(SALE, 1, ()), S.CREATE_UNKNOWN, ()),
    (S.CREATE_UNKNOWN, TimerExpired(SALE, TimerKind.RECONCILE), S.CREATE_UNKNOWN,
     ("ReconcileAttempt", "ScheduleTimer")),
    (S.CREATE_UNKNOWN, observed("FINISHED", payment_id=PAYMENT), S.VERIFYING,
     ("CancelTimer", "TellRegister", "ScheduleTimer", "ScheduleTimer", "CancelTimer",
      "CancelTimer", "TellRegister", "FetchPayment", "ScheduleTimer", "ScheduleTimer")),
    (S.CREATE_UNKNOWN, CreateOutcomeUnknown(SALE, 1, "again"), S.CREATE_UNKNOWN, ()),
    (S.CREATE_UNKNOWN, VOID, S.DECLINED, ("CancelTimer", "TellRegister", "AlertTechnician")),
    # intent progress
    (S.OPEN, observed("ON_TERMINAL"), S.ON_TERMINAL, ("CancelTimer", "TellRegister")),
    (S.OPEN, observed("PROCESSED"), S.PROCESSING, ("CancelTimer", "TellRegister")),
    (S.OPEN, observed("OPEN", N), S.OPEN, ()),
    (S.ON_TERMINAL, observed("OPEN"), S.ON_TERMINAL, ()),
    (S.PROCESSING, observed("ON_TERMINAL", N), S.PROCESSING, ()),
    (S.OPEN, TimerExpired(SALE, TimerKind.POLL), S.OPEN, ("FetchIntent", "ScheduleTimer")),
    (S.OPEN, TimerExpired(SALE, TimerKind.ABANDON), S.OPEN, ("FetchIntent",)),
    (S.ON_TERMINAL, TimerExpired(SALE, TimerKind.ABANDON), S.ON_TERMINAL, ()),
    (S.OPEN, observed("ABANDONED"), S.ABANDONED,
     ("CancelTimer", "CancelTimer", "TellRegister")),
    (S.PROCESSING, observed("ERROR"), S.FAILED, ("CancelTimer", "TellRegister")),
    (S.PROCESSING, observed("CANCELED"), S.CANCELED, ("CancelTimer", "TellRegister")),
    # rule 1: FINISHED only starts verification, whatever payment.state says
    (S.PROCESSING, observed("FINISHED", payment_id=PAYMENT), S.VERIFYING,
     ("CancelTimer", "TellRegister", "FetchPayment", "ScheduleTimer", "ScheduleTimer")),
    (S.PROCESSING, observed("FINISHED", payment_id=None), S.VERIFYING,
     ("CancelTimer", "TellRegister", "FetchIntent", "ScheduleTimer", "ScheduleTimer")),
    (S.VERIFYING, verified(), S.APPROVED,
     ("CancelTimer", "CancelTimer", "TellRegister", "ScheduleTimer")),
    (S.VERIFYING, verified("rejected"), S.DECLINED,
     ("CancelTimer", "CancelTimer", "TellRegister")),
    (S.VERIFYING, verified(amount=AMOUNT - 1), S.ESCALATED,
     ("CancelTimer", "TellRegister", "AlertTechnician")),
    (S.VERIFYING, verified(currency="ARS"), S.ESCALATED,
     ("CancelTimer", "TellRegister", "AlertTechnician")),
    (S.VERIFYING, verified(collector="42"), S.ESCALATED,
     ("CancelTimer", "TellRegister", "AlertTechnician")),
    (S.VERIFYING, verified("refunded"), S.ESCALATED,
     ("CancelTimer", "TellRegister", "AlertTechnician")),
    (S.VERIFYING, verified("pending"), S.HELD, ("TellRegister",)),
    (S.VERIFYING, PaymentNotFound(PAYMENT), S.HELD, ("TellRegister",)),
    (S.VERIFYING, FraudAlerted(PAYMENT), S.BLOCKED,
     ("CancelTimer", "CancelTimer", "TellRegister", "AlertTechnician")),
    # rule 2: CONFIRMATION_REQUIRED holds, verifies with back-off, escalates
    (S.OPEN, observed("CONFIRMATION_REQUIRED", payment_id=PAYMENT), S.HELD,
     ("CancelTimer", "CancelTimer", "TellRegister", "FetchPayment", "ScheduleTimer",
      "ScheduleTimer")),
    (S.HELD, verified("in_process"), S.HELD, ()),
    (S.HELD, verified("authorized"), S.HELD, ()),
    (S.HELD, PaymentNotFound(PAYMENT), S.HELD, ()),
    (S.HELD, TimerExpired(SALE, TimerKind.VERIFY), S.HELD, ("FetchPayment", "ScheduleTimer")),
    (S.HELD, TimerExpired(SALE, TimerKind.ESCALATE), S.ESCALATED,
     ("TellRegister", "AlertTechnician")),
    (S.HELD, verified(), S.APPROVED,
     ("CancelTimer", "CancelTimer", "TellRegister", "ScheduleTimer")),
    (S.HELD, verified("cancelled"), S.DECLINED, ("CancelTimer", "CancelTimer", "TellRegister")),
    (S.HELD, RELEASE, S.OVERRIDDEN,
     ("CancelTimer", "CancelTimer", "TellRegister", "AlertTechnician")),
    (S.ESCALATED, verified("pending"), S.ESCALATED, ()),
    (S.ESCALATED, TimerExpired(SALE, TimerKind.VERIFY), S.ESCALATED,
     ("FetchPayment", "ScheduleTimer")),
    (S.ESCALATED, verified(), S.APPROVED, ("CancelTimer", "TellRegister", "ScheduleTimer")),
    (S.ESCALATED, VOID, S.DECLINED, ("CancelTimer", "TellRegister", "AlertTechnician")),
    (S.ESCALATED, FraudAlerted(PAYMENT), S.BLOCKED,
     ("CancelTimer", "TellRegister", "AlertTechnician")),
    # handover and fraud after approval
    (S.APPROVED, HandoverConfirmed(SALE), S.HANDED_OVER, ("CancelTimer", "TellRegister")),
    (S.APPROVED, FraudAlerted(PAYMENT), S.BLOCKED,
     ("CancelTimer", "TellRegister", "AlertTechnician")),
    (S.APPROVED, verified("refunded"), S.ESCALATED,
     ("CancelTimer", "TellRegister", "FetchPayment", "ScheduleTimer", "AlertTechnician")),
    (S.APPROVED, verified(), S.APPROVED, ()),
    # rule 2 of the register: the lane waits for HANDOVER_DONE, but not for ever
    (S.APPROVED, TimerExpired(SALE, TimerKind.HANDOVER), S.HANDOVER_UNCONFIRMED,
     ("TellRegister", "AlertTechnician")),
    (S.HANDOVER_UNCONFIRMED, HandoverConfirmed(SALE), S.HANDOVER_UNCONFIRMED,
     ("AlertTechnician",)),
    (S.HANDOVER_UNCONFIRMED, FraudAlerted(PAYMENT), S.HANDOVER_UNCONFIRMED,
     ("AlertTechnician",)),
    (S.HANDOVER_UNCONFIRMED, verified(), S.HANDOVER_UNCONFIRMED, ()),
    (S.HANDED_OVER, FraudAlerted(PAYMENT), S.HANDED_OVER, ("AlertTechnician",)),
    (S.BLOCKED, verified(), S.BLOCKED, ()),
    (S.BLOCKED, HandoverConfirmed(SALE), S.BLOCKED, ("AlertTechnician", "TellRegister")),
    (S.BLOCKED, RELEASE, S.OVERRIDDEN, ("TellRegister", "AlertTechnician")),
    (S.HELD, HandoverConfirmed(SALE), S.HELD, ("AlertTechnician", "TellRegister")),
    (S.OPEN, HandoverConfirmed(SALE), S.OPEN, ("AlertTechnician", "TellRegister")),
    (S.DECLINED, HandoverConfirmed(SALE), S.DECLINED, ("AlertTechnician", "TellRegister")),
    (S.DECLINED, verified(), S.DECLINED, ("AlertTechnician",)),
    (S.HANDED_OVER, HandoverConfirmed(SALE), S.HANDED_OVER, ()),
    # cancel
    (S.OPEN, CancelRequested(None, LANE, "register"), S.CANCELING,
     ("CancelTimer", "TellRegister", "CancelIntent")),
    (S.CANCELING, observed("CANCELED"), S.CANCELED, ("CancelTimer", "TellRegister")),
    (S.CANCELING, CancelRefused(SALE, "conflict_error"), S.ON_TERMINAL,
     ("TellRegister", "FetchIntent")),
    (S.CANCELING, observed("FINISHED", payment_id=PAYMENT), S.VERIFYING,
     ("CancelTimer", "TellRegister", "FetchPayment", "ScheduleTimer", "ScheduleTimer")),
    (S.ON_TERMINAL, CancelRequested(SALE, None, "register"), S.ON_TERMINAL, ("TellRegister",)),
    (S.HELD, CancelRequested(SALE, None, "register"), S.HELD, ("TellRegister",)),
    (S.CREATING, CancelRequested(SALE, None, "register"), S.CREATING, ("TellRegister",)),
    (S.CANCELED, CancelRequested(SALE, None, "register"), S.CANCELED, ("TellRegister",)),
    (S.CANCELED, observed("OPEN"), S.CANCELED, ("CancelIntent",)),
    (S.CANCELED, observed("OPEN", N), S.CANCELED, ()),
    (S.CANCELED, observed("FINISHED", payment_id="22200000000"), S.CANCELED,
     ("AlertTechnician",)),
]


GOLDEN_IDS = [f"{g[0].value}-{type(g[1]).__name__}-{i}" for i, g in enumerate(GOLDEN)]
GOLDEN_EFFECTS = golden("transitions")


def golden_rows() -> list[tuple[str, tuple[Effect, ...]]]:
    """Each golden row's id and the effects the core returns for it (tests/core/golden.py)."""
    return [(key, step(reach(start), event, now=T0 + 100, policy=POLICY).effects)
            for key, (start, event, _expected, _kinds) in zip(GOLDEN_IDS, GOLDEN, strict=True)]


def test_every_golden_row_has_its_effect_values() -> None:
    assert set(GOLDEN_EFFECTS) == set(GOLDEN_IDS)


@pytest.mark.parametrize(("key", "start", "event", "expected", "effects"),
                         [(key, *row) for key, row in zip(GOLDEN_IDS, GOLDEN, strict=True)],
                         ids=GOLDEN_IDS)
def test_golden_transition(key: str, start: SaleState, event: Event, expected: SaleState,
                           effects: tuple[str, ...]) -> None:
    result = step(reach(start), event, now=T0 + 100, policy=POLICY)
    assert result.state.sales[SALE].state is expected
    assert tuple(type(e).__name__ for e in result.effects) == effects
    assert rendered(result.effects) == GOLDEN_EFFECTS[key]
    check_invariants(result.state)


def test_cancel_refused_tells_the_register_to_cancel_on_the_terminal() -> None:
    result = step(reach(S.CANCELING), CancelRefused(SALE, "409"), now=T0 + 100, policy=POLICY)
    (tell,) = [e for e in result.effects if isinstance(e, TellRegister)]
    assert tell.notice is Notice.CANCEL_ON_TERMINAL


@pytest.mark.parametrize(("start", "notice"), [
    (S.ON_TERMINAL, Notice.CANCEL_ON_TERMINAL),
    (S.PROCESSING, Notice.CANCEL_ON_TERMINAL),
    (S.VERIFYING, Notice.CANCEL_TOO_LATE),
    (S.HELD, Notice.CANCEL_TOO_LATE),
    (S.ESCALATED, Notice.CANCEL_TOO_LATE),
    (S.APPROVED, Notice.CANCEL_TOO_LATE),
    (S.BLOCKED, Notice.CANCEL_TOO_LATE),
])
def test_late_cancel_advises_the_cashier(start: SaleState, notice: Notice) -> None:
    result = step(reach(start), CancelRequested(None, LANE, "register"), now=T0 + 100,
                  policy=POLICY)
    assert result.state.sales[SALE].state is start
    assert [getattr(e, "notice", None) for e in result.effects] == [notice]


def test_refusals_are_final_and_free_nothing_else() -> None:
    result = step(reach(S.CREATING), CreateRejected(SALE, 1, "x"), now=T0, policy=POLICY)
    sale = result.state.sales[SALE]
    assert sale.refusal is None
    busy = step(reach(S.CREATING), TerminalBusy(SALE, 1), now=T0, policy=POLICY)
    assert busy.state.sales[SALE].refusal is Refusal.TERMINAL_BUSY
    assert not busy.state.lanes
    assert not busy.state.terminals
