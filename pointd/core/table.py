"""The table discipline both state machines keep: rows, declared targets, one way to run a row.

Theory of operation
-------------------
A sale (``pointd.core.machine``) and a refund (``pointd.core.refunds``) are each decided by
a table from (the record's state, a trigger) to a ``Transition``: the handler to run and
every state it may move the record to. A trigger is an event type, or — when one event type
means different things — the type qualified by a value the machine derives from the event
and the record before the lookup, as h11's ``_state.py`` keys a server's ``Response`` as
``(Response, _SWITCH_CONNECT)``: an intent observation by the intent state it reports, a
verified payment by the gate's verdict, a timer by its kind. So a handler never asks which
state its record is in: its row already says, and a state that needs other behaviour gets
its own row.

``run_row`` is the one runner. It looks the row up (a missing row is a ``Rejection``:
nothing changes), runs the handler on a ``Tx`` — one event's work on one record, collecting
the new record, the effects and any rejection — and then holds the handler to its row: a
record that ended up in a state the row does not declare is not committed. The step is
rejected, the handler's effects are dropped, and a CRITICAL technician alert names the row,
because a handler that breaks its row is a bug that could move money, and it must be loud
and harmless rather than silent. Otherwise the record is committed with ``updated_at`` set
to now, through the machine's own ``commit`` (which keeps its indexes).

What differs between sales and refunds — which field holds the state, which timers a state
keeps, what entering a state implies, how the register is told — is a ``RecordKind``; the
rest (moving, timers, telling, alerts, the targets check) is written once, here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from pointd.core.effects import (
    AlertTechnician,
    CancelTimer,
    Effect,
    Notice,
    ScheduleTimer,
    Severity,
)
from pointd.core.events import Event, TimerKind
from pointd.core.gate import Judgement
from pointd.core.policy import Policy
from pointd.core.records import CoreState, RefundBook, Timers
from pointd.core.states import Admission

# An event type, or an event type qualified by what the machine derived from the event.
Trigger = type[Any] | tuple[type[Any], Hashable]


class Timed(Protocol):
    """A record that keeps pending timers (a Sale, a Refund)."""

    @property
    def timers(self) -> Timers:
        """The pending timers and their due times."""
        ...


R = TypeVar("R", bound=Timed)


class RecordKind(Protocol[R]):
    """What one state machine's records need from the shared runner."""

    name: str  # "sale" or "refund", for messages

    def state_of(self, record: R) -> StrEnum:
        """The record's state."""
        ...

    def owner_of(self, record: R) -> str:
        """The record's id: what its timers are keyed by."""
        ...

    def sale_of(self, record: R) -> str:
        """The sale the record belongs to (technician alerts name it)."""
        ...

    def owned_timers(self, state: StrEnum) -> frozenset[TimerKind]:
        """The timers a record in this state keeps; entering it disarms the others."""
        ...

    def entering(self, record: R, state: StrEnum) -> R:
        """The record in ``state``, with whatever else entering it from here implies."""
        ...

    def telling(self, record: R, notice: Notice | None) -> Effect:
        """The effect that shows the record's standing on its register."""
        ...

    def commit(self, core: CoreState, before: R, after: R) -> CoreState:
        """``core`` holding ``after`` instead of ``before``, indexes kept."""
        ...

    def step_ids(self, core: CoreState, record: R) -> tuple[str | None, str | None]:
        """The (sale id, refund id) a Step about this record reports."""
        ...


@dataclass(frozen=True, slots=True)
class Transition(Generic[R]):
    """One table row: the handler and every state it may move the record to."""

    handler: Callable[[Tx[R], Any], None]
    targets: frozenset[StrEnum]


Table = Mapping[tuple[StrEnum, Trigger], Transition[R]]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event changed nothing (it is logged, never raised)."""

    reason: str
    event: Event
    # The handler broke its row (moved to an undeclared state): a bug, alerted as critical.
    broken_row: bool = False

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one event: new state, effects in order, and any rejection.

    ``judgement`` is the handover gate's, when the event was a verified payment routed to a
    sale; ``admission`` says how a sale request was answered; ``refund_id`` names the refund
    a refund event concerned.
    """

    state: CoreState
    effects: tuple[Effect, ...]
    rejection: Rejection | None
    sale_id: str | None  # the sale the event was routed to (the journal indexes it)
    judgement: Judgement | None = None
    admission: Admission | None = None
    refund_id: str | None = None

    @property
    def book(self) -> RefundBook:
        """The refund book after the event."""
        return self.state.refunds


def trigger_name(trigger: Trigger) -> str:
    """A trigger as the diagram and messages show it: ``TimerExpired(poll)``."""
    if isinstance(trigger, tuple):
        event_type, qualifier = trigger
        return f"{event_type.__name__}({qualifier})"
    return trigger.__name__


class Tx(Generic[R]):
    """One event's work on one record: collects the new record, effects and a rejection."""

    def __init__(self, kind: RecordKind[R], core: CoreState, record: R, *, now: float,
                 policy: Policy, judgement: Judgement | None = None) -> None:
        self.kind = kind
        self.core = core
        self.record = record
        self.now = now
        self.policy = policy
        self.judgement = judgement  # the gate's, for a verified payment
        self.effects: list[Effect] = []
        self.rejection: str | None = None

    def update(self, **changes: Any) -> None:
        self.record = dataclasses.replace(self.record, **changes)  # type: ignore[type-var]

    def reject(self, reason: str) -> None:
        self.rejection = reason

    def emit(self, effect: Effect) -> None:
        self.effects.append(effect)

    def alert(self, severity: Severity, message: str) -> None:
        self.emit(AlertTechnician(self.kind.sale_of(self.record), severity, message))

    def move(self, state: StrEnum, *, notice: Notice | None = None, tell: bool = True,
             **changes: Any) -> None:
        """Enter ``state`` (with ``changes``): disarm the timers it does not keep, then tell."""
        kept = self.kind.owned_timers(state)
        owner = self.kind.owner_of(self.record)
        for kind, _ in self.record.timers:
            if kind not in kept:
                self.emit(CancelTimer(owner, kind))
        timers = tuple((k, at) for k, at in self.record.timers if k in kept)
        self.update(timers=timers, **changes)
        self.record = self.kind.entering(self.record, state)
        if tell:
            self.tell(notice)

    def tell(self, notice: Notice | None = None) -> None:
        self.emit(self.kind.telling(self.record, notice))

    def schedule_at(self, kind: TimerKind, at: float) -> None:
        self.fired(kind)
        self.update(timers=(*self.record.timers, (kind, at)))
        self.emit(ScheduleTimer(self.kind.owner_of(self.record), kind, at))

    def schedule(self, kind: TimerKind, delay: float) -> None:
        self.schedule_at(kind, self.now + delay)

    def cancel_timer(self, kind: TimerKind) -> None:
        if any(pending is kind for pending, _ in self.record.timers):
            self.fired(kind)
            self.emit(CancelTimer(self.kind.owner_of(self.record), kind))

    def disarm(self, kind: TimerKind) -> None:
        """Disarm the timer of this kind even if the record does not list it.

        Restart recovery arms some timers in the engine only (a CREATING sale's RECONCILE,
        ``pointd.core.recovery``), so ``cancel_timer`` cannot see them.
        """
        self.fired(kind)
        self.emit(CancelTimer(self.kind.owner_of(self.record), kind))

    def fired(self, kind: TimerKind) -> None:
        """Forget the pending timer of this kind (it fired, or is being replaced)."""
        self.update(timers=tuple((k, at) for k, at in self.record.timers if k is not kind))


def run_row(kind: RecordKind[R], table: Table[R], core: CoreState, record: R, *,
            trigger: Trigger, event: Event, now: float, policy: Policy,
            judgement: Judgement | None = None) -> Step:
    """Run the row for ``(record's state, trigger)`` and hold it to its targets."""
    source = kind.state_of(record)
    sale_id, refund_id = kind.step_ids(core, record)
    row = table.get((source, trigger))
    if row is None:
        reason = f"{trigger_name(trigger)} does not apply to a {kind.name} in state {source}"
        return Step(core, (), Rejection(reason, event), sale_id, judgement,
                    refund_id=refund_id)
    tx = Tx(kind, core, record, now=now, policy=policy, judgement=judgement)
    row.handler(tx, event)
    target = kind.state_of(tx.record)
    if target is not source and target not in row.targets:
        owner = kind.owner_of(record)
        reason = (f"the {trigger_name(trigger)} row of a {kind.name} in state {source} moved "
                  f"it to {target}, which the row does not declare")
        alert = AlertTechnician(kind.sale_of(record), Severity.CRITICAL,
                                f"{kind.name} {owner}: {reason}; the event was rejected and "
                                "nothing was done. This is a pointd bug: report it")
        return Step(core, (alert,), Rejection(reason, event, broken_row=True), sale_id,
                    judgement, refund_id=refund_id)
    rejection = None if tx.rejection is None else Rejection(tx.rejection, event)
    if tx.record == record:
        return Step(core, tuple(tx.effects), rejection, sale_id, judgement, refund_id=refund_id)
    after = dataclasses.replace(tx.record, updated_at=now)  # type: ignore[type-var]
    return Step(kind.commit(core, record, after), tuple(tx.effects), rejection, sale_id,
                judgement, refund_id=refund_id)
