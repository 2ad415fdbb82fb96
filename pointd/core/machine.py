"""The sale state machine: one table from (sale state, event type) to a handler.

Theory of operation
-------------------
Two rules, after h11: everything that decides a sale's fate lives in this file, and this
file does no I/O. ``step(state, event, now=..., policy=...)`` returns the new immutable
``CoreState``, the effects to run (after the engine has journaled the event) and, when the
event does not apply, a ``Rejection`` to log — never an exception.

``SaleRequested`` is admitted (or refused) before any table lookup, because no sale exists
yet. Every other event is routed to one sale — by its sale id, by the lane, by the intent
id or payment id indexes, or by the external_reference it carries — and then looked up in
``TRANSITIONS``. A pair missing from the table is rejected and changes nothing. Each table
row declares the states its handler may move to; the tests check the handlers keep to it
and ``pointd.core.diagram`` draws docs/sale-lifecycle.md's diagram from those declarations.

The money-safety rules (architecture.md §2) are kept here as follows:

1. Only ``PaymentVerified`` judged ``RELEASE`` by ``gate.judge_payment`` moves a sale to
   APPROVED, and only a supervisor's ``OverrideGiven(release)`` moves it to OVERRIDDEN;
   ``IntentObserved`` (FINISHED or not) at most starts verification.
2. CONFIRMATION_REQUIRED holds the sale (HELD); the VERIFY timer fetches the payment with
   doubling back-off; the ESCALATE timer escalates; every restart re-tells the hold.
3. ``CreateIntent`` for attempt n+1 is emitted only by ``AttemptNotFound`` for attempt n;
   an unknown outcome leads to CREATE_UNKNOWN and ``ReconcileAttempt``. A resend of the
   same attempt happens only after ``CreateNotSent``.
4. Admission refuses a lane with an unfinished sale and a terminal held by another sale.
5. Intent states are ranked; a lower or equal rank is stale or a duplicate and changes
   nothing; final sale states have no outgoing transitions.
6. Truth from the API: no notification reaches the table. The engine turns a relayed
   notification into a fetch (``GET`` intent or order, then ``/v1/payments``), so every
   ``IntentObserved`` the core acts on is an API answer, and the payment a sale verifies
   is the one that answer names. An ``IntentObserved`` from a notification (only journals
   older than schema 4 hold them; see ``pointd.journal.upgrades``) is rejected unread.

Forgetting settled sales
------------------------
A daemon that runs for years cannot keep every sale in memory. ``SettledSalesForgotten``
(journaled like any event, so replay forgets where the live daemon did) runs
``forget_settled``: final sales last changed before a time leave ``sales`` and the
``intents``/``payments``/``overrides`` entries that name them. Final sales never change
again, so no decision about a kept sale depended on them except through those indexes;
what changes is only that a late event naming a forgotten intent, payment or sale finds no
sale and is rejected (harmless: it cannot be adopted elsewhere, because its
external_reference names the forgotten sale, and rule 1's gate still checks any payment a
kept sale is shown). Fraud alerts are all kept: they are few and the gate reads them. One
more guard keeps a forgotten sale id from being reused: ``forgotten_through`` is the
greatest id forgotten, and admission refuses any id at or below it. The daemon mints
time-ordered ids (``pointd.app.checkout.new_sale_id``), so a fresh id always sorts above
ids forgotten days ago; only a clock that went back by days is refused (and alerted).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

from pointd.core.effects import (
    AlertTechnician,
    CancelIntent,
    CancelTimer,
    CreateIntent,
    Effect,
    FetchIntent,
    FetchPayment,
    Notice,
    ReconcileAttempt,
    ScheduleTimer,
    Severity,
    TellRegister,
)
from pointd.core.errors import StateDecodeError
from pointd.core.events import (
    AttemptNotFound,
    CancelRefused,
    CancelRequested,
    CreateNotSent,
    CreateOutcomeUnknown,
    CreateRejected,
    Event,
    FraudAlerted,
    HandoverConfirmed,
    IntentCreated,
    IntentObserved,
    IntentState,
    ObservationSource,
    OverrideDecision,
    OverrideGiven,
    PaymentNotFound,
    PaymentsFound,
    PaymentVerified,
    SaleRequested,
    SettledSalesForgotten,
    TerminalBusy,
    TimerExpired,
    TimerKind,
)
from pointd.core.gate import APPROVED_STATUS, Verdict, judge_payment
from pointd.core.persistent import PersistentMap
from pointd.core.policy import Policy, backoff
from pointd.core.reference import (
    MAX_LANE,
    SALE_ID_PATTERN,
    STORE_ID_PATTERN,
    ExternalReference,
    ExternalReferenceError,
)
from pointd.core.states import (
    FINAL_STATES,
    GOODS_RELEASED_STATES,
    HANDOVER_ALLOWED_STATES,
    Refusal,
    SaleState,
)

__all__ = [
    "STATE_FORMAT",
    "TRANSITIONS",
    "CoreState",
    "Override",
    "Policy",
    "Rejection",
    "Sale",
    "Step",
    "Transition",
    "forget_settled",
    "forgettable",
    "is_retry",
    "step",
]

S = SaleState

# The JSON layout of ``CoreState.to_json``; a reader refuses any other but the older ones.
STATE_FORMAT = "pointd-core-state/2"
# /1 lacked Sale.approval_withdrawn (added with the WITHDRAW message; False before it).
_OLDER_FORMATS = {"pointd-core-state/1": {"approval_withdrawn": False}}

# Intent states by progress; equal or lower rank than what a sale has seen is stale.
INTENT_RANK: Mapping[IntentState, int] = {
    IntentState.OPEN: 1,
    IntentState.ON_TERMINAL: 2,
    IntentState.PROCESSING: 3,
    IntentState.PROCESSED: 4,
    IntentState.FINISHED: 5,
    IntentState.CONFIRMATION_REQUIRED: 5,
    IntentState.CANCELED: 5,
    IntentState.ERROR: 5,
    IntentState.ABANDONED: 5,
}
FINAL_INTENT_STATES = frozenset(s for s, rank in INTENT_RANK.items() if rank == 5)
# Only these intent states carry the payment that settles the sale.
_PAID_INTENT_STATES = frozenset({IntentState.FINISHED, IntentState.CONFIRMATION_REQUIRED})
_ENDED_WITHOUT_PAYMENT = {
    IntentState.CANCELED: S.CANCELED,
    IntentState.ERROR: S.FAILED,
    IntentState.ABANDONED: S.ABANDONED,
}

# States in which a sale may have, or be about to have, a live intent on its terminal.
TERMINAL_HOLDING_STATES = frozenset(
    {S.REQUESTED, S.CREATING, S.CREATE_UNKNOWN, S.OPEN, S.ON_TERMINAL, S.PROCESSING, S.CANCELING}
)
# The timers each state keeps; moving to a state disarms the others.
OWNED_TIMERS: Mapping[SaleState, frozenset[TimerKind]] = {
    S.REQUESTED: frozenset({TimerKind.CREATE_RETRY}),
    S.CREATING: frozenset({TimerKind.RECONCILE}),  # armed only by recovery after a restart
    S.CREATE_UNKNOWN: frozenset({TimerKind.RECONCILE}),
    S.OPEN: frozenset({TimerKind.POLL, TimerKind.ABANDON}),
    S.ON_TERMINAL: frozenset({TimerKind.POLL}),
    S.PROCESSING: frozenset({TimerKind.POLL}),
    S.CANCELING: frozenset({TimerKind.POLL}),
    S.VERIFYING: frozenset({TimerKind.VERIFY, TimerKind.ESCALATE}),
    S.HELD: frozenset({TimerKind.VERIFY, TimerKind.ESCALATE}),
    S.ESCALATED: frozenset({TimerKind.VERIFY}),
    S.APPROVED: frozenset({TimerKind.HANDOVER}),
}
# Where a supervisor's override is accepted: the sale cannot settle without the API.
OVERRIDABLE_STATES = frozenset({S.CREATE_UNKNOWN, S.VERIFYING, S.HELD, S.ESCALATED, S.BLOCKED})


@dataclass(frozen=True, slots=True)
class Override:
    """A supervisor's journaled decision on one sale."""

    decision: OverrideDecision
    reason: str
    uid: int
    at: float

    def to_dict(self) -> dict[str, Any]:
        """The override as plain JSON-able values."""
        return {"decision": self.decision.value, "reason": self.reason, "uid": self.uid,
                "at": self.at}

    @classmethod
    def from_dict(cls, body: object, where: str = "override") -> Override:
        """Rebuild an override from ``to_dict``; raise StateDecodeError when malformed."""
        fields = _Fields(body, where, ("decision", "reason", "uid", "at"))
        return cls(fields.enum("decision", OverrideDecision), fields.text("reason"),
                   fields.integer("uid"), fields.number("at"))


@dataclass(frozen=True, slots=True)
class Sale:
    """Everything the core knows about one sale."""

    sale_id: str
    lane: int
    correlation_id: str
    amount_cents: int
    terminal_id: str
    state: SaleState
    requested_at: float
    updated_at: float
    refusal: Refusal | None = None
    attempt: int = 0  # current create attempt (0: none was ever made)
    reference: str | None = None  # the current attempt's external_reference
    attempt_started_at: float = 0.0
    sends: int = 0  # sends of the current attempt (more than one only after CreateNotSent)
    not_found_attempts: tuple[int, ...] = ()  # attempts reconciliation proved absent
    intent_id: str | None = None
    intent_state: IntentState | None = None
    payment_id: str | None = None
    approved_payment_id: str | None = None  # set only by a RELEASE verdict of the gate
    verify_round: int = 0
    verify_started_at: float | None = None
    reconcile_round: int = 0
    cancel_requested: bool = False
    # Left APPROVED other than by handover: the register must hear the approval withdrawn.
    approval_withdrawn: bool = False
    override: Override | None = None
    detail: str = ""  # the last reason worth showing a technician
    timers: tuple[tuple[TimerKind, float], ...] = ()  # pending timers and their due times

    @property
    def is_final(self) -> bool:
        """True once the sale can never change again."""
        return self.state in FINAL_STATES

    @property
    def may_hand_over(self) -> bool:
        """True when the goods may leave: verified approved payment or supervisor release."""
        if self.state not in HANDOVER_ALLOWED_STATES and self.state is not S.HANDED_OVER:
            return False
        if self.approved_payment_id is not None:
            return True
        return self.override is not None and self.override.decision is OverrideDecision.RELEASE

    def timer_due(self, kind: TimerKind) -> float | None:
        """When this sale's timer of this kind is due, or None if not pending."""
        return dict(self.timers).get(kind)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-able values (enums by value, tuples as lists)."""
        body: dict[str, Any] = {}
        for name in _SALE_FIELDS:
            value = getattr(self, name)
            if name == "override":
                value = None if value is None else value.to_dict()
            elif name == "timers":
                value = [[kind.value, at] for kind, at in value]
            elif name == "not_found_attempts":
                value = list(value)
            elif isinstance(value, SaleState | Refusal | IntentState):
                value = value.value
            body[name] = value
        return body

    @classmethod
    def from_dict(cls, body: object, where: str = "sale",
                  defaults: Mapping[str, Any] | None = None) -> Sale:
        """Rebuild a sale from ``to_dict``; raise StateDecodeError when malformed.

        ``defaults`` fills fields an older state format did not have.
        """
        if defaults and isinstance(body, dict):
            body = {**defaults, **body}
        f = _Fields(body, where, _SALE_FIELDS)
        timers = []
        for index, item in enumerate(f.items("timers")):
            if not isinstance(item, list) or len(item) != 2:
                raise StateDecodeError(f"{where}.timers[{index}]: expected [kind, due]")
            timer = _Fields({"kind": item[0], "at": item[1]}, f"{where}.timers[{index}]",
                            ("kind", "at"))
            timers.append((timer.enum("kind", TimerKind), timer.number("at")))
        attempts = _Fields({"n": f.items("not_found_attempts")}, where, ("n",))
        override = f.raw("override")
        return cls(
            sale_id=f.text("sale_id"), lane=f.integer("lane"),
            correlation_id=f.text("correlation_id"), amount_cents=f.integer("amount_cents"),
            terminal_id=f.text("terminal_id"), state=f.enum("state", SaleState),
            requested_at=f.number("requested_at"), updated_at=f.number("updated_at"),
            refusal=f.optional_enum("refusal", Refusal), attempt=f.integer("attempt"),
            reference=f.optional_text("reference"),
            attempt_started_at=f.number("attempt_started_at"), sends=f.integer("sends"),
            not_found_attempts=attempts.integers("n"),
            intent_id=f.optional_text("intent_id"),
            intent_state=f.optional_enum("intent_state", IntentState),
            payment_id=f.optional_text("payment_id"),
            approved_payment_id=f.optional_text("approved_payment_id"),
            verify_round=f.integer("verify_round"),
            verify_started_at=f.optional_number("verify_started_at"),
            reconcile_round=f.integer("reconcile_round"),
            cancel_requested=f.boolean("cancel_requested"),
            approval_withdrawn=f.boolean("approval_withdrawn"),
            override=None if override is None else Override.from_dict(override,
                                                                       f"{where}.override"),
            detail=f.text("detail"), timers=tuple(timers),
        )


@dataclass(frozen=True, slots=True)
class CoreState:
    """All sales and the indexes that keep one sale per lane and one intent per terminal."""

    store_id: str
    sales: PersistentMap[str, Sale] = field(default_factory=PersistentMap)
    lanes: PersistentMap[int, str] = field(default_factory=PersistentMap)  # lane → sale
    terminals: PersistentMap[str, str] = field(default_factory=PersistentMap)  # → sale
    intents: PersistentMap[str, str] = field(default_factory=PersistentMap)  # intent → sale
    payments: PersistentMap[str, str] = field(default_factory=PersistentMap)  # → sale
    fraud_alerts: frozenset[str] = frozenset()  # payment ids named by fraud alerts
    overrides: PersistentMap[str, Override] = field(default_factory=PersistentMap)
    # The greatest sale id ever forgotten: ids at or below it are never admitted again.
    forgotten_through: str = ""

    @classmethod
    def empty(cls, store_id: str) -> CoreState:
        """A state with no sales, for a store id valid in external references."""
        if not STORE_ID_PATTERN.fullmatch(store_id):
            raise ValueError(f"store id {store_id!r} must be 1-20 of [a-z0-9-]")
        return cls(store_id=store_id)

    def sale_on_lane(self, lane: int) -> Sale | None:
        """The lane's unfinished sale, if any."""
        sale_id = self.lanes.get(lane)
        return None if sale_id is None else self.sales[sale_id]

    def unfinished(self) -> tuple[Sale, ...]:
        """Every sale not yet in a final state, in sale-id order."""
        return tuple(sorted((s for s in self.sales.values() if not s.is_final),
                            key=lambda s: s.sale_id))

    def to_json(self) -> str:
        """The whole state as one JSON document (format ``STATE_FORMAT``), stable order."""
        body = {
            "format": STATE_FORMAT,
            "store_id": self.store_id,
            "forgotten_through": self.forgotten_through,
            "sales": [self.sales[sale_id].to_dict() for sale_id in sorted(self.sales)],
            "lanes": sorted([lane, sale_id] for lane, sale_id in self.lanes.items()),
            "terminals": dict(sorted(self.terminals.items())),
            "intents": dict(sorted(self.intents.items())),
            "payments": dict(sorted(self.payments.items())),
            "fraud_alerts": sorted(self.fraud_alerts),
            "overrides": {sale_id: self.overrides[sale_id].to_dict()
                          for sale_id in sorted(self.overrides)},
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> CoreState:
        """Rebuild a state from ``to_json``; raise StateDecodeError when malformed.

        Besides types, the indexes must name sales the document holds, so a damaged
        snapshot is refused rather than routing events to sales that do not exist.
        """
        try:
            body = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StateDecodeError(f"state is not JSON: {exc}") from None
        f = _Fields(body, "state", ("format", "store_id", "forgotten_through", "sales",
                                    "lanes", "terminals", "intents", "payments",
                                    "fraud_alerts", "overrides"))
        document_format = f.raw("format")
        if document_format != STATE_FORMAT and document_format not in _OLDER_FORMATS:
            raise StateDecodeError(f"state format {str(document_format)[:40]!r} is not "
                                   f"{STATE_FORMAT}")
        defaults = _OLDER_FORMATS.get(document_format)
        store_id = f.text("store_id")
        if not STORE_ID_PATTERN.fullmatch(store_id):
            raise StateDecodeError(f"state.store_id {store_id[:40]!r} is not a store id")
        sales: dict[str, Sale] = {}
        for index, item in enumerate(f.items("sales")):
            sale = Sale.from_dict(item, f"state.sales[{index}]", defaults)
            if sale.sale_id in sales:
                raise StateDecodeError(f"state.sales: sale {sale.sale_id} appears twice")
            sales[sale.sale_id] = sale
        lanes: dict[int, str] = {}
        for index, item in enumerate(f.items("lanes")):
            if not isinstance(item, list) or len(item) != 2:
                raise StateDecodeError(f"state.lanes[{index}]: expected [lane, sale_id]")
            pair = _Fields({"lane": item[0], "sale": item[1]}, f"state.lanes[{index}]",
                           ("lane", "sale"))
            lanes[pair.integer("lane")] = pair.text("sale")
        overrides = {sale_id: Override.from_dict(value, f"state.overrides.{sale_id}")
                     for sale_id, value in f.mapping("overrides").items()}
        state = cls(
            store_id=store_id,
            sales=PersistentMap(sales),
            lanes=PersistentMap(lanes),
            terminals=PersistentMap(f.text_mapping("terminals")),
            intents=PersistentMap(f.text_mapping("intents")),
            payments=PersistentMap(f.text_mapping("payments")),
            fraud_alerts=frozenset(f.texts("fraud_alerts")),
            overrides=PersistentMap(overrides),
            forgotten_through=f.text("forgotten_through"),
        )
        for name, entries in (("lanes", state.lanes), ("terminals", state.terminals),
                              ("intents", state.intents), ("payments", state.payments)):
            for key, sale_id in entries.items():
                if sale_id not in sales:
                    raise StateDecodeError(f"state.{name}: {key} names unknown sale {sale_id}")
        for sale_id in overrides:
            if sale_id not in sales:
                raise StateDecodeError(f"state.overrides: unknown sale {sale_id}")
        return state


_SALE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Sale))

_E = TypeVar("_E", bound=StrEnum)


class _Fields:
    """Typed, strict reads of one JSON object of a state document."""

    def __init__(self, body: object, where: str, names: Iterable[str]) -> None:
        if not isinstance(body, dict):
            raise StateDecodeError(f"{where}: expected an object")
        expected = set(names)
        unknown = sorted(str(key) for key in set(body) - expected)
        missing = sorted(expected - set(body))
        if unknown:
            raise StateDecodeError(f"{where}: unknown fields {unknown[:5]}")
        if missing:
            raise StateDecodeError(f"{where}: missing fields {missing}")
        self._body = body
        self._where = where

    def _fail(self, name: str, expected: str) -> StateDecodeError:
        return StateDecodeError(f"{self._where}.{name}: expected {expected}")

    def raw(self, name: str) -> Any:
        return self._body[name]

    def text(self, name: str) -> str:
        value = self._body[name]
        if not isinstance(value, str):
            raise self._fail(name, "a string")
        return value

    def optional_text(self, name: str) -> str | None:
        return None if self._body[name] is None else self.text(name)

    def integer(self, name: str) -> int:
        value = self._body[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(name, "an integer")
        return value

    def number(self, name: str) -> float:
        value = self._body[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(name, "a number")
        return float(value)

    def optional_number(self, name: str) -> float | None:
        return None if self._body[name] is None else self.number(name)

    def boolean(self, name: str) -> bool:
        value = self._body[name]
        if not isinstance(value, bool):
            raise self._fail(name, "a boolean")
        return value

    def enum(self, name: str, kind: type[_E]) -> _E:
        value = self._body[name]
        try:
            return kind(value)
        except ValueError:
            raise self._fail(name, f"a {kind.__name__}") from None

    def optional_enum(self, name: str, kind: type[_E]) -> _E | None:
        return None if self._body[name] is None else self.enum(name, kind)

    def items(self, name: str) -> list[Any]:
        value = self._body[name]
        if not isinstance(value, list):
            raise self._fail(name, "a list")
        return value

    def integers(self, name: str) -> tuple[int, ...]:
        values = self.items(name)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise self._fail(name, "a list of integers")
        return tuple(values)

    def texts(self, name: str) -> list[str]:
        values = self.items(name)
        if not all(isinstance(v, str) for v in values):
            raise self._fail(name, "a list of strings")
        return values

    def mapping(self, name: str) -> dict[str, Any]:
        value = self._body[name]
        if not isinstance(value, dict):
            raise self._fail(name, "an object")
        return value

    def text_mapping(self, name: str) -> dict[str, str]:
        value = self.mapping(name)
        if not all(isinstance(v, str) for v in value.values()):
            raise self._fail(name, "an object of strings")
        return value


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event changed nothing (it is logged, never raised)."""

    reason: str
    event: Event


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one event: new state, effects in order, and any rejection."""

    state: CoreState
    effects: tuple[Effect, ...]
    rejection: Rejection | None
    sale_id: str | None  # the sale the event was routed to (the journal indexes it)


class _Tx:
    """One event's work on one sale: collects the new sale, effects and a rejection."""

    def __init__(self, core: CoreState, sale: Sale, now: float, policy: Policy) -> None:
        self.core = core
        self.before = sale
        self.sale = sale
        self.now = now
        self.policy = policy
        self.effects: list[Effect] = []
        self.rejection: str | None = None

    def update(self, **changes: Any) -> None:
        self.sale = dataclasses.replace(self.sale, **changes)

    def reject(self, reason: str) -> None:
        self.rejection = reason

    def move(self, state: SaleState, *, refusal: Refusal | None = None,
             notice: Notice | None = None) -> None:
        kept = OWNED_TIMERS.get(state, frozenset())
        for kind, _ in self.sale.timers:
            if kind not in kept:
                self.effects.append(CancelTimer(self.sale.sale_id, kind))
        timers = tuple((k, at) for k, at in self.sale.timers if k in kept)
        withdrawn = self.sale.approval_withdrawn
        if state in HANDOVER_ALLOWED_STATES:
            withdrawn = False
        elif self.sale.state is S.APPROVED and state is not S.HANDED_OVER:
            withdrawn = True  # the register was told "approved", and may still hold the goods
        self.update(state=state, refusal=refusal, timers=timers, approval_withdrawn=withdrawn)
        self.tell(notice)

    def tell(self, notice: Notice | None = None) -> None:
        s = self.sale
        self.effects.append(TellRegister(
            lane=s.lane, correlation_id=s.correlation_id, sale_id=s.sale_id, state=s.state,
            refusal=s.refusal, payment_id=s.payment_id, amount_cents=s.amount_cents,
            notice=notice, approval_withdrawn=s.approval_withdrawn,
        ))

    def schedule_at(self, kind: TimerKind, at: float) -> None:
        timers = tuple((k, due) for k, due in self.sale.timers if k is not kind)
        self.update(timers=(*timers, (kind, at)))
        self.effects.append(ScheduleTimer(self.sale.sale_id, kind, at))

    def schedule(self, kind: TimerKind, delay: float) -> None:
        self.schedule_at(kind, self.now + delay)

    def cancel_timer(self, kind: TimerKind) -> None:
        if self.sale.timer_due(kind) is not None:
            self.fired(kind)
            self.effects.append(CancelTimer(self.sale.sale_id, kind))

    def fired(self, kind: TimerKind) -> None:
        self.update(timers=tuple((k, due) for k, due in self.sale.timers if k is not kind))

    def alert(self, severity: Severity, message: str) -> None:
        self.effects.append(AlertTechnician(self.sale.sale_id, severity, message))

    def emit(self, effect: Effect) -> None:
        self.effects.append(effect)


Handler = Callable[[_Tx, Any], None]


@dataclass(frozen=True, slots=True)
class Transition:
    """One table row: the handler and every state it may move the sale to."""

    handler: Handler
    targets: frozenset[SaleState]


# --- admission ---------------------------------------------------------------------------


def _admit(core: CoreState, event: SaleRequested, now: float, policy: Policy) -> Step:
    def told(state: SaleState, refusal: Refusal | None) -> TellRegister:
        return TellRegister(lane=event.lane, correlation_id=event.correlation_id,
                            sale_id=event.sale_id, state=state, refusal=refusal,
                            payment_id=None, amount_cents=event.amount_cents)

    if event.sale_id in core.sales:
        return Step(core, (), Rejection(f"sale id {event.sale_id} is already used", event), None)
    if not SALE_ID_PATTERN.fullmatch(event.sale_id):
        tell = told(S.FAILED, Refusal.INVALID_REQUEST)
        return Step(core, (tell,), Rejection("sale id is not 1-26 of [A-Z0-9]", event), None)
    if event.sale_id <= core.forgotten_through:
        # It may be the id of a forgotten sale: reusing it would let that sale's late
        # notifications, found by external_reference, reach this one.
        tell = told(S.FAILED, Refusal.INVALID_REQUEST)
        alert = AlertTechnician(event.sale_id, Severity.WARNING,
                                f"sale id {event.sale_id} sorts at or below forgotten sale "
                                f"{core.forgotten_through}: is the clock days behind?")
        reason = "sale id sorts at or below the ids of forgotten sales"
        return Step(core, (tell, alert), Rejection(reason, event), None)
    lane_ok = not isinstance(event.lane, bool) and isinstance(event.lane, int)
    refusal: Refusal | None = None
    if not lane_ok or not 1 <= event.lane <= MAX_LANE:
        refusal = Refusal.INVALID_REQUEST
    elif (current := core.sale_on_lane(event.lane)) is not None:
        if (current.correlation_id, current.amount_cents) == (event.correlation_id,
                                                               event.amount_cents):
            # The register repeated a request it already made: answer with that sale.
            tell = dataclasses.replace(told(current.state, current.refusal),
                                       sale_id=current.sale_id, payment_id=current.payment_id)
            reason = f"repeat of sale {current.sale_id} on lane {event.lane}"
            return Step(core, (tell,), Rejection(reason, event), current.sale_id)
        refusal = Refusal.LANE_BUSY
    elif event.terminal_ok is not None:
        refusal = event.terminal_ok
    elif not event.terminal_id:
        refusal = Refusal.TERMINAL_UNKNOWN
    elif event.terminal_id in core.terminals:
        refusal = Refusal.TERMINAL_BUSY
    elif (isinstance(event.amount_cents, bool) or not isinstance(event.amount_cents, int)
          or not policy.min_amount_cents <= event.amount_cents <= policy.max_amount_cents):
        refusal = Refusal.AMOUNT_OUT_OF_RANGE

    sale = Sale(sale_id=event.sale_id, lane=event.lane, correlation_id=event.correlation_id,
                amount_cents=event.amount_cents, terminal_id=event.terminal_id,
                state=S.FAILED, requested_at=now, updated_at=now)
    if refusal is not None:
        sale = dataclasses.replace(sale, refusal=refusal, detail=f"refused: {refusal.value}")
        return Step(_commit(core, None, sale), (told(S.FAILED, refusal),), None, sale.sale_id)
    reference = str(ExternalReference(core.store_id, event.lane, event.sale_id, 1))
    sale = dataclasses.replace(sale, state=S.CREATING, attempt=1, reference=reference,
                               attempt_started_at=now, sends=1)
    effects: tuple[Effect, ...] = (
        told(S.CREATING, None),
        CreateIntent(sale.sale_id, 1, sale.terminal_id, sale.amount_cents, reference),
    )
    return Step(_commit(core, None, sale), effects, None, sale.sale_id)


def is_retry(sale: Sale, now: float, policy: Policy) -> bool:
    """Whether a SALE naming ``sale`` again (same lane, correlation id, amount) is a retry.

    A sale in progress is always the same purchase. One that ended is the same purchase only
    for ``policy.sale_retry_window`` after it last changed (the register lost its RESULT);
    later the register is reusing the id for a new purchase, which must never be answered
    with the old sale's RESULT.
    """
    return not sale.is_final or now - sale.updated_at <= policy.sale_retry_window


# --- create outcomes ---------------------------------------------------------------------


def _current_attempt(tx: _Tx, attempt: int) -> bool:
    if attempt != tx.sale.attempt:
        tx.reject(f"attempt {attempt} is not the current attempt {tx.sale.attempt}")
        return False
    return True


def _send_attempt(tx: _Tx) -> None:
    s = tx.sale
    assert s.reference is not None
    # Reconciling an attempt whose create is in flight could prove "not found" too early.
    tx.cancel_timer(TimerKind.RECONCILE)
    tx.move(S.CREATING)
    tx.emit(CreateIntent(s.sale_id, s.attempt, s.terminal_id, s.amount_cents, s.reference))


def _on_intent_created(tx: _Tx, event: IntentCreated) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    if tx.sale.intent_id is not None:
        if tx.sale.intent_id == event.intent_id:
            tx.reject("intent already known")
        else:
            tx.reject("a second intent for the same attempt")
            tx.alert(Severity.CRITICAL,
                     f"two intents for attempt {event.attempt}: {tx.sale.intent_id} and "
                     f"{event.intent_id}; cancel the stray one on the terminal")
        return
    if _adopt_intent(tx, event.intent_id):
        _enter_open(tx)


def _adopt_intent(tx: _Tx, intent_id: str) -> bool:
    owner = tx.core.intents.get(intent_id)
    if owner is not None and owner != tx.sale.sale_id:
        tx.reject(f"intent {intent_id} belongs to sale {owner}")
        tx.alert(Severity.CRITICAL, f"intent {intent_id} is claimed by sale {owner} and by "
                                    f"sale {tx.sale.sale_id}; check the terminal")
        return False
    tx.update(intent_id=intent_id, intent_state=IntentState.OPEN, reconcile_round=0)
    return True


def _enter_open(tx: _Tx) -> None:
    if tx.sale.cancel_requested:
        _start_cancel(tx)
        return
    tx.move(S.OPEN)
    tx.schedule(TimerKind.POLL, tx.policy.poll_fallback_after)
    tx.schedule_at(TimerKind.ABANDON, tx.sale.attempt_started_at + tx.policy.abandon_after)


def _start_cancel(tx: _Tx) -> None:
    s = tx.sale
    assert s.intent_id is not None
    tx.move(S.CANCELING)
    if s.timer_due(TimerKind.POLL) is None:
        tx.schedule(TimerKind.POLL, tx.policy.poll_fallback_after)
    tx.emit(CancelIntent(s.sale_id, s.terminal_id, s.intent_id))


def _on_create_not_sent(tx: _Tx, event: CreateNotSent) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    tx.update(detail=f"create not sent: {event.reason[:200]}")
    if tx.sale.cancel_requested:
        tx.move(S.CANCELED)
    elif tx.sale.sends >= tx.policy.max_create_sends:
        tx.move(S.FAILED, refusal=Refusal.CLOUD_UNAVAILABLE)
    else:
        tx.move(S.REQUESTED)
        tx.schedule(TimerKind.CREATE_RETRY, tx.policy.create_retry_after)


def _on_create_outcome_unknown(tx: _Tx, event: CreateOutcomeUnknown) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    tx.update(detail=f"create outcome unknown: {event.reason[:200]}", reconcile_round=0)
    tx.move(S.CREATE_UNKNOWN)
    _reconcile(tx)


def _reconcile(tx: _Tx) -> None:
    s = tx.sale
    assert s.reference is not None
    tx.emit(ReconcileAttempt(s.sale_id, s.attempt, s.reference, s.terminal_id,
                             s.attempt_started_at))
    delay = backoff(tx.policy.reconcile_initial_backoff, tx.policy.reconcile_max_backoff,
                    s.reconcile_round)
    tx.schedule(TimerKind.RECONCILE, delay)


def _on_terminal_busy(tx: _Tx, event: TerminalBusy) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    tx.update(detail="terminal already has a queued intent (409)")
    tx.move(S.FAILED, refusal=Refusal.TERMINAL_BUSY)


def _on_create_rejected(tx: _Tx, event: CreateRejected) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    tx.update(detail=f"create refused by Mercado Pago: {event.code[:80]}")
    tx.move(S.FAILED)
    tx.alert(Severity.WARNING, f"create refused ({event.code[:80]}): check credentials, "
                               "terminal ownership and configuration")


def _on_create_retry_due(tx: _Tx) -> None:
    tx.update(sends=tx.sale.sends + 1)
    _send_attempt(tx)


# --- reconciliation ----------------------------------------------------------------------


def _on_attempt_not_found(tx: _Tx, event: AttemptNotFound) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    s = tx.sale
    tx.update(not_found_attempts=(*s.not_found_attempts, event.attempt), reconcile_round=0)
    if s.cancel_requested:
        tx.move(S.CANCELED)
    elif s.attempt >= tx.policy.max_create_attempts:
        tx.update(detail=f"no create reached Mercado Pago in {s.attempt} attempts")
        tx.move(S.FAILED, refusal=Refusal.CLOUD_UNAVAILABLE)
    else:
        attempt = s.attempt + 1
        reference = str(ExternalReference(tx.core.store_id, s.lane, s.sale_id, attempt))
        tx.update(attempt=attempt, reference=reference, attempt_started_at=tx.now, sends=1)
        _send_attempt(tx)


def _on_payments_found(tx: _Tx, event: PaymentsFound) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    if not event.payments:
        tx.reject("a payments search with no payments proves nothing")
        return
    approved = [p for p in event.payments if p.status.strip().lower() == APPROVED_STATUS]
    chosen = approved[0] if approved else event.payments[0]
    if not _claim_payment(tx, chosen.payment_id):
        tx.reject(f"payment {chosen.payment_id} belongs to another sale")
        return
    tx.update(reconcile_round=0)
    if len(approved) > 1:
        ids = ", ".join(p.payment_id for p in approved)
        tx.update(detail=f"several approved payments for one attempt: {ids}")
        _start_verification(tx, S.ESCALATED)
        tx.alert(Severity.CRITICAL, f"several approved payments for sale {tx.sale.sale_id}: "
                                    f"{ids}; refund all but one")
        return
    _start_verification(tx, S.VERIFYING)


def _on_reconcile_due(tx: _Tx) -> None:
    rounds = tx.sale.reconcile_round + 1
    tx.update(reconcile_round=rounds)
    if tx.sale.state is S.CREATING:
        # After a restart a CREATING sale is an unknown outcome: the send may have happened.
        tx.move(S.CREATE_UNKNOWN)
    if rounds == tx.policy.create_reconcile_attempts:
        tx.update(detail=f"create outcome still unknown after {rounds} rounds: supervisor "
                         "needed")
        tx.alert(Severity.WARNING, f"create outcome still unknown after {rounds} "
                                   "reconciliation rounds; Mercado Pago may be unreachable; "
                                   f"check terminal {tx.sale.terminal_id}, or void or release "
                                   f"sale {tx.sale.sale_id}")
        tx.tell(Notice.CREATE_UNRESOLVED)
    _reconcile(tx)


# --- intent observations -----------------------------------------------------------------


def _on_intent_observed(tx: _Tx, event: IntentObserved) -> None:
    try:
        observed = IntentState(event.state.strip().upper())
    except ValueError:
        tx.reject(f"unknown intent state {event.state[:40]!r}")
        return
    s = tx.sale
    if s.intent_id is None:
        if not _may_adopt(tx, event):
            return
        # The intent exists, so it is at least OPEN; the observed state then applies.
        if not _adopt_intent(tx, event.intent_id):
            return
        _enter_open(tx)
        if observed is IntentState.OPEN:
            return
    elif s.intent_id != event.intent_id:
        tx.reject("intent is not this sale's intent")
        tx.alert(Severity.CRITICAL, f"intent {event.intent_id} carries the reference of sale "
                                    f"{s.sale_id}, whose intent is {s.intent_id}")
        return
    s = tx.sale
    known = s.intent_state
    if known in FINAL_INTENT_STATES:
        if observed is known and event.payment_id and s.payment_id is None:
            if _claim_payment(tx, event.payment_id):
                tx.emit(FetchPayment(s.sale_id, event.payment_id))
        elif observed is known:
            tx.reject("duplicate intent state")
        else:
            tx.reject(f"intent already ended {known}; ignoring {observed}")
        return
    if known is not None and INTENT_RANK[observed] <= INTENT_RANK[known]:
        tx.reject(f"stale intent state {observed} after {known}")
        return
    tx.update(intent_state=observed)
    if event.payment_id and s.payment_id is None and observed in _PAID_INTENT_STATES:
        _claim_payment(tx, event.payment_id)
    _advance_to(tx, observed)


def _claim_payment(tx: _Tx, payment_id: str) -> bool:
    owner = tx.core.payments.get(payment_id)
    if owner is not None and owner != tx.sale.sale_id:
        tx.alert(Severity.CRITICAL, f"payment {payment_id} is claimed by sale {owner} and "
                                    f"by sale {tx.sale.sale_id}; verify both by hand")
        return False
    tx.update(payment_id=payment_id)
    return True


def _may_adopt(tx: _Tx, event: IntentObserved) -> bool:
    s = tx.sale
    try:
        ref = ExternalReference.parse(event.external_reference or "")
    except ExternalReferenceError:
        tx.reject("intent without a reference to this sale cannot be adopted")
        return False
    if s.state not in (S.CREATING, S.CREATE_UNKNOWN) or ref.attempt != s.attempt:
        tx.reject(f"intent for attempt {ref.attempt} found; current attempt is {s.attempt} "
                  f"in state {s.state}")
        if ref.attempt in s.not_found_attempts:
            tx.alert(Severity.CRITICAL, f"intent {event.intent_id} exists for attempt "
                                        f"{ref.attempt}, which reconciliation found absent")
        return False
    return True


def _advance_to(tx: _Tx, observed: IntentState) -> None:
    s = tx.sale
    if observed in _ENDED_WITHOUT_PAYMENT:
        tx.update(detail=f"intent {observed}")
        tx.move(_ENDED_WITHOUT_PAYMENT[observed])
    elif observed is IntentState.FINISHED:
        _start_verification(tx, S.VERIFYING)
    elif observed is IntentState.CONFIRMATION_REQUIRED:
        tx.update(detail="CONFIRMATION_REQUIRED: verifying the payment before handover")
        _start_verification(tx, S.HELD)
    else:
        target = S.ON_TERMINAL if observed is IntentState.ON_TERMINAL else S.PROCESSING
        notice = Notice.CANCEL_ON_TERMINAL if s.cancel_requested else None
        if target is not s.state:
            tx.move(target, notice=notice)
        if s.timer_due(TimerKind.POLL) is None:
            tx.schedule(TimerKind.POLL, tx.policy.poll_fallback_after)


def _on_poll_due(tx: _Tx) -> None:
    s = tx.sale
    if s.intent_id is None:
        tx.reject("no intent to poll")
        return
    tx.emit(FetchIntent(s.sale_id, s.intent_id))
    tx.schedule(TimerKind.POLL, tx.policy.poll_fallback_after)


def _on_abandon_due(tx: _Tx) -> None:
    s = tx.sale
    assert s.intent_id is not None
    # Never conclude "abandoned" locally: the API's answer ends the sale.
    tx.emit(FetchIntent(s.sale_id, s.intent_id))


# --- verification ------------------------------------------------------------------------


def _start_verification(tx: _Tx, state: SaleState) -> None:
    if tx.sale.verify_started_at is None:
        tx.update(verify_started_at=tx.now)
    tx.update(verify_round=0)
    tx.move(state)
    _fetch_truth(tx)
    tx.schedule(TimerKind.VERIFY, tx.policy.verify_initial_backoff)
    if state is not S.ESCALATED:
        started = tx.sale.verify_started_at
        assert started is not None
        tx.schedule_at(TimerKind.ESCALATE, started + tx.policy.confirmation_escalate_after)


def _fetch_truth(tx: _Tx) -> None:
    s = tx.sale
    if s.payment_id is not None:
        tx.emit(FetchPayment(s.sale_id, s.payment_id))
    elif s.intent_id is not None:
        tx.emit(FetchIntent(s.sale_id, s.intent_id))


def _on_verify_due(tx: _Tx) -> None:
    rounds = tx.sale.verify_round + 1
    tx.update(verify_round=rounds)
    _fetch_truth(tx)
    tx.schedule(TimerKind.VERIFY, backoff(tx.policy.verify_initial_backoff,
                                          tx.policy.verify_max_backoff, rounds))


def _on_escalate_due(tx: _Tx) -> None:
    tx.update(detail="payment still unverified: supervisor needed")
    tx.move(S.ESCALATED)
    tx.alert(Severity.WARNING, f"sale {tx.sale.sale_id} on lane {tx.sale.lane}: payment not "
                               "verified in time; verify on the terminal or override")


def _on_payment_verified(tx: _Tx, event: PaymentVerified) -> None:
    s = tx.sale
    if event.payment_id != s.payment_id:
        tx.reject(f"payment {event.payment_id} is not the sale's payment {s.payment_id}")
        tx.alert(Severity.CRITICAL, f"second payment {event.payment_id} seen for sale "
                                    f"{s.sale_id}; refund it if it was charged")
        return
    judgement = judge_payment(
        event, amount_cents=s.amount_cents, currency=tx.policy.currency,
        collector_id=tx.policy.collector_id, external_reference=s.reference,
        fraud_alerted=event.payment_id in tx.core.fraud_alerts,
        tips_allowed=tx.policy.tips_allowed,
    )
    verdict = judgement.verdict
    if verdict is Verdict.RELEASE:
        if s.state is S.APPROVED:
            tx.reject("payment already verified")
            return
        tx.update(approved_payment_id=event.payment_id, detail=judgement.reason)
        tx.move(S.APPROVED)
        tx.schedule(TimerKind.HANDOVER, tx.policy.handover_confirm_after)
    elif verdict is Verdict.DECLINE:
        tx.update(approved_payment_id=None, detail=judgement.reason)
        tx.move(S.DECLINED)
    elif verdict is Verdict.BLOCK:
        tx.update(approved_payment_id=None, detail=judgement.reason)
        tx.move(S.BLOCKED)
        tx.alert(Severity.CRITICAL, f"fraud alert for payment {event.payment_id}: do not "
                                    "hand over")
    elif verdict is Verdict.WAIT:
        tx.update(detail=judgement.reason)
        if s.state is S.VERIFYING:
            tx.move(S.HELD)
        elif s.state is S.APPROVED:
            tx.update(approved_payment_id=None)
            _start_verification(tx, S.ESCALATED)
            tx.alert(Severity.CRITICAL, f"payment {event.payment_id} no longer approved: "
                                        f"{judgement.reason}")
    else:
        tx.update(approved_payment_id=None, detail=judgement.reason)
        if s.state is S.APPROVED:
            _start_verification(tx, S.ESCALATED)
        elif s.state is not S.ESCALATED:
            tx.move(S.ESCALATED)
        tx.alert(Severity.CRITICAL, f"payment {event.payment_id}: {judgement.reason}")


def _on_payment_not_found(tx: _Tx, event: PaymentNotFound) -> None:
    tx.update(detail=f"payment {event.payment_id} not found yet")
    if tx.sale.state is S.VERIFYING:
        tx.move(S.HELD)


def _on_fraud_alert(tx: _Tx, event: FraudAlerted) -> None:
    tx.update(approved_payment_id=None, detail="fraud alert names the payment")
    tx.move(S.BLOCKED)
    tx.alert(Severity.CRITICAL, f"fraud alert for payment {event.payment_id}: do not hand over")


def _on_fraud_after_goods_left(tx: _Tx, event: FraudAlerted) -> None:
    tx.alert(Severity.CRITICAL, f"fraud alert for payment {event.payment_id} after the "
                                f"goods of sale {tx.sale.sale_id} may have left "
                                f"({tx.sale.state})")


def _on_fraud_after_end(tx: _Tx, event: FraudAlerted) -> None:
    tx.reject(f"sale already ended {tx.sale.state}")


# --- register, supervisor, cancel --------------------------------------------------------


def _on_handover(tx: _Tx, event: HandoverConfirmed) -> None:
    s = tx.sale
    if s.state is S.APPROVED:
        tx.move(S.HANDED_OVER)
        return
    if s.state in (S.HANDED_OVER, S.OVERRIDDEN):
        tx.reject("handover already recorded or released by a supervisor")
        return
    tx.reject(f"handover reported while the sale is {s.state}")
    tx.alert(Severity.CRITICAL, f"register on lane {s.lane} reports goods left for sale "
                                f"{s.sale_id}, which is {s.state}: not paid")
    tx.tell()


def _on_late_handover(tx: _Tx, event: HandoverConfirmed) -> None:
    tx.reject("handover confirmed after handover_confirm_after: the sale was already closed "
              "unconfirmed")
    tx.alert(Severity.INFO, f"register on lane {tx.sale.lane} confirmed the handover of sale "
                            f"{tx.sale.sale_id} after the sale was closed unconfirmed")


def _on_handover_due(tx: _Tx) -> None:
    s = tx.sale
    tx.update(detail="approved; the register did not confirm the handover in time")
    tx.move(S.HANDOVER_UNCONFIRMED)
    tx.alert(Severity.WARNING, f"register on lane {s.lane} did not confirm the handover of "
                               f"sale {s.sale_id} within {tx.policy.handover_confirm_after:g} "
                               "s; the lane is free again. A register must send HANDOVER_DONE "
                               "(docs/register-protocol.md section 7)")


def _on_override(tx: _Tx, event: OverrideGiven) -> None:
    if not event.reason.strip():
        tx.reject("an override needs a reason")
        return
    override = Override(event.decision, event.reason[:500], event.uid, tx.now)
    tx.update(override=override, detail=f"override {event.decision} by uid {event.uid}")
    if event.decision is OverrideDecision.RELEASE:
        tx.move(S.OVERRIDDEN)
    else:
        tx.move(S.DECLINED)
    tx.alert(Severity.INFO, f"sale {tx.sale.sale_id}: supervisor uid {event.uid} chose "
                            f"{event.decision}: {event.reason[:200]}")


def _on_cancel(tx: _Tx, event: CancelRequested) -> None:
    s = tx.sale
    if s.state is S.REQUESTED:
        tx.update(cancel_requested=True, detail=f"canceled by {event.by[:40]}")
        tx.move(S.CANCELED)
    elif s.state is S.OPEN:
        tx.update(cancel_requested=True)
        _start_cancel(tx)
    elif s.state in (S.CREATING, S.CREATE_UNKNOWN, S.CANCELING):
        # Nothing to cancel yet (or already asked): the intent is canceled once it is known.
        tx.update(cancel_requested=True)
        tx.tell()
    elif s.state in (S.ON_TERMINAL, S.PROCESSING):
        tx.tell(Notice.CANCEL_ON_TERMINAL)
    elif s.is_final:
        tx.reject(f"sale already ended {s.state}")
        tx.tell()
    else:
        tx.tell(Notice.CANCEL_TOO_LATE)


def _on_cancel_refused(tx: _Tx, event: CancelRefused) -> None:
    s = tx.sale
    assert s.intent_id is not None
    tx.update(detail=f"cancel refused: {event.reason[:200]}")
    tx.move(S.ON_TERMINAL, notice=Notice.CANCEL_ON_TERMINAL)
    tx.emit(FetchIntent(s.sale_id, s.intent_id))


def _on_timer(tx: _Tx, event: TimerExpired) -> None:
    if event.timer not in OWNED_TIMERS.get(tx.sale.state, frozenset()):
        tx.reject(f"timer {event.timer} is not pending in state {tx.sale.state}")
        return
    tx.fired(event.timer)
    _TIMER_HANDLERS[event.timer](tx)


_TIMER_HANDLERS: Mapping[TimerKind, Callable[[_Tx], None]] = {
    TimerKind.CREATE_RETRY: _on_create_retry_due,
    TimerKind.RECONCILE: _on_reconcile_due,
    TimerKind.POLL: _on_poll_due,
    TimerKind.ABANDON: _on_abandon_due,
    TimerKind.VERIFY: _on_verify_due,
    TimerKind.ESCALATE: _on_escalate_due,
    TimerKind.HANDOVER: _on_handover_due,
}


# --- after the end -----------------------------------------------------------------------


def _after_end_observed(tx: _Tx, event: IntentObserved) -> None:
    s = tx.sale
    tx.reject(f"sale already ended {s.state}")
    state = event.state.strip().upper()
    if state == IntentState.OPEN and event.intent_id == s.intent_id:
        # The API still shows the ended sale's intent waiting on the terminal: clear it.
        tx.emit(CancelIntent(s.sale_id, s.terminal_id, event.intent_id))
    elif (state in (IntentState.FINISHED, IntentState.CONFIRMATION_REQUIRED)
          and event.payment_id and event.payment_id != s.payment_id):
        tx.alert(Severity.CRITICAL, f"payment {event.payment_id} taken for sale {s.sale_id}, "
                                    f"which already ended {s.state}; check and refund")


def _after_end_verified(tx: _Tx, event: PaymentVerified) -> None:
    s = tx.sale
    tx.reject(f"sale already ended {s.state}")
    paid = event.status.strip().lower() == APPROVED_STATUS
    if paid and s.state not in GOODS_RELEASED_STATES:
        tx.alert(Severity.CRITICAL, f"approved payment {event.payment_id} for sale "
                                    f"{s.sale_id}, which ended {s.state} without handover; "
                                    "refund it")


# --- the table ---------------------------------------------------------------------------

LIVE_INTENT = frozenset({S.OPEN, S.ON_TERMINAL, S.PROCESSING, S.CANCELING})
VERIFYING_STATES = frozenset({S.VERIFYING, S.HELD, S.ESCALATED})
_ENDED_BY_INTENT = frozenset({S.CANCELED, S.FAILED, S.ABANDONED})
_TO_VERIFICATION = frozenset({S.VERIFYING, S.HELD})


def _rows(states: Iterable[SaleState], event_type: type[Any], handler: Handler,
          targets: Iterable[SaleState]) -> dict[tuple[SaleState, type[Any]], Transition]:
    row = Transition(handler, frozenset(targets))
    return {(state, event_type): row for state in states}


def _build_table() -> dict[tuple[SaleState, type[Any]], Transition]:
    table: dict[tuple[SaleState, type[Any]], Transition] = {}
    observe_targets = {
        S.CREATING: {S.OPEN, S.CANCELING, S.ON_TERMINAL, S.PROCESSING,
                     *_TO_VERIFICATION, *_ENDED_BY_INTENT},
        S.OPEN: {S.ON_TERMINAL, S.PROCESSING, *_TO_VERIFICATION, *_ENDED_BY_INTENT},
        S.ON_TERMINAL: {S.PROCESSING, *_TO_VERIFICATION, *_ENDED_BY_INTENT},
        S.PROCESSING: {*_TO_VERIFICATION, *_ENDED_BY_INTENT},
        S.CANCELING: {S.ON_TERMINAL, S.PROCESSING, *_TO_VERIFICATION, *_ENDED_BY_INTENT},
    }
    observe_targets[S.CREATE_UNKNOWN] = observe_targets[S.CREATING]
    for state, targets in observe_targets.items():
        table |= _rows([state], IntentObserved, _on_intent_observed, targets)
    for state in (S.VERIFYING, S.HELD, S.ESCALATED, S.APPROVED, S.BLOCKED):
        # The intent already ended: observations can only teach a missing payment id.
        table |= _rows([state], IntentObserved, _on_intent_observed, [])
    table |= _rows(FINAL_STATES, IntentObserved, _after_end_observed, [])

    created = {S.OPEN, S.CANCELING}
    table |= _rows([S.CREATING, S.CREATE_UNKNOWN], IntentCreated, _on_intent_created, created)
    table |= _rows([S.CREATING], CreateNotSent, _on_create_not_sent,
                   [S.REQUESTED, S.FAILED, S.CANCELED])
    table |= _rows([S.CREATING], CreateOutcomeUnknown, _on_create_outcome_unknown,
                   [S.CREATE_UNKNOWN])
    table |= _rows([S.CREATING], TerminalBusy, _on_terminal_busy, [S.FAILED])
    table |= _rows([S.CREATING], CreateRejected, _on_create_rejected, [S.FAILED])
    reconciling = [S.CREATING, S.CREATE_UNKNOWN]
    table |= _rows(reconciling, AttemptNotFound, _on_attempt_not_found,
                   [S.CREATING, S.CANCELED, S.FAILED])
    table |= _rows(reconciling, PaymentsFound, _on_payments_found, [S.VERIFYING, S.ESCALATED])

    table |= _rows([S.REQUESTED], TimerExpired, _on_timer, [S.CREATING])
    table |= _rows(reconciling, TimerExpired, _on_timer, [S.CREATE_UNKNOWN])
    table |= _rows(LIVE_INTENT, TimerExpired, _on_timer, [])
    table |= _rows([S.VERIFYING, S.HELD], TimerExpired, _on_timer, [S.ESCALATED])
    table |= _rows([S.ESCALATED], TimerExpired, _on_timer, [])
    table |= _rows([S.APPROVED], TimerExpired, _on_timer, [S.HANDOVER_UNCONFIRMED])

    verdicts = {S.APPROVED, S.DECLINED, S.BLOCKED}
    table |= _rows([S.VERIFYING], PaymentVerified, _on_payment_verified,
                   [*verdicts, S.HELD, S.ESCALATED])
    table |= _rows([S.HELD], PaymentVerified, _on_payment_verified, [*verdicts, S.ESCALATED])
    table |= _rows([S.ESCALATED], PaymentVerified, _on_payment_verified, verdicts)
    # No BLOCKED here: a fraud alert for an approved sale's payment blocks it directly.
    table |= _rows([S.APPROVED], PaymentVerified, _on_payment_verified,
                   [S.DECLINED, S.ESCALATED])
    table |= _rows(FINAL_STATES, PaymentVerified, _after_end_verified, [])
    table |= _rows([S.VERIFYING], PaymentNotFound, _on_payment_not_found, [S.HELD])
    table |= _rows([S.HELD, S.ESCALATED], PaymentNotFound, _on_payment_not_found, [])

    table |= _rows([*VERIFYING_STATES, S.APPROVED], FraudAlerted, _on_fraud_alert, [S.BLOCKED])
    table |= _rows(GOODS_RELEASED_STATES, FraudAlerted, _on_fraud_after_goods_left, [])
    table |= _rows(FINAL_STATES - GOODS_RELEASED_STATES, FraudAlerted, _on_fraud_after_end, [])

    table |= _rows([S.REQUESTED], CancelRequested, _on_cancel, [S.CANCELED])
    table |= _rows([S.OPEN], CancelRequested, _on_cancel, [S.CANCELING])
    for key, row in _rows(SaleState, CancelRequested, _on_cancel, []).items():
        table.setdefault(key, row)  # elsewhere a cancel only earns advice to the cashier
    table |= _rows([S.CANCELING], CancelRefused, _on_cancel_refused, [S.ON_TERMINAL])

    table |= _rows([S.APPROVED], HandoverConfirmed, _on_handover, [S.HANDED_OVER])
    table |= _rows([S.HANDOVER_UNCONFIRMED], HandoverConfirmed, _on_late_handover, [])
    for key, row in _rows(SaleState, HandoverConfirmed, _on_handover, []).items():
        table.setdefault(key, row)  # elsewhere the register is wrong: alert, change nothing
    table |= _rows(OVERRIDABLE_STATES, OverrideGiven, _on_override, [S.OVERRIDDEN, S.DECLINED])
    return table


TRANSITIONS: Mapping[tuple[SaleState, type[Any]], Transition] = MappingProxyType(
    _build_table()
)


# --- routing and commit ------------------------------------------------------------------

_NOT_A_FACT = "a notification is a hint, not a fact: only the API's answer about it counts"


def _route(core: CoreState, event: Event) -> str | None:
    if isinstance(event, CancelRequested):
        if event.sale_id is not None:
            return event.sale_id if event.sale_id in core.sales else None
        return core.lanes.get(event.lane) if event.lane is not None else None
    if isinstance(event, IntentObserved):
        sale_id = core.intents.get(event.intent_id)
        if sale_id is None and event.external_reference:
            try:
                ref = ExternalReference.parse(event.external_reference)
            except ExternalReferenceError:
                return None
            if ref.store == core.store_id and ref.sale in core.sales:
                return ref.sale
        return sale_id
    if isinstance(event, PaymentVerified | PaymentNotFound | FraudAlerted):
        sale_id = core.payments.get(event.payment_id)
        if (sale_id is None and isinstance(event, PaymentVerified)
                and event.external_reference):
            try:
                ref = ExternalReference.parse(event.external_reference)
            except ExternalReferenceError:
                return None
            if ref.store == core.store_id and ref.sale in core.sales:
                return ref.sale
        return sale_id
    sale_id = getattr(event, "sale_id", None)
    return sale_id if isinstance(sale_id, str) and sale_id in core.sales else None


def _commit(core: CoreState, before: Sale | None, sale: Sale) -> CoreState:
    changes: dict[str, Any] = {"sales": core.sales.set(sale.sale_id, sale)}
    holds_lane = not sale.is_final
    if holds_lane != (core.lanes.get(sale.lane) == sale.sale_id):
        changes["lanes"] = (core.lanes.set(sale.lane, sale.sale_id) if holds_lane
                            else core.lanes.delete(sale.lane))
    holds_terminal = sale.state in TERMINAL_HOLDING_STATES
    if holds_terminal != (core.terminals.get(sale.terminal_id) == sale.sale_id):
        changes["terminals"] = (core.terminals.set(sale.terminal_id, sale.sale_id)
                                if holds_terminal else core.terminals.delete(sale.terminal_id))
    if sale.intent_id is not None and sale.intent_id not in core.intents:
        changes["intents"] = core.intents.set(sale.intent_id, sale.sale_id)
    if sale.payment_id is not None and sale.payment_id not in core.payments:
        changes["payments"] = core.payments.set(sale.payment_id, sale.sale_id)
    if sale.override is not None and (before is None or before.override != sale.override):
        changes["overrides"] = core.overrides.set(sale.sale_id, sale.override)
    return dataclasses.replace(core, **changes)


def forgettable(state: CoreState, before: float) -> tuple[Sale, ...]:
    """The final sales last changed before ``before``, in sale-id order."""
    return tuple(sorted((s for s in state.sales.values()
                         if s.is_final and s.updated_at < before), key=lambda s: s.sale_id))


def forget_settled(state: CoreState, before: float) -> CoreState:
    """``state`` without its final sales last changed before ``before``.

    Their ``intents``, ``payments`` and ``overrides`` entries go too, and
    ``forgotten_through`` rises to the greatest forgotten id. Unfinished sales, lanes,
    terminals and fraud alerts are untouched (final sales hold no lane or terminal).
    """
    gone = {sale.sale_id for sale in forgettable(state, before)}
    if not gone:
        return state

    def kept(index: Mapping[str, str]) -> PersistentMap[str, str]:
        return PersistentMap({key: sale_id for key, sale_id in index.items()
                              if sale_id not in gone})

    return dataclasses.replace(
        state,
        sales=PersistentMap({k: v for k, v in state.sales.items() if k not in gone}),
        intents=kept(state.intents),
        payments=kept(state.payments),
        overrides=PersistentMap({k: v for k, v in state.overrides.items() if k not in gone}),
        forgotten_through=max(state.forgotten_through, *gone),
    )


def _forget(core: CoreState, event: SettledSalesForgotten, now: float) -> Step:
    before = event.before
    if isinstance(before, bool) or not isinstance(before, int | float) \
            or not math.isfinite(before) or before > now:
        return Step(core, (), Rejection("only sales settled before now can be forgotten",
                                        event), None)
    return Step(forget_settled(core, before), (), None, None)


def step(state: CoreState, event: Event, *, now: float, policy: Policy) -> Step:
    """Apply one event at wall-clock time ``now``; see the module docstring."""
    if isinstance(event, SaleRequested):
        return _admit(state, event, now, policy)
    if isinstance(event, SettledSalesForgotten):
        return _forget(state, event, now)
    core = state
    if isinstance(event, FraudAlerted) and event.payment_id not in state.fraud_alerts:
        # Recorded even before the payment is linked to a sale: the gate reads it later.
        core = dataclasses.replace(state, fraud_alerts=state.fraud_alerts | {event.payment_id})
    sale_id = _route(core, event)
    if isinstance(event, IntentObserved) and event.source is ObservationSource.NOTIFICATION:
        return Step(state, (), Rejection(_NOT_A_FACT, event), sale_id)
    if sale_id is None:
        if core is not state:
            return Step(core, (), None, None)
        return Step(state, (), Rejection("no sale matches this event", event), None)
    sale = core.sales[sale_id]
    row = TRANSITIONS.get((sale.state, type(event)))
    if row is None:
        reason = f"{type(event).__name__} does not apply to a sale in state {sale.state}"
        return Step(core, (), Rejection(reason, event), sale_id)
    tx = _Tx(core, sale, now, policy)
    row.handler(tx, event)
    rejection = None if tx.rejection is None else Rejection(tx.rejection, event)
    if tx.sale == sale:
        return Step(core, tuple(tx.effects), rejection, sale_id)
    new_sale = dataclasses.replace(tx.sale, updated_at=now)
    return Step(_commit(core, sale, new_sale), tuple(tx.effects), rejection, sale_id)
