"""Recovery decisions after a restart: what to ask the API, and what to do with orphan intents.

Theory of operation
-------------------
After a restart the journal rebuilds the state exactly as it was committed, but the world
moved on while the daemon was down: creates may have reached Mercado Pago after their last
journal entry, intents may have ended, payments may have been approved or reversed, and
timers were lost with the process. ``recover`` answers, for every unfinished sale, with the
effects that re-establish the truth from the API and re-arm the sale's timers, and re-tells
the register each sale's standing (a hold survives the restart):

- REQUESTED: re-arm the create retry (nothing was in flight: CreateNotSent proved it);
- CREATING, CREATE_UNKNOWN: ``ReconcileAttempt`` — a crash between the journal commit and
  the HTTP call looks exactly like an unknown outcome, so both are reconciled, never resent;
- OPEN, ON_TERMINAL, PROCESSING, CANCELING: ``FetchIntent`` and re-arm polling;
- VERIFYING, HELD, ESCALATED: ``FetchPayment`` (or ``FetchIntent`` while the payment id is
  unknown) and re-arm verification and escalation;
- APPROVED: re-tell the register and re-arm the wait for its HANDOVER_DONE (a journal
  from before that timer existed gets the full wait from now);
- BLOCKED: only re-tell the register (the goods wait for a supervisor).

A sale that ended just before the crash may have lost its RESULT with the process (the
DISPLAY went out, the daemon died before the RESULT was acknowledged), and nothing in the
journal says whether the register had it. So each lane's latest sale, when it ended within
``sale_retry_window`` and the register did not confirm its goods left (HANDED_OVER proves
it held the RESULT), is re-told too: its DISPLAY and RESULT go out again as soon as the
link is up. The protocol makes the repeat harmless (a register takes a RESULT for a
correlation id it already has as the same result, docs/register-protocol.md §7), and
without it a register that did not notice the restart waits for a RESULT that never comes.

Every re-tell carries what the register must still hear: an approval withdrawn while the
handover was unconfirmed, and the escalation of a create still unresolved after
``create_reconcile_attempts`` rounds.

``orphan_decision`` judges an intent found on a lane's terminal that the journal does not
tie to a live sale: adopt it when it is exactly the current attempt of a sale still
creating (whatever its state: feeding it in lets the sale follow it); cancel it while
it is OPEN otherwise (nobody can be paying for it); ignore it
when it ended or the terminal already took it (it must be cancelled on the device).
"""

from __future__ import annotations

from enum import StrEnum

from pointd.core.effects import (
    Effect,
    FetchIntent,
    FetchPayment,
    Notice,
    ReconcileAttempt,
    ScheduleTimer,
)
from pointd.core.events import (
    IntentObserved,
    TimerKind,
)
from pointd.core.machine import OWNED_TIMERS, CoreState, Sale, telling
from pointd.core.policy import Policy
from pointd.core.reference import ExternalReference, ExternalReferenceError
from pointd.core.states import (
    CREATING_STATES,
    LIVE_INTENT_STATES,
    VERIFYING_STATES,
    IntentState,
    SaleState,
)

S = SaleState


class OrphanDecision(StrEnum):
    """What to do with an intent on our terminal that no live sale owns."""

    ADOPT = "adopt"  # it is the current attempt of a sale still creating: feed it in
    CANCEL = "cancel"  # OPEN and nobody's: cancel it so the terminal is free
    IGNORE = "ignore"  # ended, or on the terminal already (cancel only on the device)


def recover(state: CoreState, now: float, policy: Policy) -> tuple[Effect, ...]:
    """Effects that re-establish every unfinished sale's truth after a restart."""
    effects: list[Effect] = []
    for sale in state.unfinished():
        effects.extend(_recover_sale(sale, now, policy))
    effects.extend(telling(sale) for sale in _recent_endings(state, now, policy))
    return tuple(effects)


def _recent_endings(state: CoreState, now: float, policy: Policy) -> list[Sale]:
    """Each lane's latest sale if it ended within the retry window, goods not handed over."""
    latest: dict[int, Sale] = {}
    for sale in state.sales.values():
        known = latest.get(sale.lane)
        if known is None or (sale.requested_at, sale.sale_id) > (known.requested_at,
                                                                   known.sale_id):
            latest[sale.lane] = sale
    return sorted((sale for sale in latest.values()
                   if sale.is_final and sale.state is not S.HANDED_OVER
                   and now - sale.updated_at <= policy.sale_retry_window),
                  key=lambda sale: sale.sale_id)


def _recover_sale(sale: Sale, now: float, policy: Policy) -> list[Effect]:
    unresolved = (sale.state is S.CREATE_UNKNOWN
                  and sale.reconcile_round >= policy.create_reconcile_attempts)
    effects: list[Effect] = [telling(sale, Notice.CREATE_UNRESOLVED if unresolved else None)]
    if sale.state in CREATING_STATES:
        assert sale.reference is not None
        effects.append(ReconcileAttempt(sale.sale_id, sale.attempt, sale.reference,
                                        sale.terminal_id, sale.attempt_started_at))
        effects.append(ScheduleTimer(sale.sale_id, TimerKind.RECONCILE,
                                     now + policy.reconcile_initial_backoff))
        return effects
    if sale.state in LIVE_INTENT_STATES:
        assert sale.intent_id is not None
        effects.append(FetchIntent(sale.sale_id, sale.intent_id))
        due = {TimerKind.POLL: now + policy.poll_fallback_after}
    elif sale.state in VERIFYING_STATES:
        if sale.payment_id is not None:
            effects.append(FetchPayment(sale.sale_id, sale.payment_id))
        elif sale.intent_id is not None:
            effects.append(FetchIntent(sale.sale_id, sale.intent_id))
        due = {TimerKind.VERIFY: now + policy.verify_initial_backoff}
    elif sale.state is S.REQUESTED:
        due = {TimerKind.CREATE_RETRY: now + policy.create_retry_after}
    elif sale.state is S.APPROVED:
        due = {TimerKind.HANDOVER: now + policy.handover_confirm_after}
    else:
        due = {}
    # Timers keep their journaled due time (escalation and abandon are measured from
    # events before the restart); a due time in the past fires at once.
    for kind in sorted(OWNED_TIMERS.get(sale.state, frozenset())):
        at = sale.timer_due(kind)
        if kind in due:
            at = due[kind] if at is None else min(at, due[kind])
        if at is not None:
            effects.append(ScheduleTimer(sale.sale_id, kind, at))
    return effects


def orphan_decision(intent: IntentObserved, known: CoreState) -> OrphanDecision:
    """Adopt, cancel or ignore an intent found on a terminal of this store."""
    sale_id = known.intents.get(intent.intent_id)
    if sale_id is not None and not known.sales[sale_id].is_final:
        return OrphanDecision.IGNORE  # not an orphan: its sale is alive and knows it
    if sale_id is None and awaiting_intent(known, intent.external_reference) is not None:
        return OrphanDecision.ADOPT
    if intent.state.strip().upper() == IntentState.OPEN:
        return OrphanDecision.CANCEL
    return OrphanDecision.IGNORE


def awaiting_intent(known: CoreState, external_reference: str | None) -> Sale | None:
    """The sale still creating whose current attempt is exactly this reference, if any.

    Only such a sale may learn an intent id it did not get from its own create: the one
    its attempt's create may have made.
    """
    try:
        ref = ExternalReference.parse(external_reference or "")
    except ExternalReferenceError:
        return None
    sale = known.sales.get(ref.sale) if ref.store == known.store_id else None
    if (
        sale is not None
        and sale.state in CREATING_STATES
        and sale.intent_id is None
        and sale.attempt == ref.attempt
        and str(ref) == sale.reference
    ):
        return sale
    return None
