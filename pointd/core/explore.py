"""Every sequence of events up to a depth, breadth first, checked against the money rules.

Run ``python -m pointd.core.explore --depth N``. It prints, per depth, the states and
transitions explored and the time taken, then either ``no violation`` (exit 0) or the
shortest sequence of moves that breaks a rule, with the events it stands for and a test
that replays it (exit 1).

Theory of operation
-------------------
The explorer plays the world around one lane: a register, Mercado Pago and a supervisor,
and the register of a second lane that shares the first lane's terminal.
A *move* is one thing the world can do next; it becomes a core event built from what the
world has seen so far (the sale's intent id and reference, the refund being sent), or it is
not possible yet (an answer to a create that was never sent). The moves are:

- the register: a SALE (a new purchase, then the same one again; its id with another
  amount; a second purchase, refused while the first is in progress), a CANCEL, a
  HANDOVER_DONE, and STATUS for its sale, for its second purchase and for an id it never
  used, in every state, and HANDOVER_CHECK for its sale (neither changes anything: the
  move checks the daemon's answer, ``pointd.core.answers``, and leaves the state as it
  was; every STATUS is also asked right after each SALE);
- the register of a second lane with the same terminal (two unpinned lanes and one
  terminal on USB both find it): a SALE while this lane's sale holds the terminal, which
  admission must refuse, and a STATUS. The checkout sends the lane's terminal verdict
  (USB, device list, PDV mode, Mercado Pago reachable) with the SALE and leaves whether
  another sale holds the terminal to the core, so the SALE arrives with a clean verdict,
  as the daemon sends it. Once the terminal is free, that lane's sale would be what this
  lane's is, so it is not asked then;
- a create's outcome, when one is in flight: created, not sent, unknown, terminal busy,
  rejected; a reconciliation's: the attempt proven absent, or its approved payment found;
- the intent (or order) in every state, as the API answers it, and two notifications
  (FINISHED with a payment id, CANCELED), which the core must not believe;
- the payment, as ``/v1/payments`` answers it: approved for this sale, approved for another
  amount, currency, collector, reference or sale, another payment, rejected, pending,
  refunded, not found, and a timeout (no event at all);
- fraud alerts for the sale's payment and for another, at any point;
- every armed timer firing; a supervisor's release and void;
- refunds (two requests at most, once the sale ended or its goods may leave): a partial
  one, the rest, the first request again, and every answer to a send
  (refunded, pending, failed, not sent, unknown, refused with and without the money back)
  and to a poll;
- a restart: the state goes through its snapshot and back (which must be the identity),
  in-flight calls are lost, and only what ``recover`` re-arms is armed again.

All events happen at one wall-clock instant: a timer fires because the world chose so, not
because time passed, so two sequences that reach the same state reach the same JSON
document, and a state is explored once however many sequences reach it. What is deduplicated
is the snapshot of the core state together with the world's view (armed timers, calls in
flight, and the facts the invariants need: which payments the API approved for which sale,
which create attempts it proved absent). A sale the second lane asked for and the core
refused is left out of that key (``canonical``): nothing can reach it again, so the state
after the refusal is the state before it.

At every transition and every state reached it checks the rules of docs/architecture.md:

- ``handover``: goods may leave only with a payment the API approved for this sale (and no
  fraud alert against it), or with a supervisor's journaled release; HANDOVER_CHECK says
  ``allowed=yes`` only then;
- ``create``: no create for attempt n+1 unless attempt n was proven absent, and no resend of
  an attempt unless its send was proven not to have left;
- ``backwards``: a final sale or refund never changes; intent progress and the attempt
  number never go back;
- ``told``: every sale or refund entering a final state is told to its register;
- ``refunds``: what is refunded or may still be never exceeds what was paid, and a refund
  is first sent only for a sale whose payment was verified (or released by a supervisor);
  a resend under the same key settles that request, whatever the sale became since;
- ``snapshot``: restoring a state's snapshot gives the state back (checked by the restart
  move, so at every state but those of the last depth), and the moves after a restart go
  on from the restored state;
- ``way out``: every unfinished sale or refund has an armed timer or a call whose answer
  will come (a sale BLOCKED by a fraud alert waits for a person: its way out is a
  supervisor's override, which is a move);
- ``table``: no handler moves a record where its row does not say it may;
- ``admission``: no two unfinished sales share a lane, and no two sales hold one terminal
  (a second intent could be created where the first may be charging);
- ``status``: STATUS names the newest sale that lane's register asked for under the id
  (``unknown`` only when there is none: the register then sends the SALE again), says the
  state it is in (so a final state is told to a register that asks), its amount, and
  ``handover=yes`` exactly when the goods may leave now: approved, overridden or
  handover_unconfirmed, with a payment the API approved for it that no fraud alert names
  (an alert after the sale closed unconfirmed takes the permission back), or with a
  supervisor's release.
"""

from __future__ import annotations

import argparse
import dataclasses
import operator
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pointd.core import answers, machine, refunds
from pointd.core.effects import (
    CancelTimer,
    CreateIntent,
    Effect,
    ReconcileAttempt,
    ScheduleTimer,
    SendRefund,
    TellRefund,
    TellRegister,
)
from pointd.core.events import (
    AttemptNotFound,
    CancelRequested,
    CreateNotSent,
    CreateOutcomeUnknown,
    CreateRejected,
    Event,
    FoundPayment,
    FraudAlerted,
    HandoverConfirmed,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    OverrideDecision,
    OverrideGiven,
    PaymentNotFound,
    PaymentsFound,
    PaymentVerified,
    RefundNotSent,
    RefundObserved,
    RefundOutcomeUnknown,
    RefundRejected,
    RefundRequested,
    RefundSent,
    SaleRequested,
    TerminalBusy,
    TimerKind,
)
from pointd.core.policy import Policy
from pointd.core.records import CoreState, Refund, Sale
from pointd.core.recovery import recover
from pointd.core.reference import ExternalReference
from pointd.core.states import (
    COMMITTED_REFUND_STATUSES,
    HANDOVER_ALLOWED_STATES,
    PAID_INTENT_STATES,
    REFUNDABLE_SALE_STATES,
    TERMINAL_HOLDING_STATES,
    IntentState,
    SaleState,
)
from pointd.core.table import Step

STORE = "explore"
LANE = 1
OTHER_LANE = 2  # its register finds the same terminal
TERMINAL = "PAX_EXPLORE"
AMOUNT = 1500
COLLECTOR = "1234567"
NOW = 1_800_000_000.0
POLICY = Policy(currency="BRL", collector_id=COLLECTOR, min_amount_cents=100,
                max_amount_cents=100_000)

# The goods may be in the customer's hands in these states.
_GOODS_OUT = HANDOVER_ALLOWED_STATES | {SaleState.HANDED_OVER}
_INTENT_RANK = {state: rank for rank, group in enumerate((
    {IntentState.OPEN}, {IntentState.ON_TERMINAL}, {IntentState.PROCESSING},
    {IntentState.PROCESSED},
    {IntentState.FINISHED, IntentState.CONFIRMATION_REQUIRED, IntentState.CANCELED,
     IntentState.ERROR, IntentState.ABANDONED})) for state in group}

Call = tuple[str, str, int]  # (owner, "create" | "reconcile" | "send", attempt)


@dataclass(frozen=True, slots=True)
class World:
    """What the world around the core knows; part of what makes two states the same."""

    armed: frozenset[tuple[str, TimerKind]] = frozenset()
    calls: frozenset[Call] = frozenset()  # calls in flight whose answer is a move
    approved: frozenset[tuple[str, str]] = frozenset()  # (sale, payment) the API approved
    released: frozenset[str] = frozenset()  # sales a supervisor released
    absent: frozenset[tuple[str, int]] = frozenset()  # attempts proven never created
    created: frozenset[tuple[str, int]] = frozenset()  # attempts known to exist
    sent: frozenset[tuple[str, int]] = frozenset()  # attempts whose create was sent
    unsent: frozenset[tuple[str, int]] = frozenset()  # attempts proven not sent since


@dataclass(frozen=True, slots=True)
class Node:
    """A reached state, the world's view, and the events that reached it first."""

    state: CoreState
    world: World
    depth: int
    path: tuple[str, ...] = ()
    events: tuple[Event | None, ...] = ()  # one per move; None: a restart or a timeout


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken rule and the shortest sequence of moves that breaks it."""

    rule: str
    detail: str
    path: tuple[str, ...]
    events: tuple[Event | None, ...]

    def report(self) -> str:
        """The counterexample as a reader and as a test want it."""
        lines = [f"VIOLATION [{self.rule}] after {len(self.path)} moves: {self.detail}"]
        for n, (move, event) in enumerate(zip(self.path, self.events, strict=True), 1):
            lines.append(f"  {n:2}. {move:<32} {'' if event is None else repr(event)}")
        lines += ["", "Replay it as a test:", "",
                  "    from pointd.core import explore",
                  "",
                  f"    def test_{self.rule.replace(' ', '_')}_counterexample() -> None:",
                  f"        moves = {list(self.path)!r}",
                  "        assert explore.replay(moves) == []"]
        return "\n".join(lines)


@dataclass(slots=True)
class Report:
    """What one exploration did."""

    depth: int
    states: int = 0
    transitions: int = 0
    seconds: float = 0.0
    per_depth: list[tuple[int, int, int, float]] = field(default_factory=list)
    violation: Violation | None = None
    stopped: bool = False  # the deadline came before the last depth was finished


@dataclass(frozen=True, slots=True)
class Tables:
    """The tables in force (only tests pass doctored copies)."""

    sales: machine.SaleTable = field(default_factory=lambda: machine.TRANSITIONS)
    refunds: refunds.RefundTable = field(default_factory=lambda: refunds.TRANSITIONS)


# --- the moves ---------------------------------------------------------------------------------

Build = Callable[[CoreState, World], Event | None]


def _current(state: CoreState) -> Sale | None:
    """The lane's sale in progress, else its newest sale."""
    sale = state.sale_on_lane(LANE)
    if sale is not None:
        return sale
    mine = [s for s in state.sales.values() if s.lane == LANE]
    return max(mine, key=lambda s: (len(s.sale_id), s.sale_id)) if mine else None


def _new_sale_id(state: CoreState) -> str:
    return f"S{len(state.sales) + 1}"


def _intent_id(sale: Sale) -> str:
    return sale.intent_id or f"I{sale.sale_id}A{sale.attempt}"


def _payment_id(sale: Sale) -> str:
    return sale.payment_id or f"P{sale.sale_id}"


def _sale_request(correlation: str, amount: int = AMOUNT) -> Build:
    def build(state: CoreState, world: World) -> Event:
        return SaleRequested(_new_sale_id(state), LANE, correlation, amount, TERMINAL, None)
    return build


def _other_lane_sale(state: CoreState, world: World) -> Event | None:
    """The second lane's SALE while this lane's sale holds their terminal."""
    holder = state.sale_on_lane(LANE)
    if holder is None or holder.state not in TERMINAL_HOLDING_STATES:
        return None
    return SaleRequested(_new_sale_id(state), OTHER_LANE, "c1", AMOUNT, TERMINAL, None)


def _on_sale(make: Callable[[Sale], Event | None]) -> Build:
    def build(state: CoreState, world: World) -> Event | None:
        sale = _current(state)
        return None if sale is None else make(sale)
    return build


def _call_answer(kind: str, make: Callable[[str, int], Event]) -> Build:
    """An answer to the oldest call of this kind in flight."""
    def build(state: CoreState, world: World) -> Event | None:
        pending = sorted(c for c in world.calls if c[1] == kind)
        return make(pending[0][0], pending[0][2]) if pending else None
    return build


def _observed(intent_state: IntentState, source: ObservationSource) -> Build:
    paid = intent_state in PAID_INTENT_STATES

    def make(sale: Sale) -> Event | None:
        if sale.attempt == 0:
            return None
        return IntentObserved(_intent_id(sale), intent_state.value,
                              _payment_id(sale) if paid else None,
                              "approved" if paid else None, source, sale.reference)
    return _on_sale(make)


def _verified(status: str = "approved", *, amount: int = AMOUNT, currency: str = "BRL",
              collector: str = COLLECTOR, reference: Callable[[Sale], str | None] | None = None,
              another: bool = False) -> Build:
    def make(sale: Sale) -> Event | None:
        if sale.attempt == 0:
            return None
        payment = "POTHER" if another else _payment_id(sale)
        shown = sale.reference if reference is None else reference(sale)
        return PaymentVerified(payment, status, None, amount, currency, collector, shown)
    return _on_sale(make)


def _another_sales_reference(sale: Sale) -> str:
    return str(ExternalReference(STORE, LANE, "S9", 1))


def _another_attempts_reference(sale: Sale) -> str:
    return str(ExternalReference(STORE, LANE, sale.sale_id, sale.attempt + 1))


# Two requests reach every rule (one partial, then the rest or too much; the same again);
# a third would only add refusals like the second's. They are asked once the sale ended or
# its goods may leave: one asked while it is in progress is refused exactly like one asked
# after it ended unpaid (the sale's state is not refundable), so it would add only states.
_MAX_REFUND_REQUESTS = 2


def _refund_request(amount: int | None, *, again: bool = False) -> Build:
    def build(state: CoreState, world: World) -> Event | None:
        sale = state.sales.get("S1")
        book = state.refunds
        if (sale is None or len(book.refunds) >= _MAX_REFUND_REQUESTS
                or not (sale.is_final or sale.state in HANDOVER_ALLOWED_STATES)):
            return None
        if again:
            if "R1" not in book.refunds:
                return None
            refund_id, key = f"R{len(book.refunds) + 1}", book.refunds["R1"].request_key
        else:
            refund_id = f"R{len(book.refunds) + 1}"
            key = f"lane{LANE}:{refund_id}"
        return RefundRequested(refund_id=refund_id, request_key=key, correlation_id=refund_id,
                               sale_id=sale.sale_id, amount_cents=amount, by="register",
                               uid=None, sale=refunds.facts_of(sale))
    return build


def _refund_sent(cloud_state: str) -> Build:
    def make(refund_id: str, attempt: int) -> Event:
        return RefundSent(refund_id, f"C{refund_id}", cloud_state, 0, "api")
    return _call_answer("send", make)


def _refund_rejected(money_back: bool) -> Build:
    def build(state: CoreState, world: World) -> Event | None:
        pending = sorted(c for c in world.calls if c[1] == "send")
        if not pending:
            return None
        refund = state.refunds.refunds[pending[0][0]]
        landed = state.refunds.refunded_cents(refund.sale_id) + refund.amount_cents
        return RefundRejected(refund.refund_id, "exceeds_balance", landed if money_back else 0)
    return build


def _refund_observed(cloud_state: str) -> Build:
    def build(state: CoreState, world: World) -> Event | None:
        pending = [r for r in state.refunds.unfinished() if r.cloud_refund_id is not None]
        return RefundObserved(pending[0].refund_id, cloud_state, 0) if pending else None
    return build


def _found_payment(sale_id: str, attempt: int) -> Event:
    return PaymentsFound(sale_id, attempt, (FoundPayment(f"P{sale_id}", "approved", AMOUNT),))


_API = ObservationSource.POLL
_NOTIFIED = ObservationSource.NOTIFICATION

MOVES: Mapping[str, Build] = {
    # The first is a new purchase, any later one the same purchase asked again.
    "register: sale": _sale_request("c1"),
    "register: same id, other amount": _sale_request("c1", amount=AMOUNT + 100),
    "register: another sale": _sale_request("c2"),
    "register: cancel": lambda state, world: CancelRequested(None, LANE, "register"),
    "register: handover done": _on_sale(lambda sale: HandoverConfirmed(sale.sale_id)),
    "lane 2: sale, terminal held": _other_lane_sale,
    "create: created": _call_answer(
        "create", lambda sale, n: IntentCreated(sale, n, f"I{sale}A{n}")),
    "create: not sent": _call_answer("create", lambda s, n: CreateNotSent(s, n, "refused")),
    "create: unknown": _call_answer(
        "create", lambda s, n: CreateOutcomeUnknown(s, n, "read timeout")),
    "create: terminal busy": _call_answer("create", TerminalBusy),
    "create: rejected": _call_answer("create", lambda s, n: CreateRejected(s, n, "forbidden")),
    "reconcile: attempt absent": _call_answer("reconcile", AttemptNotFound),
    "reconcile: payment found": _call_answer("reconcile", _found_payment),
    **{f"api: intent {s.value}": _observed(s, _API) for s in IntentState},
    "notified: intent FINISHED": _observed(IntentState.FINISHED, _NOTIFIED),
    "notified: intent CANCELED": _observed(IntentState.CANCELED, _NOTIFIED),
    "payment: approved": _verified(),
    "payment: approved, other amount": _verified(amount=AMOUNT - 1),
    "payment: approved, other currency": _verified(currency="ARS"),
    "payment: approved, other collector": _verified(collector="999"),
    "payment: approved, other reference": _verified(reference=_another_attempts_reference),
    "payment: approved, another sale": _verified(reference=_another_sales_reference),
    "payment: another payment approved": _verified(another=True),
    "payment: rejected": _verified("rejected"),
    "payment: pending": _verified("in_process"),
    "payment: refunded": _verified("refunded"),
    "payment: not found": _on_sale(
        lambda sale: PaymentNotFound(_payment_id(sale)) if sale.attempt else None),
    "payment: timeout": lambda state, world: None,
    "fraud: this payment": _on_sale(
        lambda sale: FraudAlerted(_payment_id(sale)) if sale.attempt else None),
    "supervisor: release": _on_sale(
        lambda sale: OverrideGiven(sale.sale_id, OverrideDecision.RELEASE, "seen paid", 7)),
    "supervisor: void": _on_sale(
        lambda sale: OverrideGiven(sale.sale_id, OverrideDecision.VOID, "customer left", 7)),
    "refund: 500": _refund_request(500),
    "refund: the rest": _refund_request(None),
    "refund: the first again": _refund_request(500, again=True),
    "refund sent: refunded": _refund_sent("REFUNDED"),
    "refund sent: pending": _refund_sent("PENDING"),
    "refund sent: failed": _refund_sent("FAILED"),
    "refund: not sent, busy": _call_answer(
        "send", lambda r, n: RefundNotSent(r, "busy", True)),
    "refund: unknown": _call_answer("send", lambda r, n: RefundOutcomeUnknown(r, "timeout")),
    "refund: refused, money back": _refund_rejected(True),
    "refund: refused": _refund_rejected(False),
    "refund polled: refunded": _refund_observed("REFUNDED"),
    "refund polled: pending": _refund_observed("PENDING"),
    "refund polled: failed": _refund_observed("FAILED"),
}
RESTART = "restart"
# STATUS and HANDOVER_CHECK change nothing: their moves check the answer and leave the
# node as it is.
STATUS_QUERIES: Mapping[str, tuple[int, str]] = {
    "register: status": (LANE, "c1"),
    "register: status, second purchase": (LANE, "c2"),
    "register: status, unknown id": (LANE, "c9"),
    "lane 2: status": (OTHER_LANE, "c1"),
}
HANDOVER_CHECK = "register: handover check"
# A move that is a timer: "timer: <owner> <kind>".
_TIMER = "timer: "


# --- one transition --------------------------------------------------------------------------


class _Broken(Exception):
    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


def _timer_event(owner: str, kind: TimerKind) -> Event:
    return ScheduleTimer(owner, kind, NOW).due_event()


def moves(state: CoreState, world: World) -> Iterable[tuple[str, Event | None]]:
    """Every move possible from here, with the event it stands for."""
    for name, build in MOVES.items():
        event = build(state, world)
        if event is not None or name == "payment: timeout":
            yield name, event
    for owner, kind in sorted(world.armed):
        yield f"{_TIMER}{owner} {kind.value}", _timer_event(owner, kind)
    for name in STATUS_QUERIES:
        yield name, None
    yield HANDOVER_CHECK, None
    yield RESTART, None


def _check_effects(before: CoreState, world: World, event: Event, result: Step) -> World:
    """Check one step's effects and fold them into the world's view."""
    if result.rejection is not None and result.rejection.broken_row:
        raise _Broken("table", result.rejection.reason)
    armed, calls = set(world.armed), set(world.calls)
    sent, unsent = set(world.sent), set(world.unsent)
    for effect in result.effects:
        match effect:
            case ScheduleTimer(owner=owner, kind=kind):
                armed.add((owner, kind))
            case CancelTimer(owner=owner, kind=kind):
                armed.discard((owner, kind))
            case CreateIntent(sale_id=sale_id, attempt=attempt):
                for earlier in range(1, attempt):
                    if (sale_id, earlier) not in world.absent:  # learnt from this event too
                        raise _Broken("create", f"{sale_id}: a create for attempt {attempt} "
                                      f"while attempt {earlier} may have been charged")
                if (sale_id, attempt) in sent and (sale_id, attempt) not in unsent:
                    raise _Broken("create", f"{sale_id}: attempt {attempt} sent again without "
                                  "proof that the first send never left")
                sent.add((sale_id, attempt))
                unsent.discard((sale_id, attempt))
                calls.add((sale_id, "create", attempt))
            case ReconcileAttempt(sale_id=sale_id, attempt=attempt):
                calls.add((sale_id, "reconcile", attempt))
            case SendRefund(refund_id=refund_id, amount_cents=amount):
                _check_send(result.state, refund_id, amount)
                calls.add((refund_id, "send", 0))
    if result.state is not before:
        _check_told(before, result)
    if armed == world.armed and calls == world.calls and sent == world.sent \
            and unsent == world.unsent:
        return world
    return dataclasses.replace(world, armed=frozenset(armed), calls=frozenset(calls),
                               sent=frozenset(sent), unsent=frozenset(unsent))


def _check_send(state: CoreState, refund_id: str, amount: int) -> None:
    refund = state.refunds.refunds[refund_id]
    sale = state.sales.get(refund.sale_id)
    if amount <= 0:
        raise _Broken("refunds", f"refund {refund_id} sends {amount} cents")
    # Admission is judged at the first send. A resend is the same request under the same
    # idempotency key, settling an unknown outcome: it is due whatever the sale became since
    # (Mercado Pago refunds a key once), or the refund would stay unknown for ever.
    first_send = refund.sends == 1
    if first_send and (sale is None or sale.state not in REFUNDABLE_SALE_STATES or not (
            sale.approved_payment_id is not None or sale.override is not None)):
        shown = "unknown" if sale is None else sale.state.value
        raise _Broken("refunds", f"refund {refund_id} sent for a sale {shown} without a "
                      "verified payment")


def _check_told(before: CoreState, result: Step) -> None:
    told = {(e.sale_id, e.state) for e in result.effects if isinstance(e, TellRegister)}
    for sale in result.state.sales.values():
        old = before.sales.get(sale.sale_id)
        entered = sale.is_final and (old is None or not old.is_final)
        if entered and (sale.sale_id, sale.state) not in told:
            raise _Broken("told", f"{sale.sale_id} became {sale.state.value} and its "
                          "register was not told")
    refunds_told = {(e.refund_id, e.status) for e in result.effects if isinstance(e, TellRefund)}
    for refund in result.state.refunds.refunds.values():
        old_refund = before.refunds.refunds.get(refund.refund_id)
        entered = refund.is_final and (old_refund is None or not old_refund.is_final)
        if entered and (refund.refund_id, refund.status) not in refunds_told:
            raise _Broken("told", f"refund {refund.refund_id} became {refund.status.value} "
                          "and its register was not told")


def _learn(world: World, event: Event, result: Step) -> World:
    """What the world learns from an event the core accepted (or, for facts, was shown)."""
    changes: dict[str, Any] = {}
    accepted = result.rejection is None
    if isinstance(event, PaymentVerified) and _approved_for_its_sale(event, result):
        assert result.sale_id is not None
        changes["approved"] = world.approved | {(result.sale_id, event.payment_id)}
    elif (isinstance(event, OverrideGiven) and event.decision is OverrideDecision.RELEASE
          and accepted):
        changes["released"] = world.released | {event.sale_id}
    elif (isinstance(event, AttemptNotFound) and accepted
          and (event.sale_id, "create", event.attempt) not in world.calls):
        # A search that finds nothing while the attempt's create is still in flight proves
        # nothing: the create may land a moment later.
        changes["absent"] = world.absent | {(event.sale_id, event.attempt)}
    elif isinstance(event, CreateNotSent) and accepted:
        changes["unsent"] = world.unsent | {(event.sale_id, event.attempt)}
    elif isinstance(event, IntentCreated | PaymentsFound):
        changes["created"] = world.created | {(event.sale_id, event.attempt)}
    return dataclasses.replace(world, **changes) if changes else world


def _approved_for_its_sale(event: PaymentVerified, result: Step) -> bool:
    """Whether the API said: this sale's own payment, approved, exactly as asked."""
    sale = result.state.sales.get(result.sale_id) if result.sale_id is not None else None
    return (sale is not None and event.status == "approved" and event.amount_cents == AMOUNT
            and event.currency == "BRL" and event.collector_id == COLLECTOR
            and event.external_reference == sale.reference
            and event.payment_id == f"P{sale.sale_id}")


def _answered(world: World, event: Event | None) -> World:
    """The world without the call this event answers, and without the timer that fired."""
    answered: Call | None = None
    match event:
        case IntentCreated() | CreateNotSent() | CreateOutcomeUnknown() | TerminalBusy() \
                | CreateRejected():
            answered = (event.sale_id, "create", event.attempt)
        case AttemptNotFound() | PaymentsFound():
            answered = (event.sale_id, "reconcile", event.attempt)
        case RefundSent() | RefundNotSent() | RefundOutcomeUnknown() | RefundRejected():
            answered = (event.refund_id, "send", 0)
    calls = world.calls if answered not in world.calls else world.calls - {answered}
    armed = world.armed
    if event is not None and type(event).__name__ in ("TimerExpired", "RefundTimerExpired"):
        owner = getattr(event, "sale_id", None) or getattr(event, "refund_id", "")
        kind = getattr(event, "timer", TimerKind.REFUND)
        armed = armed - {(owner, kind)}
    if calls is world.calls and armed == world.armed:
        return world
    return dataclasses.replace(world, calls=calls, armed=armed)


def _attempt_possible(world: World, event: Event | None) -> bool:
    # The API proves absent only an attempt it never created.
    return not (isinstance(event, AttemptNotFound)
                and (event.sale_id, event.attempt) in world.created)


def _check_state(before: CoreState | None, state: CoreState, world: World) -> None:
    lanes: dict[int, str] = {}
    terminals: dict[str, str] = {}
    for sale in state.sales.values():
        old = before.sales.get(sale.sale_id) if before else None
        if old is not sale:
            _check_sale_change(old, sale, state, world)
        if not sale.is_final:
            _check_sale_way_out(sale, world)
            _check_admitted(sale, lanes, terminals)
    for refund in state.refunds.refunds.values():
        old_refund = before.refunds.refunds.get(refund.refund_id) if before else None
        if old_refund is not refund:
            _check_refund_change(old_refund, refund)
        if not refund.is_final:
            _check_refund_way_out(refund, world)
    for sale_id in state.refunds.by_sale:
        paid = state.sales[sale_id].amount_cents if sale_id in state.sales else 0
        committed = state.refunds.committed_cents(sale_id)
        if committed > paid:
            raise _Broken("refunds", f"{sale_id}: {committed} cents refunded or refunding, "
                          f"{paid} paid")


def _check_admitted(sale: Sale, lanes: dict[int, str], terminals: dict[str, str]) -> None:
    """Note an unfinished sale's lane and terminal; two sales on one of them break a rule."""
    other = lanes.setdefault(sale.lane, sale.sale_id)
    if other != sale.sale_id:
        raise _Broken("admission", f"{other} and {sale.sale_id} are both in progress on "
                      f"lane {sale.lane}")
    if sale.state in TERMINAL_HOLDING_STATES:
        other = terminals.setdefault(sale.terminal_id, sale.sale_id)
        if other != sale.sale_id:
            raise _Broken("admission", f"{other} and {sale.sale_id} both hold terminal "
                          f"{sale.terminal_id}: the second intent may go where the first "
                          "may be charging")


def _api_approved(sale: Sale, world: World) -> bool:
    """Whether the API approved the payment this sale holds as approved."""
    return (sale.approved_payment_id is not None
            and (sale.sale_id, sale.approved_payment_id) in world.approved)


def _supervisor_released(sale: Sale, world: World) -> bool:
    """Whether a supervisor's journaled release stands for this sale."""
    return (sale.sale_id in world.released and sale.override is not None
            and sale.override.decision is OverrideDecision.RELEASE)


def _check_sale_change(old: Sale | None, sale: Sale, state: CoreState, world: World) -> None:
    if sale.state in _GOODS_OUT:
        if not (_api_approved(sale, world) or _supervisor_released(sale, world)):
            raise _Broken("handover", f"{sale.sale_id} is {sale.state.value} without a payment "
                          "the API approved for it or a supervisor's release")
        if sale.state is SaleState.APPROVED and sale.approved_payment_id in state.fraud_alerts:
            raise _Broken("handover", f"{sale.sale_id} is approved on payment "
                          f"{sale.approved_payment_id}, which a fraud alert names")
    if old is not None:
        if old.is_final and old.state is not sale.state:
            raise _Broken("backwards", f"{sale.sale_id} left final state {old.state.value} "
                          f"for {sale.state.value}")
        if sale.attempt < old.attempt:
            raise _Broken("backwards", f"{sale.sale_id}: attempt {old.attempt} → {sale.attempt}")
        if (old.intent_state is not None and (sale.intent_state is None or
                _INTENT_RANK[sale.intent_state] < _INTENT_RANK[old.intent_state])):
            raise _Broken("backwards", f"{sale.sale_id}: intent {old.intent_state} → "
                          f"{sale.intent_state}")


def _cleared(sale: Sale, state: CoreState, world: World) -> bool:
    """Whether the goods may leave on what the world knows: a supervisor's release, or a
    payment the API approved for the sale that no fraud alert names."""
    if sale.is_final:
        # Rule handover held its approval or release to the world's facts when it entered
        # this state, and it never changes again (the world forgets them then).
        released = sale.override is not None and sale.override.decision is \
            OverrideDecision.RELEASE
        verified = sale.approved_payment_id is not None
    else:
        released, verified = _supervisor_released(sale, world), _api_approved(sale, world)
    return released or (verified and sale.approved_payment_id not in state.fraud_alerts)


def _check_handover_check(state: CoreState, world: World) -> None:
    """The daemon's answer to HANDOVER_CHECK for the register's sale."""
    sale = state.sale_of_request(LANE, "c1")
    if sale is not None and answers.goods_may_leave(state, sale) \
            and not _cleared(sale, state, world):
        raise _Broken("handover", f"HANDOVER_CHECK c1 says allowed=yes for {sale.sale_id} "
                      f"{sale.state.value} without a payment the API approved for it that "
                      "no fraud alert names, or a supervisor's release")


def _check_status(state: CoreState, world: World, lane: int, correlation_id: str) -> None:
    """The daemon's answer to this STATUS, held to the sale the register asked for."""
    answer = answers.status(state, lane, correlation_id)
    asked = [s for s in state.sales.values()
             if s.lane == lane and s.correlation_id == correlation_id]
    sale = max(asked, key=lambda s: (s.requested_at, s.sale_id)) if asked else None
    said = (f"STATUS {correlation_id} on lane {lane} says {answer.sale_id or 'unknown'} "
            f"{answer.state.value if answer.state else ''} handover="
            f"{'yes' if answer.handover else 'no'}")
    if sale is None:
        if answer.state is not None or answer.handover:
            raise _Broken("status", f"{said}, but that register never asked for a sale "
                          f"under {correlation_id}")
        return
    if answer.sale_id != sale.sale_id or answer.state is not sale.state \
            or answer.amount_cents != sale.amount_cents:
        raise _Broken("status", f"{said} (amount {answer.amount_cents}); the sale asked for is "
                      f"{sale.sale_id}, {sale.state.value}, {sale.amount_cents} cents")
    cleared = _cleared(sale, state, world)
    if answer.handover and not cleared:
        raise _Broken("status", f"{said} without a payment the API approved for "
                      f"{sale.sale_id} that no fraud alert names, or a supervisor's release")
    if answer.handover != (cleared and sale.state in HANDOVER_ALLOWED_STATES):
        raise _Broken("status", f"{said}: the goods may leave exactly in approved, "
                      "overridden and handover_unconfirmed, with that payment or release")


def _check_sale_way_out(sale: Sale, world: World) -> None:
    if sale.state is not SaleState.BLOCKED:
        timers = any(owner == sale.sale_id for owner, _ in world.armed)
        calls = any(c[0] == sale.sale_id and c[1] == "create" for c in world.calls)
        if not (timers or calls):
            raise _Broken("way out", f"{sale.sale_id} is {sale.state.value} with no timer "
                          "armed and no answer to wait for")


def _check_refund_change(old: Refund | None, refund: Refund) -> None:
    if old is not None and old.is_final and old != refund:
        raise _Broken("backwards", f"refund {refund.refund_id} changed after "
                      f"{old.status.value}")
    if refund.status in COMMITTED_REFUND_STATUSES and refund.amount_cents <= 0:
        raise _Broken("refunds", f"refund {refund.refund_id} commits {refund.amount_cents}")


def _check_refund_way_out(refund: Refund, world: World) -> None:
    timers = (refund.refund_id, TimerKind.REFUND) in world.armed
    calls = any(c[0] == refund.refund_id for c in world.calls)
    if not (timers or calls):
        raise _Broken("way out", f"refund {refund.refund_id} is {refund.status.value} with "
                      "no timer armed and no answer to wait for")


def _step(state: CoreState, event: Event, tables: Tables) -> Step:
    return machine.step(state, event, now=NOW, policy=POLICY, table=tables.sales,
                        refund_table=tables.refunds)


def _forget_settled(before: CoreState, after: CoreState, world: World) -> World:
    """The world without its facts about sales that just became final.

    A final sale never changes again, so no rule about it is checked again; keeping what the
    world knew of its payments and attempts would only tell apart states with one future.
    """
    if after is before:
        return world
    settled = {sale_id for sale_id, sale in after.sales.items() if sale.is_final
               and (sale_id not in before.sales or not before.sales[sale_id].is_final)}
    if not settled:
        return world
    return dataclasses.replace(
        world,
        approved=frozenset(f for f in world.approved if f[0] not in settled),
        released=world.released - settled,
        absent=frozenset(f for f in world.absent if f[0] not in settled),
        created=frozenset(f for f in world.created if f[0] not in settled),
        sent=frozenset(f for f in world.sent if f[0] not in settled),
        unsent=frozenset(f for f in world.unsent if f[0] not in settled),
    )


def _restart(node: Node) -> tuple[CoreState, World]:
    restored = CoreState.from_json(node.state.to_json())
    if restored != node.state:
        raise _Broken("snapshot", "the snapshot restores another state")
    effects: list[Effect] = [*recover(restored, NOW, POLICY),
                             *refunds.recover(restored.refunds, NOW)]
    world = dataclasses.replace(node.world, armed=frozenset(), calls=frozenset())
    armed = {(e.owner, e.kind) for e in effects if isinstance(e, ScheduleTimer)}
    calls = {(e.sale_id, "reconcile", e.attempt) for e in effects
             if isinstance(e, ReconcileAttempt)}
    return restored, dataclasses.replace(world, armed=frozenset(armed), calls=frozenset(calls))


def advance(node: Node, name: str, event: Event | None, tables: Tables) -> Node | None:
    """The node after one move (None when the world cannot make it, ``node`` itself when
    nothing happened); raise _Broken when a rule breaks."""
    if name == RESTART:
        restored, world = _restart(node)
        return Node(restored, world, node.depth + 1, (*node.path, name), (*node.events, None))
    if name in STATUS_QUERIES:
        _check_status(node.state, node.world, *STATUS_QUERIES[name])
        return node
    if name == HANDOVER_CHECK:
        _check_handover_check(node.state, node.world)
        return node
    if event is None:
        return Node(node.state, node.world, node.depth + 1, (*node.path, name),
                    (*node.events, None))
    if not _attempt_possible(node.world, event):
        return None
    world = _answered(node.world, event)
    result = _step(node.state, event, tables)
    if result.state is node.state and not result.effects and world == node.world:
        return node  # nothing happened: the parent's node already stands for it
    world = _learn(world, event, result)
    world = _check_effects(node.state, world, event, result)
    _check_state(node.state, result.state, world)
    world = _forget_settled(node.state, result.state, world)
    if isinstance(event, SaleRequested):
        # Asked at once, before canonical() may drop a refused sale of the second lane.
        asked = dict.fromkeys([(event.lane, event.correlation_id), *STATUS_QUERIES.values()])
        for lane, correlation_id in asked:
            _check_status(result.state, world, lane, correlation_id)
    return Node(result.state, world, node.depth + 1, (*node.path, name), (*node.events, event))


# --- the search ------------------------------------------------------------------------------


def canonical(state: CoreState) -> Hashable:
    """What decides a state's future: its records without their technician's text.

    ``detail`` is only shown (no rule reads it), so states that differ in it alone have the
    same future. Every index is derived from the records and the fraud alerts.

    A sale the second lane asked for and the core refused is left out too: it is final
    from the start, has no intent, payment, timer or reference for any event to reach, and
    its lane asks nothing else of it (its STATUS was checked when it was refused). The state
    with it has the future of the state without it, which is where the refusal came from,
    so the move adds transitions but no states. One the core admitted is kept (and has
    already broken rule admission).
    """
    sales = (state.sales[k] for k in sorted(state.sales))
    return (
        tuple(_SALE_KEY(sale) for sale in sales if not _inert(sale)),
        tuple(_REFUND_KEY(state.refunds.refunds[k]) for k in sorted(state.refunds.refunds)),
        state.fraud_alerts,
        state.forgotten_through,
    )


def _inert(sale: Sale) -> bool:
    return sale.lane != LANE and sale.is_final and sale.attempt == 0


def _decisive_fields(cls: type[Any]) -> Callable[[Any], tuple[Any, ...]]:
    return operator.attrgetter(*(f.name for f in dataclasses.fields(cls) if f.name != "detail"))


_SALE_KEY = _decisive_fields(Sale)
_REFUND_KEY = _decisive_fields(Refund)


def explore(depth: int, *, tables: Tables | None = None,
            progress: Callable[[int, int, int, float], None] | None = None,
            deadline: float | None = None) -> Report:
    """Explore every sequence of up to ``depth`` moves, breadth first; stop at a violation.

    ``deadline`` (a ``time.monotonic`` value) stops the search there: the report then holds
    the depths finished by then and ``stopped`` is set.
    """
    tables = tables or Tables()
    started = time.monotonic()
    root = Node(CoreState.empty(STORE), World(), 0)
    seen: set[tuple[Hashable, World]] = {(canonical(root.state), root.world)}
    report = Report(depth=0, states=1)
    frontier = [root]
    for level in range(1, depth + 1):
        next_frontier: list[Node] = []
        transitions = 0
        for node in frontier:
            if deadline is not None and time.monotonic() > deadline:
                report.stopped = True
                report.seconds = time.monotonic() - started
                return report
            for name, event in moves(node.state, node.world):
                transitions += 1
                try:
                    child = advance(node, name, event, tables)
                except _Broken as broken:
                    report.transitions += transitions
                    report.seconds = time.monotonic() - started
                    report.violation = Violation(broken.rule, broken.detail,
                                                 (*node.path, name), (*node.events, event))
                    return report
                if child is None or child is node:
                    continue
                if child.state is node.state and child.world == node.world:
                    continue
                key = (canonical(child.state), child.world)
                if key in seen:
                    continue
                seen.add(key)
                next_frontier.append(child)
        report.transitions += transitions
        report.states += len(next_frontier)
        report.depth = level
        elapsed = time.monotonic() - started
        report.per_depth.append((level, len(next_frontier), transitions, elapsed))
        if progress is not None:
            progress(level, len(next_frontier), transitions, elapsed)
        frontier = next_frontier
        if not frontier:
            break
    report.seconds = time.monotonic() - started
    return report


def replay(path: Sequence[str], *, tables: Tables | None = None) -> list[Violation]:
    """Play these moves from the start; the violation they reach, if any (a test's check)."""
    tables = tables or Tables()
    node = Node(CoreState.empty(STORE), World(), 0)
    for name in path:
        options = dict(moves(node.state, node.world))
        if name not in options:
            raise ValueError(f"move {name!r} is not possible after {list(node.path)}")
        try:
            child = advance(node, name, options[name], tables)
        except _Broken as broken:
            return [Violation(broken.rule, broken.detail, (*node.path, name),
                              (*node.events, options[name]))]
        if child is None:
            raise ValueError(f"move {name!r} is not possible after {list(node.path)}")
        node = child
    return []


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: explore, print the figures, and any counterexample."""
    parser = argparse.ArgumentParser(
        prog="python -m pointd.core.explore",
        description="Explore every sequence of events up to a depth against the money rules.")
    parser.add_argument("--depth", type=int, default=6, help="moves per sequence (default 6)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop after this many seconds (the depths finished are reported)")
    args = parser.parse_args(argv)
    if args.depth < 1:
        parser.error("--depth must be at least 1")
    kinds = len(MOVES) + len(STATUS_QUERIES) + 3
    print(f"exploring to depth {args.depth}: {kinds} kinds of move "
          "(timers counted as one, restart as one)")
    print(f"{'depth':>5} {'new states':>11} {'transitions':>12} {'seconds':>9}")

    def show(level: int, states: int, transitions: int, elapsed: float) -> None:
        print(f"{level:>5} {states:>11} {transitions:>12} {elapsed:>9.2f}", flush=True)

    deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds
    report = explore(args.depth, progress=show, deadline=deadline)
    if report.stopped:
        print(f"stopped after {args.max_seconds:g} s, during depth {report.depth + 1}")
    print(f"explored {report.states} states and {report.transitions} transitions to depth "
          f"{report.depth} in {report.seconds:.2f} s")
    if report.violation is not None:
        print(report.violation.report())
        return 1
    print("no violation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
