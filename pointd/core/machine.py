"""The sale state machine: one table from (sale state, trigger) to a handler and its targets.

Theory of operation
-------------------
Two rules, after h11's ``_state.py``: everything that decides a sale's fate lives in this
file (and the shared runner of ``pointd.core.table``), and this file does no I/O.
``step(state, event, now=..., policy=...)`` is the core's one entry point, for sale and
refund events alike: it returns a ``Step`` with the new immutable ``CoreState``, the effects
to run (after the engine has journaled the event) and, when the event does not apply, a
``Rejection`` to log — never an exception.

``SaleRequested`` is admitted (or refused, or answered as a repeat) before any table lookup,
because no sale exists yet for it; admission is decided here and nowhere else (the register
session and the checkout only translate). Refund events go to ``pointd.core.refunds``.
Every other event is routed to one sale — by its sale id, by the lane, by the intent id or
payment id indexes, or by the external_reference it carries — and its *trigger* is derived:
the event type, qualified where one type means different things (``classify``): an intent
observation by the intent state it reports (or by its notification source), a verified
payment by the gate's verdict (the ``Judgement`` also goes into the Step) or by its being
another payment than the sale's, a timer by its kind, an override by its decision. Then
``TRANSITIONS[(sale.state, trigger)]`` is run by ``pointd.core.table.run_row``, which
rejects a missing row and holds every handler to its row's declared targets.
``pointd.core.diagram`` draws docs/sale-lifecycle.md's diagram from those declarations and
``pointd.core.explore`` walks every sequence of events through this table.

The money-safety rules (architecture.md §2) are kept here as follows:

1. Only a ``PaymentVerified`` of the sale's own payment judged ``RELEASE`` by
   ``gate.judge_payment`` moves a sale to APPROVED, and only a supervisor's
   ``OverrideGiven(release)`` moves it to OVERRIDDEN; ``IntentObserved`` (FINISHED or not)
   at most starts verification.
2. CONFIRMATION_REQUIRED holds the sale (HELD); the VERIFY timer fetches the payment with
   doubling back-off; the ESCALATE timer escalates; every restart re-tells the hold.
3. ``CreateIntent`` for attempt n+1 is emitted only by ``AttemptNotFound`` for attempt n;
   an unknown outcome leads to CREATE_UNKNOWN and ``ReconcileAttempt``. A resend of the
   same attempt happens only after ``CreateNotSent``.
4. Admission refuses a lane with an unfinished sale and a terminal held by another sale,
   answers a repeated correlation id with its sale's standing while that is the same
   purchase (``is_retry``), and refuses it as reused otherwise.
5. Intent states are ranked; a lower or equal rank is stale or a duplicate and changes
   nothing; final sale states have no outgoing transitions.
6. Truth from the API: no notification is a fact. The engine turns a relayed notification
   into a fetch (``GET`` intent or order, then ``/v1/payments``), so every
   ``IntentObserved`` the core acts on is an API answer, and the payment a sale verifies
   is the one that answer names. An ``IntentObserved`` from a notification (only journals
   older than schema 4 hold them; see ``pointd.journal.upgrades``) has its own row in every
   state, which rejects it unread.

Forgetting settled sales
------------------------
A daemon that runs for years cannot keep every sale in memory. ``SettledSalesForgotten``
(journaled like any event, so replay forgets where the live daemon did) runs
``forget_settled``: final sales last changed before a time, with no refund still in
progress, leave ``sales`` and the ``intents``/``payments``/``overrides``/``requests``
entries that name them, and their refunds go with them (as do settled refunds of sales no
longer known). Final sales never change again, so no decision about a kept sale depended on
them except through those indexes; what changes is only that a late event naming a
forgotten intent, payment or sale finds no sale and is rejected (harmless: it cannot be
adopted elsewhere, because its external_reference names the forgotten sale, and rule 1's
gate still checks any payment a kept sale is shown), and that a forgotten sale's
correlation id is free again. Fraud alerts are all kept: they are few and the gate reads
them. One more guard keeps a forgotten sale id from being reused: ``forgotten_through`` is
the greatest id forgotten, and admission refuses any id at or below it. The daemon mints
time-ordered ids (``pointd.app.checkout.new_sale_id``), so a fresh id always sorts above
ids forgotten days ago; only a clock that went back by days is refused (and alerted).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from pointd.core import refunds
from pointd.core.effects import (
    AlertTechnician,
    CancelIntent,
    CreateIntent,
    Effect,
    FetchIntent,
    FetchPayment,
    Notice,
    ReconcileAttempt,
    Severity,
    TellRegister,
)
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
from pointd.core.gate import APPROVED_STATUS, Judgement, Verdict, judge_payment
from pointd.core.persistent import PersistentMap
from pointd.core.policy import Policy, backoff
from pointd.core.records import (
    CoreState,
    Override,
    Sale,
    newest_sale_per_request,
    request_key,
)
from pointd.core.reference import (
    MAX_LANE,
    SALE_ID_PATTERN,
    ExternalReference,
    ExternalReferenceError,
)
from pointd.core.states import (
    CREATING_STATES,
    ENDED_UNPAID_STATES,
    FINAL_INTENT_STATES,
    FINAL_STATES,
    GOODS_RELEASED_STATES,
    HANDOVER_ALLOWED_STATES,
    LIVE_INTENT_STATES,
    OVERRIDABLE_STATES,
    PAID_INTENT_STATES,
    TERMINAL_HOLDING_STATES,
    VERIFYING_STATES,
    Admission,
    IntentState,
    Refusal,
    SaleState,
)
from pointd.core.table import Rejection, Step, Table, Transition, Trigger, Tx, run_row

__all__ = [
    "OVERRIDABLE_STATES",
    "OWNED_TIMERS",
    "SALES",
    "TERMINAL_HOLDING_STATES",
    "TRANSITIONS",
    "CoreState",
    "Override",
    "Policy",
    "Rejection",
    "Sale",
    "Step",
    "Transition",
    "classify",
    "forget_settled",
    "forgettable",
    "is_retry",
    "step",
    "telling",
]

S = SaleState

# Intent states by progress; equal or lower rank than what a sale has seen is stale.
INTENT_RANK: Mapping[IntentState, int] = {
    IntentState.OPEN: 1,
    IntentState.ON_TERMINAL: 2,
    IntentState.PROCESSING: 3,
    IntentState.PROCESSED: 4,
    **dict.fromkeys(FINAL_INTENT_STATES, 5),
}
# The sale state an intent state leads to (OPEN is where a live intent starts: never later).
INTENT_TARGET: Mapping[IntentState, SaleState] = {
    IntentState.ON_TERMINAL: S.ON_TERMINAL,
    IntentState.PROCESSING: S.PROCESSING,
    IntentState.PROCESSED: S.PROCESSING,
    IntentState.FINISHED: S.VERIFYING,
    IntentState.CONFIRMATION_REQUIRED: S.HELD,
    IntentState.CANCELED: S.CANCELED,
    IntentState.ERROR: S.FAILED,
    IntentState.ABANDONED: S.ABANDONED,
}
# The least advanced intent state a sale in each live state can have seen: a PROCESSING sale
# saw PROCESSING at least; an ON_TERMINAL one may have seen only OPEN (its cancel was
# refused because the terminal took the intent first).
LOWEST_SEEN_INTENT: Mapping[SaleState, IntentState] = {
    S.OPEN: IntentState.OPEN,
    S.ON_TERMINAL: IntentState.OPEN,
    S.PROCESSING: IntentState.PROCESSING,
    S.CANCELING: IntentState.OPEN,
}
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


class Unmatched(StrEnum):
    """A trigger qualifier for an event about something other than the sale's own."""

    ANOTHER_PAYMENT = "another_payment"  # a verified payment that is not the sale's payment


def telling(sale: Sale, notice: Notice | None = None, *, repeated: bool = False) -> TellRegister:
    """The register message effect for a sale's current standing (the only builder)."""
    return TellRegister(
        lane=sale.lane, correlation_id=sale.correlation_id, sale_id=sale.sale_id,
        state=sale.state, refusal=sale.refusal, payment_id=sale.payment_id,
        amount_cents=sale.amount_cents, notice=notice,
        approval_withdrawn=sale.approval_withdrawn, repeated=repeated,
    )


class _SaleKind:
    """How the shared runner (``pointd.core.table``) handles a sale."""

    name = "sale"

    def state_of(self, record: Sale) -> SaleState:
        return record.state

    def owner_of(self, record: Sale) -> str:
        return record.sale_id

    def sale_of(self, record: Sale) -> str:
        return record.sale_id

    def owned_timers(self, state: StrEnum) -> frozenset[TimerKind]:
        return OWNED_TIMERS.get(S(state), frozenset())

    def entering(self, record: Sale, state: StrEnum) -> Sale:
        withdrawn = record.approval_withdrawn
        if state in HANDOVER_ALLOWED_STATES:
            withdrawn = False
        elif record.state is S.APPROVED and state is not S.HANDED_OVER:
            withdrawn = True  # the register was told "approved", and may still hold the goods
        return dataclasses.replace(record, state=S(state), approval_withdrawn=withdrawn)

    def telling(self, record: Sale, notice: Notice | None) -> Effect:
        return telling(record, notice)

    def commit(self, core: CoreState, before: Sale, after: Sale) -> CoreState:
        return _commit(core, before, after)

    def step_ids(self, core: CoreState, record: Sale) -> tuple[str | None, str | None]:
        return record.sale_id, None


SALES = _SaleKind()
SaleTx = Tx[Sale]


# --- admission ---------------------------------------------------------------------------


def is_retry(sale: Sale, now: float, policy: Policy) -> bool:
    """Whether a SALE naming ``sale`` again (same lane, correlation id, amount) is a retry.

    A sale in progress is always the same purchase. One that ended is the same purchase only
    for ``policy.sale_retry_window`` after it last changed (the register lost its RESULT);
    later the register is reusing the id for a new purchase, which must never be answered
    with the old sale's RESULT.
    """
    return not sale.is_final or now - sale.updated_at <= policy.sale_retry_window


def _admit(core: CoreState, event: SaleRequested, now: float, policy: Policy) -> Step:
    def told(state: SaleState, refusal: Refusal | None) -> TellRegister:
        return TellRegister(lane=event.lane, correlation_id=event.correlation_id,
                            sale_id=event.sale_id, state=state, refusal=refusal,
                            payment_id=None, amount_cents=event.amount_cents)

    def refused(reason: str, *effects: Effect) -> Step:
        return Step(core, effects, Rejection(reason, event), None,
                    admission=Admission.REFUSED if effects else None)

    if event.sale_id in core.sales:
        return refused(f"sale id {event.sale_id} is already used")
    if not SALE_ID_PATTERN.fullmatch(event.sale_id):
        return refused("sale id is not 1-26 of [A-Z0-9]", told(S.FAILED, Refusal.INVALID_REQUEST))
    if event.sale_id <= core.forgotten_through:
        # It may be the id of a forgotten sale: reusing it would let that sale's late
        # notifications, found by external_reference, reach this one.
        alert = AlertTechnician(event.sale_id, Severity.WARNING,
                                f"sale id {event.sale_id} sorts at or below forgotten sale "
                                f"{core.forgotten_through}: is the clock days behind?")
        return refused("sale id sorts at or below the ids of forgotten sales",
                       told(S.FAILED, Refusal.INVALID_REQUEST), alert)
    lane_ok = (not isinstance(event.lane, bool) and isinstance(event.lane, int)
               and 1 <= event.lane <= MAX_LANE)
    known = core.sale_of_request(event.lane, event.correlation_id) if lane_ok else None
    if known is not None:
        return _answer_known(core, event, known, now, policy)
    refusal: Refusal | None = None
    if not lane_ok:
        refusal = Refusal.INVALID_REQUEST
    elif core.sale_on_lane(event.lane) is not None:
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
        return Step(_commit(core, None, sale), (told(S.FAILED, refusal),), None, sale.sale_id,
                    admission=Admission.REFUSED)
    reference = str(ExternalReference(core.store_id, event.lane, event.sale_id, 1))
    sale = dataclasses.replace(sale, state=S.CREATING, attempt=1, reference=reference,
                               attempt_started_at=now, sends=1)
    effects: tuple[Effect, ...] = (
        told(S.CREATING, None),
        CreateIntent(sale.sale_id, 1, sale.terminal_id, sale.amount_cents, reference),
    )
    return Step(_commit(core, None, sale), effects, None, sale.sale_id,
                admission=Admission.ADMITTED)


def _answer_known(core: CoreState, event: SaleRequested, known: Sale, now: float,
                  policy: Policy) -> Step:
    """A SALE under a correlation id this lane's register already used."""
    if known.amount_cents != event.amount_cents:
        reason = "this correlation id names a sale of another amount"
    elif not is_retry(known, now, policy):
        minutes = policy.sale_retry_window / 60
        reason = (f"this correlation id names a sale that ended more than {minutes:g} "
                  "minutes ago; a new purchase needs a new id (STATUS still answers it)")
    else:
        # The register repeated a request it already made: answer with that sale.
        return Step(core, (telling(known, repeated=True),),
                    Rejection(f"repeat of sale {known.sale_id} on lane {event.lane}", event),
                    known.sale_id, admission=Admission.REPEATED)
    return Step(core, (), Rejection(reason, event), None, admission=Admission.ID_REUSED)


# --- create outcomes ---------------------------------------------------------------------


def _current_attempt(tx: SaleTx, attempt: int) -> bool:
    if attempt != tx.record.attempt:
        tx.reject(f"attempt {attempt} is not the current attempt {tx.record.attempt}")
        return False
    return True


def _send_attempt(tx: SaleTx) -> None:
    s = tx.record
    assert s.reference is not None
    # Reconciling an attempt whose create is in flight could prove "not found" too early.
    tx.cancel_timer(TimerKind.RECONCILE)
    tx.move(S.CREATING)
    tx.emit(CreateIntent(s.sale_id, s.attempt, s.terminal_id, s.amount_cents, s.reference))


def _on_intent_created(tx: SaleTx, event: IntentCreated) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    known = tx.record.intent_id
    if known == event.intent_id:
        tx.reject("intent already known")
    elif known is not None:
        tx.reject("a second intent for the same attempt")
        tx.alert(Severity.CRITICAL,
                 f"two intents for attempt {event.attempt}: {known} and {event.intent_id}; "
                 "cancel the stray one on the terminal")
    elif _adopt_intent(tx, event.intent_id):
        _enter_open(tx)


def _adopt_intent(tx: SaleTx, intent_id: str) -> bool:
    owner = tx.core.intents.get(intent_id)
    if owner is not None and owner != tx.record.sale_id:
        tx.reject(f"intent {intent_id} belongs to sale {owner}")
        tx.alert(Severity.CRITICAL, f"intent {intent_id} is claimed by sale {owner} and by "
                                    f"sale {tx.record.sale_id}; check the terminal")
        return False
    tx.update(intent_id=intent_id, intent_state=IntentState.OPEN, reconcile_round=0)
    return True


def _enter_open(tx: SaleTx) -> None:
    if tx.record.cancel_requested:
        _start_cancel(tx)
        return
    tx.move(S.OPEN)
    tx.schedule(TimerKind.POLL, tx.policy.poll_fallback_after)
    tx.schedule_at(TimerKind.ABANDON, tx.record.attempt_started_at + tx.policy.abandon_after)


def _start_cancel(tx: SaleTx) -> None:
    s = tx.record
    assert s.intent_id is not None
    tx.move(S.CANCELING)
    if s.timer_due(TimerKind.POLL) is None:
        tx.schedule(TimerKind.POLL, tx.policy.poll_fallback_after)
    tx.emit(CancelIntent(s.sale_id, s.terminal_id, s.intent_id))


def _on_create_not_sent(tx: SaleTx, event: CreateNotSent) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    tx.update(detail=f"create not sent: {event.reason[:200]}")
    if tx.record.cancel_requested:
        tx.move(S.CANCELED)
    elif tx.record.sends >= tx.policy.max_create_sends:
        tx.move(S.FAILED, refusal=Refusal.CLOUD_UNAVAILABLE)
    else:
        tx.move(S.REQUESTED)
        tx.schedule(TimerKind.CREATE_RETRY, tx.policy.create_retry_after)


def _on_create_outcome_unknown(tx: SaleTx, event: CreateOutcomeUnknown) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    tx.update(detail=f"create outcome unknown: {event.reason[:200]}", reconcile_round=0)
    tx.move(S.CREATE_UNKNOWN)
    _reconcile(tx)


def _reconcile(tx: SaleTx) -> None:
    s = tx.record
    assert s.reference is not None
    tx.emit(ReconcileAttempt(s.sale_id, s.attempt, s.reference, s.terminal_id,
                             s.attempt_started_at))
    delay = backoff(tx.policy.reconcile_initial_backoff, tx.policy.reconcile_max_backoff,
                    s.reconcile_round)
    tx.schedule(TimerKind.RECONCILE, delay)


def _on_terminal_busy(tx: SaleTx, event: TerminalBusy) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    tx.update(detail="terminal already has a queued intent (409)")
    tx.move(S.FAILED, refusal=Refusal.TERMINAL_BUSY)


def _on_create_rejected(tx: SaleTx, event: CreateRejected) -> None:
    if not _current_attempt(tx, event.attempt):
        return
    tx.update(detail=f"create refused by Mercado Pago: {event.code[:80]}")
    tx.move(S.FAILED)
    tx.alert(Severity.WARNING, f"create refused ({event.code[:80]}): check credentials, "
                               "terminal ownership and configuration")


def _on_create_retry_due(tx: SaleTx, event: TimerExpired) -> None:
    tx.fired(event.timer)
    tx.update(sends=tx.record.sends + 1)
    _send_attempt(tx)


# --- reconciliation ----------------------------------------------------------------------


def _on_attempt_not_found(tx: SaleTx, event: AttemptNotFound) -> None:
    if _current_attempt(tx, event.attempt):
        _after_attempt_not_found(tx, event)


def _on_attempt_not_found_after_restart(tx: SaleTx, event: AttemptNotFound) -> None:
    # Only a restart's reconciliation answers a CREATING sale, and recovery armed its
    # RECONCILE timer in the engine alone (not in the sale's timers). Left armed, it would
    # fire while the next attempt's create is in flight and could prove that attempt
    # absent too early, so that a third would follow one that may still be charged
    # (found by pointd.core.explore).
    if _current_attempt(tx, event.attempt):
        tx.disarm(TimerKind.RECONCILE)
        _after_attempt_not_found(tx, event)


def _after_attempt_not_found(tx: SaleTx, event: AttemptNotFound) -> None:
    s = tx.record
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


def _on_payments_found(tx: SaleTx, event: PaymentsFound) -> None:
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
        tx.alert(Severity.CRITICAL, f"several approved payments for sale {tx.record.sale_id}: "
                                    f"{ids}; refund all but one")
        return
    _start_verification(tx, S.VERIFYING)


def _reconcile_round(tx: SaleTx) -> None:
    rounds = tx.record.reconcile_round + 1
    tx.update(reconcile_round=rounds)
    if rounds == tx.policy.create_reconcile_attempts:
        tx.update(detail=f"create outcome still unknown after {rounds} rounds: supervisor "
                         "needed")
        tx.alert(Severity.WARNING, f"create outcome still unknown after {rounds} "
                                   "reconciliation rounds; Mercado Pago may be unreachable; "
                                   f"check terminal {tx.record.terminal_id}, or void or "
                                   f"release sale {tx.record.sale_id}")
        tx.tell(Notice.CREATE_UNRESOLVED)
    _reconcile(tx)


def _on_reconcile_due(tx: SaleTx, event: TimerExpired) -> None:
    tx.fired(event.timer)
    _reconcile_round(tx)


def _on_reconcile_due_after_restart(tx: SaleTx, event: TimerExpired) -> None:
    # Only recovery arms this timer for a CREATING sale: after a restart its create is an
    # unknown outcome, since the send may have happened.
    tx.fired(event.timer)
    tx.move(S.CREATE_UNKNOWN)
    _reconcile_round(tx)


# --- intent observations -----------------------------------------------------------------


def _reject_notification(tx: SaleTx, event: IntentObserved) -> None:
    tx.reject("a notification is a hint, not a fact: only the API's answer about it counts")


def _observed(event: IntentObserved) -> IntentState:
    return IntentState(event.state.strip().upper())  # ``classify`` already parsed it


def _adopt_observed(tx: SaleTx, event: IntentObserved) -> None:
    """A sale still creating meets its intent: adopt it, then follow the state it reports."""
    if tx.record.intent_id is not None:
        tx.reject(f"the sale already knows intent {tx.record.intent_id}")
        return
    if not _adoptable(tx, event) or not _adopt_intent(tx, event.intent_id):
        return
    # The intent exists, so it is at least OPEN; the observed state then applies.
    _enter_open(tx)
    observed = _observed(event)
    if observed is not IntentState.OPEN:
        _follow(tx, event, observed)


def _adoptable(tx: SaleTx, event: IntentObserved) -> bool:
    s = tx.record
    try:
        ref = ExternalReference.parse(event.external_reference or "")
    except ExternalReferenceError:
        tx.reject("intent without a reference to this sale cannot be adopted")
        return False
    if ref.attempt != s.attempt:
        _refuse_adoption(tx, event, ref.attempt)
        return False
    return True


def _refuse_adoption(tx: SaleTx, event: IntentObserved, attempt: int) -> None:
    s = tx.record
    tx.reject(f"intent for attempt {attempt} found; current attempt is {s.attempt} in state "
              f"{s.state}")
    if attempt in s.not_found_attempts:
        tx.alert(Severity.CRITICAL, f"intent {event.intent_id} exists for attempt {attempt}, "
                                    "which reconciliation found absent")


def _follow(tx: SaleTx, event: IntentObserved, observed: IntentState) -> None:
    """Record the newer intent state and move where it leads (after ``_enter_open``)."""
    tx.update(intent_state=observed)
    if event.payment_id and tx.record.payment_id is None and observed in PAID_INTENT_STATES:
        _claim_payment(tx, event.payment_id)
    _advance(tx, observed)


def _advance(tx: SaleTx, observed: IntentState) -> None:
    target = INTENT_TARGET[observed]
    if target in (S.CANCELED, S.FAILED, S.ABANDONED):
        tx.update(detail=f"intent {observed}")
        tx.move(target)
    elif target is S.VERIFYING:
        _start_verification(tx, S.VERIFYING)
    elif target is S.HELD:
        tx.update(detail="CONFIRMATION_REQUIRED: verifying the payment before handover")
        _start_verification(tx, S.HELD)
    else:
        notice = Notice.CANCEL_ON_TERMINAL if tx.record.cancel_requested else None
        tx.move(target, notice=notice)
        _keep_polling(tx)


def _keep_polling(tx: SaleTx) -> None:
    if tx.record.timer_due(TimerKind.POLL) is None:
        tx.schedule(TimerKind.POLL, tx.policy.poll_fallback_after)


def _newer(tx: SaleTx, event: IntentObserved) -> IntentState | None:
    """The observed state if it is this sale's intent and newer than what it saw, else None."""
    s = tx.record
    if s.intent_id != event.intent_id:
        tx.reject("intent is not this sale's intent")
        tx.alert(Severity.CRITICAL, f"intent {event.intent_id} carries the reference of sale "
                                    f"{s.sale_id}, whose intent is {s.intent_id}")
        return None
    observed = _observed(event)
    known = s.intent_state
    if known is not None and INTENT_RANK[observed] <= INTENT_RANK[known]:
        tx.reject(f"stale intent state {observed} after {known}")
        return None
    return observed


def _observe_live(tx: SaleTx, event: IntentObserved) -> None:
    """A live intent moved on: follow it to the sale state it leads to."""
    observed = _newer(tx, event)
    if observed is not None:
        _follow(tx, event, observed)


def _note_progress(tx: SaleTx, event: IntentObserved) -> None:
    """A live intent moved on within the sale's state: record it, keep polling."""
    observed = _newer(tx, event)
    if observed is not None:
        tx.update(intent_state=observed)
        _keep_polling(tx)


def _observe_after_intent_end(tx: SaleTx, event: IntentObserved) -> None:
    """The sale's intent already ended: an observation can only teach a missing payment id."""
    s = tx.record
    if s.intent_id is None:
        # Found by reconciliation's payments search: no intent was ever adopted.
        try:
            attempt = ExternalReference.parse(event.external_reference or "").attempt
        except ExternalReferenceError:
            tx.reject("intent without a reference to this sale cannot be adopted")
            return
        _refuse_adoption(tx, event, attempt)
        return
    if s.intent_id != event.intent_id:
        tx.reject("intent is not this sale's intent")
        tx.alert(Severity.CRITICAL, f"intent {event.intent_id} carries the reference of sale "
                                    f"{s.sale_id}, whose intent is {s.intent_id}")
        return
    observed = _observed(event)
    if observed is s.intent_state and event.payment_id and s.payment_id is None:
        if _claim_payment(tx, event.payment_id):
            tx.emit(FetchPayment(s.sale_id, event.payment_id))
    elif observed is s.intent_state:
        tx.reject("duplicate intent state")
    else:
        tx.reject(f"intent already ended {s.intent_state}; ignoring {observed}")


def _claim_payment(tx: SaleTx, payment_id: str) -> bool:
    owner = tx.core.payments.get(payment_id)
    if owner is not None and owner != tx.record.sale_id:
        tx.alert(Severity.CRITICAL, f"payment {payment_id} is claimed by sale {owner} and "
                                    f"by sale {tx.record.sale_id}; verify both by hand")
        return False
    tx.update(payment_id=payment_id)
    return True


def _on_poll_due(tx: SaleTx, event: TimerExpired) -> None:
    tx.fired(event.timer)
    s = tx.record
    if s.intent_id is None:
        tx.reject("no intent to poll")
        return
    tx.emit(FetchIntent(s.sale_id, s.intent_id))
    tx.schedule(TimerKind.POLL, tx.policy.poll_fallback_after)


def _on_abandon_due(tx: SaleTx, event: TimerExpired) -> None:
    tx.fired(event.timer)
    s = tx.record
    assert s.intent_id is not None
    # Never conclude "abandoned" locally: the API's answer ends the sale.
    tx.emit(FetchIntent(s.sale_id, s.intent_id))


# --- verification ------------------------------------------------------------------------


def _start_verification(tx: SaleTx, state: SaleState) -> None:
    if tx.record.verify_started_at is None:
        tx.update(verify_started_at=tx.now)
    tx.update(verify_round=0)
    tx.move(state)
    _fetch_truth(tx)
    tx.schedule(TimerKind.VERIFY, tx.policy.verify_initial_backoff)
    if state is not S.ESCALATED:
        started = tx.record.verify_started_at
        assert started is not None
        tx.schedule_at(TimerKind.ESCALATE, started + tx.policy.confirmation_escalate_after)


def _fetch_truth(tx: SaleTx) -> None:
    s = tx.record
    if s.payment_id is not None:
        tx.emit(FetchPayment(s.sale_id, s.payment_id))
    elif s.intent_id is not None:
        tx.emit(FetchIntent(s.sale_id, s.intent_id))


def _on_verify_due(tx: SaleTx, event: TimerExpired) -> None:
    tx.fired(event.timer)
    rounds = tx.record.verify_round + 1
    tx.update(verify_round=rounds)
    _fetch_truth(tx)
    tx.schedule(TimerKind.VERIFY, backoff(tx.policy.verify_initial_backoff,
                                          tx.policy.verify_max_backoff, rounds))


def _on_escalate_due(tx: SaleTx, event: TimerExpired) -> None:
    tx.fired(event.timer)
    tx.update(detail="payment still unverified: supervisor needed")
    tx.move(S.ESCALATED)
    tx.alert(Severity.WARNING, f"sale {tx.record.sale_id} on lane {tx.record.lane}: payment "
                               "not verified in time; verify on the terminal or override")


def _judgement(tx: SaleTx) -> Judgement:
    assert tx.judgement is not None  # ``classify`` judged the payment for its row
    return tx.judgement


def _release(tx: SaleTx, event: PaymentVerified) -> None:
    tx.update(approved_payment_id=event.payment_id, detail=_judgement(tx).reason)
    tx.move(S.APPROVED)
    tx.schedule(TimerKind.HANDOVER, tx.policy.handover_confirm_after)


def _already_verified(tx: SaleTx, event: PaymentVerified) -> None:
    tx.reject("payment already verified")


def _decline(tx: SaleTx, event: PaymentVerified) -> None:
    tx.update(approved_payment_id=None, detail=_judgement(tx).reason)
    tx.move(S.DECLINED)


def _block(tx: SaleTx, event: PaymentVerified) -> None:
    tx.update(approved_payment_id=None, detail=_judgement(tx).reason)
    tx.move(S.BLOCKED)
    tx.alert(Severity.CRITICAL, f"fraud alert for payment {event.payment_id}: do not hand over")


def _hold_waiting(tx: SaleTx, event: PaymentVerified) -> None:
    tx.update(detail=_judgement(tx).reason)
    tx.move(S.HELD)


def _keep_waiting(tx: SaleTx, event: PaymentVerified) -> None:
    tx.update(detail=_judgement(tx).reason)


def _withdraw_approval(tx: SaleTx, alert: str) -> None:
    tx.update(approved_payment_id=None, detail=_judgement(tx).reason)
    _start_verification(tx, S.ESCALATED)
    tx.alert(Severity.CRITICAL, alert)


def _approval_no_longer_approved(tx: SaleTx, event: PaymentVerified) -> None:
    _withdraw_approval(tx, f"payment {event.payment_id} no longer approved: "
                           f"{_judgement(tx).reason}")


def _approval_no_longer_matches(tx: SaleTx, event: PaymentVerified) -> None:
    _withdraw_approval(tx, f"payment {event.payment_id}: {_judgement(tx).reason}")


def _escalate_mismatch(tx: SaleTx, event: PaymentVerified) -> None:
    tx.update(approved_payment_id=None, detail=_judgement(tx).reason)
    tx.move(S.ESCALATED)
    tx.alert(Severity.CRITICAL, f"payment {event.payment_id}: {_judgement(tx).reason}")


def _mismatch_noted(tx: SaleTx, event: PaymentVerified) -> None:
    tx.update(approved_payment_id=None, detail=_judgement(tx).reason)
    tx.alert(Severity.CRITICAL, f"payment {event.payment_id}: {_judgement(tx).reason}")


def _another_payment(tx: SaleTx, event: PaymentVerified) -> None:
    s = tx.record
    tx.reject(f"payment {event.payment_id} is not the sale's payment {s.payment_id}")
    tx.alert(Severity.CRITICAL, f"second payment {event.payment_id} seen for sale "
                                f"{s.sale_id}; refund it if it was charged")


def _payment_not_found_hold(tx: SaleTx, event: PaymentNotFound) -> None:
    tx.update(detail=f"payment {event.payment_id} not found yet")
    tx.move(S.HELD)


def _payment_not_found_yet(tx: SaleTx, event: PaymentNotFound) -> None:
    tx.update(detail=f"payment {event.payment_id} not found yet")


def _on_fraud_alert(tx: SaleTx, event: FraudAlerted) -> None:
    tx.update(approved_payment_id=None, detail="fraud alert names the payment")
    tx.move(S.BLOCKED)
    tx.alert(Severity.CRITICAL, f"fraud alert for payment {event.payment_id}: do not hand over")


def _on_fraud_after_goods_left(tx: SaleTx, event: FraudAlerted) -> None:
    tx.alert(Severity.CRITICAL, f"fraud alert for payment {event.payment_id} after the "
                                f"goods of sale {tx.record.sale_id} may have left "
                                f"({tx.record.state})")


def _on_fraud_after_end(tx: SaleTx, event: FraudAlerted) -> None:
    tx.reject(f"sale already ended {tx.record.state}")


# --- register, supervisor, cancel --------------------------------------------------------


def _handed_over(tx: SaleTx, event: HandoverConfirmed) -> None:
    tx.move(S.HANDED_OVER)


def _handover_already_recorded(tx: SaleTx, event: HandoverConfirmed) -> None:
    tx.reject("handover already recorded or released by a supervisor")


def _handover_unpaid(tx: SaleTx, event: HandoverConfirmed) -> None:
    s = tx.record
    tx.reject(f"handover reported while the sale is {s.state}")
    tx.alert(Severity.CRITICAL, f"register on lane {s.lane} reports goods left for sale "
                                f"{s.sale_id}, which is {s.state}: not paid")
    tx.tell()


def _late_handover(tx: SaleTx, event: HandoverConfirmed) -> None:
    tx.reject("handover confirmed after handover_confirm_after: the sale was already closed "
              "unconfirmed")
    tx.alert(Severity.INFO, f"register on lane {tx.record.lane} confirmed the handover of "
                            f"sale {tx.record.sale_id} after the sale was closed unconfirmed")


def _on_handover_due(tx: SaleTx, event: TimerExpired) -> None:
    tx.fired(event.timer)
    s = tx.record
    tx.update(detail="approved; the register did not confirm the handover in time")
    tx.move(S.HANDOVER_UNCONFIRMED)
    tx.alert(Severity.WARNING, f"register on lane {s.lane} did not confirm the handover of "
                               f"sale {s.sale_id} within {tx.policy.handover_confirm_after:g} "
                               "s; the lane is free again. A register must send HANDOVER_DONE "
                               "(docs/register-protocol.md section 7)")


def _override(tx: SaleTx, event: OverrideGiven, state: SaleState) -> None:
    if not event.reason.strip():
        tx.reject("an override needs a reason")
        return
    override = Override(event.decision, event.reason[:500], event.uid, tx.now)
    tx.update(override=override, detail=f"override {event.decision} by uid {event.uid}")
    tx.move(state)
    tx.alert(Severity.INFO, f"sale {tx.record.sale_id}: supervisor uid {event.uid} chose "
                            f"{event.decision}: {event.reason[:200]}")


def _override_release(tx: SaleTx, event: OverrideGiven) -> None:
    _override(tx, event, S.OVERRIDDEN)


def _override_void(tx: SaleTx, event: OverrideGiven) -> None:
    _override(tx, event, S.DECLINED)


def _cancel_unsent(tx: SaleTx, event: CancelRequested) -> None:
    tx.update(cancel_requested=True, detail=f"canceled by {event.by[:40]}")
    tx.move(S.CANCELED)


def _cancel_open(tx: SaleTx, event: CancelRequested) -> None:
    tx.update(cancel_requested=True)
    _start_cancel(tx)


def _cancel_when_known(tx: SaleTx, event: CancelRequested) -> None:
    # Nothing to cancel yet (or already asked): the intent is canceled once it is known.
    tx.update(cancel_requested=True)
    tx.tell()


def _cancel_on_terminal(tx: SaleTx, event: CancelRequested) -> None:
    tx.tell(Notice.CANCEL_ON_TERMINAL)


def _cancel_too_late(tx: SaleTx, event: CancelRequested) -> None:
    tx.tell(Notice.CANCEL_TOO_LATE)


def _cancel_after_end(tx: SaleTx, event: CancelRequested) -> None:
    tx.reject(f"sale already ended {tx.record.state}")
    tx.tell()


def _on_cancel_refused(tx: SaleTx, event: CancelRefused) -> None:
    s = tx.record
    assert s.intent_id is not None
    tx.update(detail=f"cancel refused: {event.reason[:200]}")
    tx.move(S.ON_TERMINAL, notice=Notice.CANCEL_ON_TERMINAL)
    tx.emit(FetchIntent(s.sale_id, s.intent_id))


# --- after the end -----------------------------------------------------------------------


def _after_end_observed(tx: SaleTx, event: IntentObserved) -> None:
    s = tx.record
    tx.reject(f"sale already ended {s.state}")
    observed = _observed(event)
    if observed is IntentState.OPEN and event.intent_id == s.intent_id:
        # The API still shows the ended sale's intent waiting on the terminal: clear it.
        tx.emit(CancelIntent(s.sale_id, s.terminal_id, event.intent_id))
    elif (observed in PAID_INTENT_STATES and event.payment_id
          and event.payment_id != s.payment_id):
        tx.alert(Severity.CRITICAL, f"payment {event.payment_id} taken for sale {s.sale_id}, "
                                    f"which already ended {s.state}; check and refund")


def _after_end_verified(tx: SaleTx, event: PaymentVerified) -> None:
    s = tx.record
    tx.reject(f"sale already ended {s.state}")
    paid = event.status.strip().lower() == APPROVED_STATUS
    if paid and s.state not in GOODS_RELEASED_STATES:
        tx.alert(Severity.CRITICAL, f"approved payment {event.payment_id} for sale "
                                    f"{s.sale_id}, which ended {s.state} without handover; "
                                    "refund it")


# --- the table ---------------------------------------------------------------------------

SaleTable = Table[Sale]
_VERIFIED_OR_APPROVED = VERIFYING_STATES | {S.APPROVED}
_INTENT_ENDED = _VERIFIED_OR_APPROVED | {S.BLOCKED}


def _rows(table: dict[tuple[StrEnum, Trigger], Transition[Sale]], states: Iterable[SaleState],
          trigger: Trigger, handler: Any, targets: Iterable[SaleState] = ()) -> None:
    row: Transition[Sale] = Transition(handler, frozenset(targets))
    for state in states:
        key = (state, trigger)
        assert key not in table, f"two rows for {key}"
        table[key] = row


def _observation_rows(table: dict[tuple[StrEnum, Trigger], Transition[Sale]]) -> None:
    notified = (IntentObserved, ObservationSource.NOTIFICATION)
    _rows(table, SaleState, notified, _reject_notification)
    for observed in IntentState:
        trigger = (IntentObserved, observed)
        target = INTENT_TARGET.get(observed)
        # A sale still creating adopts the intent (OPEN, or CANCELING if a cancel waits),
        # then follows it.
        adopted = {S.OPEN, S.CANCELING} if target is None else {target}
        _rows(table, CREATING_STATES, trigger, _adopt_observed, adopted)
        for state in LIVE_INTENT_STATES:
            if target is None or target is state:
                _rows(table, [state], trigger, _note_progress)
            elif INTENT_RANK[observed] > INTENT_RANK[LOWEST_SEEN_INTENT[state]]:
                _rows(table, [state], trigger, _observe_live, [target])
            else:
                # Never newer than what such a sale saw: always stale, never a move.
                _rows(table, [state], trigger, _observe_live)
        _rows(table, _INTENT_ENDED, trigger, _observe_after_intent_end)
        _rows(table, FINAL_STATES, trigger, _after_end_observed)


def _payment_rows(table: dict[tuple[StrEnum, Trigger], Transition[Sale]]) -> None:
    def verdict(value: Verdict) -> Trigger:
        return (PaymentVerified, value)

    _rows(table, VERIFYING_STATES, verdict(Verdict.RELEASE), _release, [S.APPROVED])
    _rows(table, [S.APPROVED], verdict(Verdict.RELEASE), _already_verified)
    _rows(table, _VERIFIED_OR_APPROVED, verdict(Verdict.DECLINE), _decline, [S.DECLINED])
    # No APPROVED row: a fraud alert for an approved sale's payment blocks it directly, so
    # an approved sale's payment is never one a fraud alert names.
    _rows(table, VERIFYING_STATES, verdict(Verdict.BLOCK), _block, [S.BLOCKED])
    _rows(table, [S.VERIFYING], verdict(Verdict.WAIT), _hold_waiting, [S.HELD])
    _rows(table, [S.HELD, S.ESCALATED], verdict(Verdict.WAIT), _keep_waiting)
    _rows(table, [S.APPROVED], verdict(Verdict.WAIT), _approval_no_longer_approved,
          [S.ESCALATED])
    for doubt in (Verdict.MISMATCH, Verdict.REVERSED):
        _rows(table, [S.VERIFYING, S.HELD], verdict(doubt), _escalate_mismatch, [S.ESCALATED])
        _rows(table, [S.ESCALATED], verdict(doubt), _mismatch_noted)
        _rows(table, [S.APPROVED], verdict(doubt), _approval_no_longer_matches, [S.ESCALATED])
    another = (PaymentVerified, Unmatched.ANOTHER_PAYMENT)
    _rows(table, _VERIFIED_OR_APPROVED, another, _another_payment)
    for qualifier in (*Verdict, Unmatched.ANOTHER_PAYMENT):
        _rows(table, FINAL_STATES, (PaymentVerified, qualifier), _after_end_verified)
    _rows(table, [S.VERIFYING], PaymentNotFound, _payment_not_found_hold, [S.HELD])
    _rows(table, [S.HELD, S.ESCALATED], PaymentNotFound, _payment_not_found_yet)
    _rows(table, _VERIFIED_OR_APPROVED, FraudAlerted, _on_fraud_alert, [S.BLOCKED])
    _rows(table, GOODS_RELEASED_STATES, FraudAlerted, _on_fraud_after_goods_left)
    _rows(table, ENDED_UNPAID_STATES, FraudAlerted, _on_fraud_after_end)


def _timer_rows(table: dict[tuple[StrEnum, Trigger], Transition[Sale]]) -> None:
    def timer(kind: TimerKind) -> Trigger:
        return (TimerExpired, kind)

    _rows(table, [S.REQUESTED], timer(TimerKind.CREATE_RETRY), _on_create_retry_due,
          [S.CREATING])
    _rows(table, [S.CREATING], timer(TimerKind.RECONCILE), _on_reconcile_due_after_restart,
          [S.CREATE_UNKNOWN])
    _rows(table, [S.CREATE_UNKNOWN], timer(TimerKind.RECONCILE), _on_reconcile_due)
    _rows(table, LIVE_INTENT_STATES, timer(TimerKind.POLL), _on_poll_due)
    _rows(table, [S.OPEN], timer(TimerKind.ABANDON), _on_abandon_due)
    _rows(table, VERIFYING_STATES, timer(TimerKind.VERIFY), _on_verify_due)
    _rows(table, [S.VERIFYING, S.HELD], timer(TimerKind.ESCALATE), _on_escalate_due,
          [S.ESCALATED])
    _rows(table, [S.APPROVED], timer(TimerKind.HANDOVER), _on_handover_due,
          [S.HANDOVER_UNCONFIRMED])


def _build_table() -> dict[tuple[StrEnum, Trigger], Transition[Sale]]:
    table: dict[tuple[StrEnum, Trigger], Transition[Sale]] = {}
    _observation_rows(table)
    _rows(table, CREATING_STATES, IntentCreated, _on_intent_created, [S.OPEN, S.CANCELING])
    _rows(table, [S.CREATING], CreateNotSent, _on_create_not_sent,
          [S.REQUESTED, S.FAILED, S.CANCELED])
    _rows(table, [S.CREATING], CreateOutcomeUnknown, _on_create_outcome_unknown,
          [S.CREATE_UNKNOWN])
    _rows(table, [S.CREATING], TerminalBusy, _on_terminal_busy, [S.FAILED])
    _rows(table, [S.CREATING], CreateRejected, _on_create_rejected, [S.FAILED])
    _rows(table, [S.CREATE_UNKNOWN], AttemptNotFound, _on_attempt_not_found,
          [S.CREATING, S.CANCELED, S.FAILED])
    _rows(table, [S.CREATING], AttemptNotFound, _on_attempt_not_found_after_restart,
          [S.CREATING, S.CANCELED, S.FAILED])
    _rows(table, CREATING_STATES, PaymentsFound, _on_payments_found, [S.VERIFYING, S.ESCALATED])
    _payment_rows(table)
    _timer_rows(table)

    _rows(table, [S.REQUESTED], CancelRequested, _cancel_unsent, [S.CANCELED])
    _rows(table, [S.OPEN], CancelRequested, _cancel_open, [S.CANCELING])
    _rows(table, [*CREATING_STATES, S.CANCELING], CancelRequested, _cancel_when_known)
    _rows(table, [S.ON_TERMINAL, S.PROCESSING], CancelRequested, _cancel_on_terminal)
    _rows(table, _INTENT_ENDED, CancelRequested, _cancel_too_late)
    _rows(table, FINAL_STATES, CancelRequested, _cancel_after_end)
    _rows(table, [S.CANCELING], CancelRefused, _on_cancel_refused, [S.ON_TERMINAL])

    _rows(table, [S.APPROVED], HandoverConfirmed, _handed_over, [S.HANDED_OVER])
    _rows(table, [S.HANDED_OVER, S.OVERRIDDEN], HandoverConfirmed, _handover_already_recorded)
    _rows(table, [S.HANDOVER_UNCONFIRMED], HandoverConfirmed, _late_handover)
    _rows(table, set(SaleState) - GOODS_RELEASED_STATES - {S.APPROVED, S.HANDED_OVER},
          HandoverConfirmed, _handover_unpaid)
    _rows(table, OVERRIDABLE_STATES, (OverrideGiven, OverrideDecision.RELEASE),
          _override_release, [S.OVERRIDDEN])
    _rows(table, OVERRIDABLE_STATES, (OverrideGiven, OverrideDecision.VOID), _override_void,
          [S.DECLINED])
    return table


TRANSITIONS: SaleTable = MappingProxyType(_build_table())


# --- routing, classification and commit --------------------------------------------------


def _by_reference(core: CoreState, external_reference: str | None) -> str | None:
    if not external_reference:
        return None
    try:
        ref = ExternalReference.parse(external_reference)
    except ExternalReferenceError:
        return None
    return ref.sale if ref.store == core.store_id and ref.sale in core.sales else None


def _route(core: CoreState, event: Event) -> str | None:
    if isinstance(event, CancelRequested):
        if event.sale_id is not None:
            return event.sale_id if event.sale_id in core.sales else None
        return core.lanes.get(event.lane) if event.lane is not None else None
    if isinstance(event, IntentObserved):
        known = core.intents.get(event.intent_id)
        return known if known is not None else _by_reference(core, event.external_reference)
    if isinstance(event, PaymentVerified):
        known = core.payments.get(event.payment_id)
        return known if known is not None else _by_reference(core, event.external_reference)
    if isinstance(event, PaymentNotFound | FraudAlerted):
        return core.payments.get(event.payment_id)
    sale_id = getattr(event, "sale_id", None)
    return sale_id if isinstance(sale_id, str) and sale_id in core.sales else None


def classify(sale: Sale, event: Event, core: CoreState,
             policy: Policy) -> tuple[Trigger | None, Judgement | None, str]:
    """The event's trigger for this sale, the gate's judgement of a verified payment, and
    (when the event cannot be classified) why.
    """
    if isinstance(event, IntentObserved):
        if event.source is ObservationSource.NOTIFICATION:
            return (IntentObserved, ObservationSource.NOTIFICATION), None, ""
        try:
            observed = IntentState(event.state.strip().upper())
        except ValueError:
            return None, None, f"unknown intent state {event.state[:40]!r}"
        return (IntentObserved, observed), None, ""
    if isinstance(event, PaymentVerified):
        judgement = judge_payment(
            event, amount_cents=sale.amount_cents, currency=policy.currency,
            collector_id=policy.collector_id, external_reference=sale.reference,
            fraud_alerted=event.payment_id in core.fraud_alerts,
            tips_allowed=policy.tips_allowed,
        )
        if event.payment_id != sale.payment_id:
            return (PaymentVerified, Unmatched.ANOTHER_PAYMENT), judgement, ""
        return (PaymentVerified, judgement.verdict), judgement, ""
    if isinstance(event, TimerExpired):
        return (TimerExpired, event.timer), None, ""
    if isinstance(event, OverrideGiven):
        return (OverrideGiven, event.decision), None, ""
    return type(event), None, ""


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
    if before is None:
        key = request_key(sale.lane, sale.correlation_id)
        newest = core.sale_of_request(sale.lane, sale.correlation_id)
        if newest is None or (sale.requested_at, sale.sale_id) > (newest.requested_at,
                                                                   newest.sale_id):
            changes["requests"] = core.requests.set(key, sale.sale_id)
    return dataclasses.replace(core, **changes)


def forgettable(state: CoreState, before: float) -> tuple[Sale, ...]:
    """The final sales last changed before ``before`` with no refund in progress, by id."""
    return tuple(sorted(
        (s for s in state.sales.values()
         if s.is_final and s.updated_at < before
         and all(r.is_final for r in state.refunds.of_sale(s.sale_id))),
        key=lambda s: s.sale_id))


def forget_settled(state: CoreState, before: float) -> CoreState:
    """``state`` without its final sales last changed before ``before``, and their refunds.

    Their ``intents``, ``payments``, ``overrides`` and ``requests`` entries go too, and
    ``forgotten_through`` rises to the greatest forgotten id. A sale with a refund still in
    progress is kept. Settled refunds of sales no longer known go as well. Unfinished
    sales, lanes, terminals and fraud alerts are untouched (final sales hold no lane or
    terminal).
    """
    gone = {sale.sale_id for sale in forgettable(state, before)}
    book = refunds.forget_settled(state.refunds, before, gone, state.sales)
    if not gone:
        return state if book is state.refunds else dataclasses.replace(state, refunds=book)

    def kept(index: Mapping[str, str]) -> PersistentMap[str, str]:
        return PersistentMap({key: sale_id for key, sale_id in index.items()
                              if sale_id not in gone})

    sales = PersistentMap({k: v for k, v in state.sales.items() if k not in gone})
    return dataclasses.replace(
        state,
        sales=sales,
        intents=kept(state.intents),
        payments=kept(state.payments),
        overrides=PersistentMap({k: v for k, v in state.overrides.items() if k not in gone}),
        forgotten_through=max(state.forgotten_through, *gone),
        refunds=book,
        requests=newest_sale_per_request(sales),
    )


def _forget(core: CoreState, event: SettledSalesForgotten, now: float) -> Step:
    before = event.before
    if isinstance(before, bool) or not isinstance(before, int | float) \
            or not math.isfinite(before) or before > now:
        return Step(core, (), Rejection("only sales settled before now can be forgotten",
                                        event), None)
    return Step(forget_settled(core, before), (), None, None)


def step(state: CoreState, event: Event, *, now: float, policy: Policy,
         table: SaleTable = TRANSITIONS, refund_table: refunds.RefundTable = refunds.TRANSITIONS
         ) -> Step:
    """Apply one event at wall-clock time ``now``; see the module docstring.

    ``table`` and ``refund_table`` are the tables in force; only the explorer's tests pass
    doctored copies, to show that the invariants catch a broken rule.
    """
    if isinstance(event, SaleRequested):
        return _admit(state, event, now, policy)
    if isinstance(event, SettledSalesForgotten):
        return _forget(state, event, now)
    if isinstance(event, refunds.REFUND_EVENT_TYPES):
        return refunds.step_refund(state, event, now=now, policy=policy, table=refund_table)
    core = state
    if isinstance(event, FraudAlerted) and event.payment_id not in state.fraud_alerts:
        # Recorded even before the payment is linked to a sale: the gate reads it later.
        core = dataclasses.replace(state, fraud_alerts=state.fraud_alerts | {event.payment_id})
    sale_id = _route(core, event)
    if sale_id is None:
        if core is not state:
            return Step(core, (), None, None)
        return Step(state, (), Rejection("no sale matches this event", event), None)
    sale = core.sales[sale_id]
    trigger, judgement, problem = classify(sale, event, core, policy)
    if trigger is None:
        return Step(core, (), Rejection(problem, event), sale_id)
    return run_row(SALES, table, core, sale, trigger=trigger, event=event, now=now,
                   policy=policy, judgement=judgement)
