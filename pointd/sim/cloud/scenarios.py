"""How a simulated sale ends: outcomes by amount, and scripted scenarios with quirks.

Mercado Pago's own Point simulator picks the outcome from the amount (1100 reversed,
1200 rejected, 1300 error, anything else approved). We keep those and add amounts for
every outcome the daemon must handle. A scenario posted to ``/_sim/scenarios`` overrides
the amount table for one intent (``external_reference`` or ``next``) or for every intent
of an amount, and can add the quirks Mercado Pago is known for (architecture.md §4).

Matching order when an intent is created: a scenario for its external_reference, then
the ``next`` scenario (used once), then a scenario for its amount, then the amount table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """How the terminal ends an intent."""

    APPROVED = "approved"  # FINISHED, payment approved
    FINISHED_REJECTED = "finished_rejected"  # FINISHED, payment rejected
    REVERSED = "reversed"  # FINISHED, payment approved then refunded at once
    CONFIRMATION_APPROVED = "confirmation_approved"  # CONFIRMATION_REQUIRED, then approved
    CONFIRMATION_REJECTED = "confirmation_rejected"  # CONFIRMATION_REQUIRED, then rejected
    CONFIRMATION_PENDING = "confirmation_pending"  # CONFIRMATION_REQUIRED, stays in_process
    CANCELED_ON_TERMINAL = "canceled_on_terminal"  # taken, then cancelled on the device
    ERROR = "error"  # ERROR after processing, no payment
    ABANDONED = "abandoned"  # never taken: ABANDONED after 15 minutes


# Mercado Pago's simulator amounts (1100-1300), then ours (documented in docs/simulator.md).
AMOUNT_OUTCOMES: Mapping[int, Outcome] = {
    1100: Outcome.REVERSED,
    1200: Outcome.FINISHED_REJECTED,
    1300: Outcome.ERROR,
    1401: Outcome.CONFIRMATION_APPROVED,
    1402: Outcome.CONFIRMATION_REJECTED,
    1403: Outcome.CONFIRMATION_PENDING,
    1501: Outcome.CANCELED_ON_TERMINAL,
    1601: Outcome.ABANDONED,
}


class WebhookQuirk(StrEnum):
    """How the intent's notifications misbehave."""

    NORMAL = "normal"
    DUPLICATE = "duplicate"  # every notification is delivered twice
    OUT_OF_ORDER = "out_of_order"  # the final state, then a stale ON_TERMINAL one
    NEVER = "never"  # nothing is delivered


class CreateFailure(StrEnum):
    """How the answer to a create is lost although the intent was created."""

    SERVER_ERROR = "5xx"  # answered 500
    DROP = "drop"  # the connection closes before the answer body


# Failure details of an order's card transaction, from the Point status page.
DECLINE_DETAILS = frozenset(
    {
        "failed",
        "bad_filled_card_data",
        "high_risk",
        "rejected_by_issuer",
        "required_call_for_authorize",
        "max_attempts_exceeded",
        "card_disabled",
        "insufficient_amount",
        "amount_limit_exceeded",
        "processing_error",
        "invalid_installments",
        "in_review",
    }
)


class ScenarioError(ValueError):
    """A scenario request is malformed; the message names the field."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """One scripted outcome with its quirks."""

    outcome: Outcome = Outcome.APPROVED
    # After the intent ended, this many GETs still answer ON_TERMINAL.
    stale_gets: int = 0
    webhook: WebhookQuirk = WebhookQuirk.NORMAL
    # Simulated seconds to hold back every notification of the intent ("late").
    webhook_delay: float = 0.0
    create_failure: CreateFailure | None = None
    # The next N GETs of this intent answer 429 (with retry_after) or 503.
    get_429: int = 0
    get_5xx: int = 0
    retry_after: float = 1.0
    # Cents of tip the customer adds on the terminal: the payment is charged amount + tip.
    tip_cents: int = 0
    # The Orders status_detail of a declined card (one the Point status page lists).
    decline_detail: str = "rejected_by_issuer"


@dataclass(frozen=True, slots=True)
class ScenarioRule:
    """A scenario and which intents it applies to."""

    scenario: Scenario
    amount: int | None = None
    external_reference: str | None = None
    next: bool = False


_SCENARIO_FIELDS = {f.name for f in fields(Scenario)}


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ScenarioError(f"{name} must be a non-negative integer")
    return value


def _non_negative_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ScenarioError(f"{name} must be a non-negative number")
    return float(value)


def parse_rule(data: object) -> ScenarioRule:
    """Validate a ``POST /_sim/scenarios`` body."""
    if not isinstance(data, Mapping):
        raise ScenarioError("the body must be a JSON object")
    selectors = {"amount", "external_reference", "next"}
    unknown = set(data) - selectors - _SCENARIO_FIELDS
    if unknown:
        raise ScenarioError(f"unknown fields: {sorted(unknown)}")
    chosen = [k for k in selectors if k in data and data[k] not in (None, False)]
    if len(chosen) != 1:
        raise ScenarioError("give exactly one of amount, external_reference, next: true")
    values: dict[str, Any] = {}
    try:
        if "outcome" in data:
            values["outcome"] = Outcome(data["outcome"])
        if "webhook" in data:
            values["webhook"] = WebhookQuirk(data["webhook"])
        if data.get("create_failure") is not None:
            values["create_failure"] = CreateFailure(data["create_failure"])
    except ValueError as exc:
        raise ScenarioError(str(exc)) from exc
    for name in ("stale_gets", "get_429", "get_5xx", "tip_cents"):
        if name in data:
            values[name] = _non_negative_int(data[name], name)
    for name in ("webhook_delay", "retry_after"):
        if name in data:
            values[name] = _non_negative_number(data[name], name)
    if "decline_detail" in data:
        if data["decline_detail"] not in DECLINE_DETAILS:
            raise ScenarioError(f"decline_detail must be one of {sorted(DECLINE_DETAILS)}")
        values["decline_detail"] = data["decline_detail"]
    scenario = Scenario(**values)
    selector = chosen[0]
    if selector == "amount":
        return ScenarioRule(scenario, amount=_non_negative_int(data["amount"], "amount"))
    if selector == "external_reference":
        reference = data["external_reference"]
        if not isinstance(reference, str) or not reference:
            raise ScenarioError("external_reference must be a non-empty string")
        return ScenarioRule(scenario, external_reference=reference)
    if data["next"] is not True:
        raise ScenarioError("next must be true")
    return ScenarioRule(scenario, next=True)


@dataclass
class ScenarioBook:
    """The scenarios in force, and the matching rule from the module docstring."""

    def __init__(self) -> None:
        self.by_reference: dict[str, Scenario] = {}
        self.by_amount: dict[int, Scenario] = {}
        self.next: list[Scenario] = []

    def add(self, rule: ScenarioRule) -> None:
        """Put a rule in force (a later rule for the same key replaces the earlier one)."""
        if rule.external_reference is not None:
            self.by_reference[rule.external_reference] = rule.scenario
        elif rule.amount is not None:
            self.by_amount[rule.amount] = rule.scenario
        else:
            self.next.append(rule.scenario)

    def clear(self) -> None:
        """Forget every scenario; the amount table applies again."""
        self.by_reference.clear()
        self.by_amount.clear()
        self.next.clear()

    def pick(self, amount: int, external_reference: str | None) -> Scenario:
        """The scenario for a new intent (consumes a ``next`` one)."""
        if external_reference is not None and external_reference in self.by_reference:
            return self.by_reference.pop(external_reference)
        if self.next:
            return self.next.pop(0)
        if amount in self.by_amount:
            return self.by_amount[amount]
        return Scenario(outcome=AMOUNT_OUTCOMES.get(amount, Outcome.APPROVED))
