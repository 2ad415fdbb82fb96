"""After the relay was away, the daemon asks Mercado Pago about every open sale."""

from __future__ import annotations

from typing import Any

from pointd.app.runtime import RelayGap
from pointd.core.effects import Effect, FetchIntent
from pointd.core.events import IntentCreated, SaleRequested
from pointd.core.machine import CoreState, step
from pointd.core.policy import Policy
from pointd.relay.client import HealthState, RelayHealth

NOW = 1_800_000_000.0
POLICY = Policy(currency="BRL", collector_id="1", min_amount_cents=100, max_amount_cents=10**7)


class RecordingEngine:
    """The engine calls the relay-gap reconciliation makes."""

    def __init__(self, state: CoreState) -> None:
        self.state = state
        self.policy = POLICY
        self.ran: list[Effect] = []

    def run_effects(self, effects: Any) -> None:
        self.ran.extend(effects)


def _state() -> CoreState:
    state = CoreState.empty("s1")
    for lane, sale in ((1, "A1"), (2, "B2")):
        state = step(state, SaleRequested(sale, lane, f"c{lane}", 1500, f"PAX__{lane}", None),
                     now=NOW, policy=POLICY).state
    # A1's intent exists; B2's create is still in flight.
    return step(state, IntentCreated("A1", 1, "intent-a"), now=NOW, policy=POLICY).state


def _health(state: HealthState) -> RelayHealth:
    return RelayHealth(state, NOW)


def test_relay_coming_back_reconciles_open_sales_but_not_creates_in_flight() -> None:
    engine = RecordingEngine(_state())
    gap = RelayGap(engine, lambda: NOW)

    gap.health_changed(_health(HealthState.CONNECTED))
    assert engine.ran == []  # first contact: nothing was missed yet

    gap.health_changed(_health(HealthState.DOWN))
    assert engine.ran == []
    gap.health_changed(_health(HealthState.CONNECTED))
    # B2's create is in flight: no ReconcileAttempt for it.
    assert engine.ran == [FetchIntent(sale_id="A1", intent_id="intent-a")]


def test_a_silent_relay_that_recovers_reconciles_too() -> None:
    engine = RecordingEngine(_state())
    gap = RelayGap(engine, lambda: NOW)
    for state in (HealthState.CONNECTED, HealthState.SILENT, HealthState.CONNECTED):
        gap.health_changed(_health(state))
    assert FetchIntent(sale_id="A1", intent_id="intent-a") in engine.ran
