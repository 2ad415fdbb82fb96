"""Test-only builders for the core: a policy, canonical paths to every state, invariants."""

from __future__ import annotations

from collections.abc import Sequence

from pointd.core.events import (
    AttemptNotFound,
    CancelRequested,
    CreateNotSent,
    CreateOutcomeUnknown,
    CreateRejected,
    Event,
    FraudAlerted,
    HandoverConfirmed,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    OverrideDecision,
    OverrideGiven,
    PaymentVerified,
    SaleRequested,
    TimerExpired,
    TimerKind,
)
from pointd.core.machine import TERMINAL_HOLDING_STATES, CoreState, Step, step
from pointd.core.policy import Policy
from pointd.core.states import SaleState

S = SaleState
STORE = "loja-centro"
COLLECTOR = "987654321"
POLICY = Policy(currency="BRL", collector_id=COLLECTOR, min_amount_cents=100,
                max_amount_cents=7_000_000)
T0 = 1_700_000_000.0
SALE = "S1"
LANE = 3
TERMINAL = "PAX_A910__SMARTPOS1"
AMOUNT = 1500
INTENT = "7f25f9aa-eea6-4f9c-bf16-a341f71ba2f1"
PAYMENT = "11123456789"
REF1 = f"pd1_{STORE}_{LANE}_{SALE}_1"


def requested(sale_id: str = SALE, lane: int = LANE, terminal: str = TERMINAL,
              amount: int = AMOUNT, correlation: str | None = None) -> SaleRequested:
    correlation = correlation or f"c-{sale_id}"
    return SaleRequested(sale_id, lane, correlation, amount, terminal, None)


def observed(state: str, source: ObservationSource = ObservationSource.POLL,
             payment_id: str | None = None, intent_id: str = INTENT,
             reference: str | None = REF1) -> IntentObserved:
    return IntentObserved(intent_id, state, payment_id, None, source, reference)


def verified(status: str = "approved", *, amount: int | None = AMOUNT, currency: str = "BRL",
             collector: str = COLLECTOR, payment_id: str = PAYMENT,
             reference: str | None = None) -> PaymentVerified:
    return PaymentVerified(payment_id, status, None, amount, currency, collector, reference)


# The shortest event path from nothing to each state, for sale SALE.
_CREATING: tuple[Event, ...] = (requested(),)
_OPEN = (*_CREATING, IntentCreated(SALE, 1, INTENT))
_VERIFYING = (*_OPEN, observed("FINISHED", payment_id=PAYMENT))
_HELD = (*_OPEN, observed("CONFIRMATION_REQUIRED", payment_id=PAYMENT))
_CANCELING = (*_OPEN, CancelRequested(SALE, None, "register"))
_APPROVED = (*_VERIFYING, verified())
PATHS: dict[SaleState, tuple[Event, ...]] = {
    S.REQUESTED: (*_CREATING, CreateNotSent(SALE, 1, "connection refused")),
    S.CREATING: _CREATING,
    S.CREATE_UNKNOWN: (*_CREATING, CreateOutcomeUnknown(SALE, 1, "read timeout")),
    S.OPEN: _OPEN,
    S.ON_TERMINAL: (*_OPEN, observed("ON_TERMINAL")),
    S.PROCESSING: (*_OPEN, observed("PROCESSING")),
    S.VERIFYING: _VERIFYING,
    S.HELD: _HELD,
    S.ESCALATED: (*_HELD, TimerExpired(SALE, TimerKind.ESCALATE)),
    S.CANCELING: _CANCELING,
    S.APPROVED: _APPROVED,
    S.BLOCKED: (*_VERIFYING, FraudAlerted(PAYMENT)),
    S.HANDED_OVER: (*_APPROVED, HandoverConfirmed(SALE)),
    S.DECLINED: (*_VERIFYING, verified("rejected")),
    S.CANCELED: (*_CANCELING, observed("CANCELED")),
    S.FAILED: (*_CREATING, CreateRejected(SALE, 1, "forbidden")),
    S.ABANDONED: (*_OPEN, observed("ABANDONED")),
    S.OVERRIDDEN: (*_HELD, OverrideGiven(SALE, OverrideDecision.RELEASE, "seen on terminal", 0)),
    S.HANDOVER_UNCONFIRMED: (*_APPROVED, TimerExpired(SALE, TimerKind.HANDOVER)),
}


_CANCEL = CancelRequested(SALE, None, "register")
_RETRY = TimerExpired(SALE, TimerKind.CREATE_RETRY)
_NOT_SENT = CreateNotSent(SALE, 1, "connection refused")

# Further starting points that some transitions need, named "<state>:<circumstance>".
SCENARIOS: dict[str, tuple[Event, ...]] = {
    **{state.value: path for state, path in PATHS.items()},
    "creating:cancel_requested": (*_CREATING, _CANCEL),
    "create_unknown:cancel_requested": (*PATHS[S.CREATE_UNKNOWN], _CANCEL),
    "creating:last_send": (*_CREATING, _NOT_SENT, _RETRY, _NOT_SENT, _RETRY),
    "create_unknown:last_attempt": (
        *PATHS[S.CREATE_UNKNOWN], AttemptNotFound(SALE, 1), CreateOutcomeUnknown(SALE, 2, "t"),
        AttemptNotFound(SALE, 2), CreateOutcomeUnknown(SALE, 3, "t")),
    "creating:last_attempt": (
        *PATHS[S.CREATE_UNKNOWN], AttemptNotFound(SALE, 1), CreateOutcomeUnknown(SALE, 2, "t"),
        AttemptNotFound(SALE, 2)),
    "processing:fraud_alerted": (*PATHS[S.PROCESSING], FraudAlerted(PAYMENT)),
    "verifying:fraud_alerted": (*_OPEN, FraudAlerted(PAYMENT),
                                observed("FINISHED", payment_id=PAYMENT)),
    "held:fraud_alerted": (*_OPEN, FraudAlerted(PAYMENT),
                           observed("CONFIRMATION_REQUIRED", payment_id=PAYMENT)),
    "escalated:fraud_alerted": (*_OPEN, FraudAlerted(PAYMENT),
                                observed("CONFIRMATION_REQUIRED", payment_id=PAYMENT),
                                TimerExpired(SALE, TimerKind.ESCALATE)),
}


def run(events: Sequence[Event], state: CoreState | None = None, now: float = T0,
        policy: Policy = POLICY) -> tuple[CoreState, list[Step]]:
    """Feed events one second apart; return the final state and every step."""
    state = state or CoreState.empty(STORE)
    steps = []
    for offset, event in enumerate(events):
        result = step(state, event, now=now + offset, policy=policy)
        steps.append(result)
        state = result.state
    return state, steps


def reach(target: SaleState) -> CoreState:
    """A state in which sale SALE is in ``target``, reached by real events only."""
    return reach_scenario(target.value)


def reach_scenario(name: str) -> CoreState:
    """The state after SCENARIOS[name]; sale SALE is in the state the name starts with."""
    state, steps = run(SCENARIOS[name])
    assert all(s.rejection is None for s in steps), [s.rejection for s in steps]
    assert state.sales[SALE].state is SaleState(name.split(":", maxsplit=1)[0])
    return state


def check_invariants(state: CoreState) -> None:
    """Properties every reachable state keeps, whatever the events were."""
    approved_ids = []
    lanes_in_progress: dict[int, str] = {}
    terminals_held: dict[str, str] = {}
    for sale in state.sales.values():
        if sale.state in (S.APPROVED, S.HANDED_OVER, S.HANDOVER_UNCONFIRMED):
            assert sale.approved_payment_id is not None, sale
            assert sale.approved_payment_id == sale.payment_id, sale
            approved_ids.append(sale.approved_payment_id)
        if sale.state is S.APPROVED:
            assert sale.approved_payment_id not in state.fraud_alerts, sale
            # The lane waits for the register's HANDOVER_DONE, but never for ever.
            assert sale.timer_due(TimerKind.HANDOVER) is not None, sale
        # An approval the register was told and that no longer holds is being withdrawn.
        assert sale.approval_withdrawn == (
            sale.approval_withdrawn and sale.state not in (S.APPROVED, S.OVERRIDDEN,
                                                           S.HANDED_OVER,
                                                           S.HANDOVER_UNCONFIRMED)), sale
        if sale.state is S.OVERRIDDEN:
            assert sale.override is not None
            assert sale.override.decision is OverrideDecision.RELEASE
        if sale.state in (S.APPROVED, S.OVERRIDDEN, S.HANDED_OVER, S.HANDOVER_UNCONFIRMED):
            assert sale.may_hand_over, sale
        else:
            assert not sale.may_hand_over, sale
        if not sale.is_final:
            assert sale.lane not in lanes_in_progress, (sale, lanes_in_progress)
            lanes_in_progress[sale.lane] = sale.sale_id
        if sale.state in TERMINAL_HOLDING_STATES:
            assert sale.terminal_id not in terminals_held, (sale, terminals_held)
            terminals_held[sale.terminal_id] = sale.sale_id
        if sale.payment_id is not None:
            assert state.payments[sale.payment_id] == sale.sale_id
        if sale.intent_id is not None:
            assert state.intents[sale.intent_id] == sale.sale_id
    assert len(approved_ids) == len(set(approved_ids)), approved_ids
    assert dict(state.lanes) == lanes_in_progress
    assert dict(state.terminals) == terminals_held
