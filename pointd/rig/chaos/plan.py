"""The seeded plan of a run: every sale and its simulator script, and when each fault lands.

Everything random about a run is drawn here, from the seed, before anything runs: which
sales are made (amount, scripted outcome, webhook quirk, lost create answer, stale or
refused GETs, a cashier's cancel), and the schedule of faults against the running parts
(when each lands, which kind, and every choice it will make: which lane, how many bytes of
noise, how long a process stays down). Sales and faults draw from separate streams, so
adding a fault kind does not change which sales a seed makes. The first sales and the first
faults walk through every kind once in a seeded order, so even a short run sees them all.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# Amounts are unique per sale so that a scenario selected by amount scripts exactly that
# sale (the daemon's sale ids are not known before the create) and the record maps back.
FIRST_AMOUNT = 2000

# Scripted outcomes (docs/simulator.md) and how often a sale draws each.
OUTCOME_WEIGHTS = {
    "approved": 40,
    "finished_rejected": 8,
    "reversed": 5,
    "error": 6,
    "confirmation_approved": 8,
    "confirmation_rejected": 6,
    "canceled_on_terminal": 6,
    "abandoned": 2,
}
# Per-sale faults: the simulator misbehaves for this one sale (or the cashier cancels it).
SALE_FAULT_PROBABILITY = {
    "webhook_duplicate": 0.12,
    "webhook_out_of_order": 0.12,
    "webhook_missing": 0.12,
    "webhook_late": 0.15,
    "create_5xx_after_create": 0.05,
    "create_dropped_after_create": 0.05,
    "stale_gets": 0.08,
    "intent_get_429": 0.06,
    "intent_get_5xx": 0.06,
    "cashier_cancel": 0.06,
}
SALE_FAULTS = tuple(SALE_FAULT_PROBABILITY)
# One webhook quirk per intent, and one way of losing a create's answer.
_EXCLUSIVE = (("webhook_duplicate", "webhook_out_of_order", "webhook_missing"),
              ("create_5xx_after_create", "create_dropped_after_create"))
# The cashier presses cancel this long after the SALE went out: before, while and after
# the terminal takes the card (Mercado Pago allows a cancel only while the intent is OPEN).
CANCEL_AFTER = (0.0, 0.6)
# The scenario field that says how many answers a per-answer fault spoils.
_ANSWERS_OF = {"stale_gets": "stale_gets", "intent_get_429": "get_429",
               "intent_get_5xx": "get_5xx"}
# Probability that one of the last sales (one per lane at most) is scripted to stay
# CONFIRMATION_REQUIRED for ever: it must end the run visibly held.
PENDING_PROBABILITY = 0.5
PENDING = "confirmation_pending"


@dataclass(frozen=True)
class SalePlan:
    """One randomized sale: what the simulator is told to do with it."""

    index: int
    lane: int
    amount_cents: int
    outcome: str
    faults: tuple[str, ...]
    scenario: Mapping[str, Any]
    # Seconds after the SALE at which the cashier presses cancel; None: never.
    cancel_after: float | None = None

    @property
    def correlation_id(self) -> str:
        """The register's correlation id for this sale (unique across lanes)."""
        return f"L{self.lane}S{self.index}"

    def planned(self) -> dict[str, int]:
        """How often each of its faults should fire: each scripted error or stale answer,
        else once (the simulator's ``faults_fired`` counts in the same units)."""
        return {fault: int(self.scenario.get(_ANSWERS_OF.get(fault, ""), 1))
                for fault in self.faults}


def forced_order(rng: random.Random, kinds: tuple[str, ...]) -> Iterator[str]:
    """Every kind once in a seeded order: the guarantee that a short run sees them all."""
    order = list(kinds)
    rng.shuffle(order)
    return iter(order)


class SalePlanner:
    """Draws every sale from the seeded RNG, in the order the lanes ask for them."""

    def __init__(self, rng: random.Random, total: int, lanes: int,
                 faults: tuple[str, ...] = SALE_FAULTS) -> None:
        self._rng = rng
        self._total = total
        self._lanes = lanes
        self._faults = faults
        self._next = 0
        self._forced = forced_order(rng, faults)
        self._pending_given: set[int] = set()

    def next_for(self, lane: int) -> SalePlan | None:
        """The next sale for a lane, None when the run has sold enough."""
        if self._next >= self._total:
            return None
        index, self._next = self._next, self._next + 1
        rng = self._rng
        outcome = rng.choices(list(OUTCOME_WEIGHTS), weights=list(OUTCOME_WEIGHTS.values()))[0]
        if (index >= self._total - self._lanes and lane not in self._pending_given
                and rng.random() < PENDING_PROBABILITY):
            outcome = PENDING
            self._pending_given.add(lane)
        faults = {kind for kind in self._faults if rng.random() < SALE_FAULT_PROBABILITY[kind]}
        forced = next(self._forced, None)
        if forced is not None:
            faults.add(forced)
        for group in _EXCLUSIVE:
            for surplus in [k for k in group if k in faults][1:]:
                faults.discard(surplus)
        amount = FIRST_AMOUNT + index
        scenario = _scenario(rng, amount, outcome, faults)
        cancel_after = rng.uniform(*CANCEL_AFTER) if "cashier_cancel" in faults else None
        return SalePlan(index, lane, amount, outcome, tuple(sorted(faults)), scenario,
                        cancel_after)


def _scenario(rng: random.Random, amount: int, outcome: str,
              faults: set[str]) -> dict[str, Any]:
    """The simulator's scenario for one sale (docs/simulator.md "Scenarios")."""
    scenario: dict[str, Any] = {"amount": amount, "outcome": outcome}
    for fault, quirk in (("webhook_duplicate", "duplicate"),
                         ("webhook_out_of_order", "out_of_order"),
                         ("webhook_missing", "never")):
        if fault in faults:
            scenario["webhook"] = quirk
    if "webhook_late" in faults:
        scenario["webhook_delay"] = round(rng.uniform(1.0, 4.0), 2)
    if "create_5xx_after_create" in faults:
        scenario["create_failure"] = "5xx"
    if "create_dropped_after_create" in faults:
        scenario["create_failure"] = "drop"
    if "stale_gets" in faults:
        scenario["stale_gets"] = rng.randint(1, 3)
    if "intent_get_429" in faults:
        scenario["get_429"] = rng.randint(1, 2)
        scenario["retry_after"] = 1
    if "intent_get_5xx" in faults:
        scenario["get_5xx"] = rng.randint(1, 2)
    return scenario


@dataclass(frozen=True)
class ScheduledFault:
    """One fault against the running parts: when it lands and every choice it makes."""

    index: int
    at: float  # seconds after the selling started
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        details = " ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"#{self.index} t+{self.at:.3f}s {self.kind} {details}".rstrip()


ParamDrawer = Callable[[str, random.Random], Mapping[str, Any]]


def fault_schedule(rng: random.Random, weights: Mapping[str, int], *, mean_interval: float,
                   horizon: float, params: ParamDrawer) -> tuple[ScheduledFault, ...]:
    """Faults until ``horizon``: exponential gaps, every kind once first, then by weight."""
    forced = forced_order(rng, tuple(weights))
    kinds, shares = list(weights), list(weights.values())
    schedule: list[ScheduledFault] = []
    at = 0.0
    while True:
        at += rng.expovariate(1.0 / mean_interval)
        if at > horizon:
            return tuple(schedule)
        kind = next(forced, None) or rng.choices(kinds, weights=shares)[0]
        schedule.append(ScheduledFault(len(schedule), round(at, 3), kind, params(kind, rng)))


def schedule_digest(schedule: tuple[ScheduledFault, ...]) -> str:
    """A short fingerprint of a schedule: equal seeds give equal digests."""
    text = "\n".join(str(fault) for fault in schedule)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
