"""Test-only: random interleavings of complete, honest sales for the forgetting properties.

"Honest" means every event names only its own sale's ids, as Mercado Pago and the engine
would; sale ids are handed out in request order, as the daemon mints them. Between events
the store's clock advances, the policy may switch, the daemon may forget settled sales and
the journal may take a snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import strategies as st

from pointd.core.events import (
    AttemptNotFound,
    CancelRequested,
    CreateOutcomeUnknown,
    Event,
    FraudAlerted,
    HandoverConfirmed,
    IntentCreated,
    ObservationSource,
    OverrideDecision,
    OverrideGiven,
    TimerExpired,
    TimerKind,
)
from tests.core.scenario import POLICY, STORE, observed, requested, verified

# Refuses the 2590-cent sales the scripts sometimes ask for: a switch changes decisions.
STRICT = POLICY.__class__(**{**POLICY.as_dict(), "max_amount_cents": 2000,
                             "poll_fallback_after": 30.0})
POLICIES = {"default": POLICY, "strict": STRICT}
LANES = 3


def _ref(sale_id: str, lane: int, attempt: int = 1) -> str:
    return f"pd1_{STORE}_{lane}_{sale_id}_{attempt}"


def _script(name: str, sale_id: str, lane: int, amount: int) -> list[Event]:
    terminal, intent, payment = f"T{lane}", f"I-{sale_id}", f"P-{sale_id}"
    ref = _ref(sale_id, lane)
    start: list[Event] = [requested(sale_id, lane, terminal, amount),
                          IntentCreated(sale_id, 1, intent)]

    def seen(state: str, source: ObservationSource = ObservationSource.POLL,
             payment_id: str | None = None) -> Event:
        return observed(state, source, payment_id, intent_id=intent, reference=ref)

    finished = seen("FINISHED", payment_id=payment)
    confirm = seen("CONFIRMATION_REQUIRED", payment_id=payment)
    scripts: dict[str, Callable[[], list[Event]]] = {
        "paid": lambda: [*start, finished, verified(payment_id=payment, amount=amount),
                         HandoverConfirmed(sale_id)],
        "paid_late_echoes": lambda: [
            *start, finished, verified(payment_id=payment, amount=amount),
            HandoverConfirmed(sale_id), seen("FINISHED", ObservationSource.NOTIFICATION,
                                             payment_id=payment),
            verified(payment_id=payment, amount=amount), seen("ON_TERMINAL")],
        "declined": lambda: [*start, finished, verified("rejected", payment_id=payment,
                                                         amount=amount)],
        "canceled": lambda: [*start, CancelRequested(sale_id, None, "register"),
                             seen("CANCELED")],
        "abandoned": lambda: [*start, seen("ABANDONED")],
        "held": lambda: [*start, confirm, TimerExpired(sale_id, TimerKind.ESCALATE)],
        "overridden": lambda: [*start, confirm, OverrideGiven(
            sale_id, OverrideDecision.RELEASE, "seen on the terminal", 0)],
        "blocked": lambda: [*start, FraudAlerted(payment), finished,
                            verified(payment_id=payment, amount=amount)],
        "retried": lambda: [
            requested(sale_id, lane, terminal, amount),
            CreateOutcomeUnknown(sale_id, 1, "read timeout"), AttemptNotFound(sale_id, 1),
            IntentCreated(sale_id, 2, f"{intent}-2"),
            observed("FINISHED", intent_id=f"{intent}-2", payment_id=payment,
                     reference=_ref(sale_id, lane, 2)),
            verified(payment_id=payment, amount=amount, reference=_ref(sale_id, lane, 2)),
            HandoverConfirmed(sale_id)],
        "creating": lambda: [requested(sale_id, lane, terminal, amount)],
    }
    return scripts[name]()


SCRIPT_NAMES = ("paid", "paid_late_echoes", "declined", "canceled", "abandoned", "held",
                "overridden", "blocked", "retried", "creating")


@dataclass(frozen=True)
class Move:
    """One thing that happens: an event after ``gap`` seconds, or a journal-side action.

    ``kind`` is "event", "forget" (forget sales settled ``age`` seconds before now),
    "policy" (switch to POLICIES[policy]) or "snapshot".
    """

    kind: str
    gap: float = 0.0
    event: Event | None = None
    age: float = 0.0
    policy: str = ""


@st.composite
def store_days(draw: st.DrawFn, max_sales: int = 7) -> list[Move]:
    """Interleaved scripts of several sales, with forgets, policy switches and snapshots."""
    names = draw(st.lists(st.sampled_from(SCRIPT_NAMES), min_size=1, max_size=max_sales))
    amounts = draw(st.lists(st.sampled_from([1500, 1500, 2590]), min_size=len(names),
                            max_size=len(names)))
    pending: dict[int, list[Event]] = {}
    started = 0
    moves: list[Move] = []
    while started < len(names) or any(pending.values()):
        choices = [i for i, events in pending.items() if events]
        if started < len(names):
            choices.append(-1)  # start the next sale
        pick = draw(st.sampled_from(choices))
        if pick == -1:
            sale_id = f"S{started:04d}"  # minted in request order, as the daemon does
            pending[started] = _script(names[started], sale_id, started % LANES + 1,
                                       amounts[started])
            pick = started
            started += 1
        gap = draw(st.sampled_from([1.0, 7.0, 120.0, 4000.0]))
        moves.append(Move("event", gap=gap, event=pending[pick].pop(0)))
        extra = draw(st.sampled_from(["", "", "", "forget", "policy", "snapshot"]))
        if extra == "forget":
            moves.append(Move("forget", gap=1.0,
                              age=draw(st.sampled_from([0.0, 60.0, 3000.0, 10000.0]))))
        elif extra == "policy":
            moves.append(Move("policy", policy=draw(st.sampled_from(sorted(POLICIES)))))
        elif extra == "snapshot":
            moves.append(Move("snapshot"))
    return moves
