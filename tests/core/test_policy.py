"""Policy validation: every unusable value is refused with its name."""

from __future__ import annotations

import dataclasses

import pytest

from pointd.core.errors import PolicyError
from pointd.core.policy import Policy, backoff
from tests.core.scenario import POLICY


@pytest.mark.parametrize(("changes", "message"), [
    ({"currency": "brl"}, "currency"),
    ({"currency": "REAL"}, "currency"),
    ({"collector_id": " "}, "collector_id"),
    ({"min_amount_cents": 0}, "min_amount_cents"),
    ({"max_amount_cents": True}, "max_amount_cents"),
    ({"min_amount_cents": 500, "max_amount_cents": 100}, "must not exceed"),
    ({"max_create_attempts": 100}, "at most 99"),
    ({"max_create_sends": 0}, "max_create_sends"),
    ({"create_reconcile_attempts": 1.5}, "create_reconcile_attempts"),
    ({"poll_fallback_after": 0}, "poll_fallback_after"),
    ({"abandon_after": float("inf")}, "abandon_after"),
    ({"verify_initial_backoff": float("nan")}, "verify_initial_backoff"),
    ({"verify_max_backoff": "60"}, "verify_max_backoff"),
    ({"verify_initial_backoff": 100.0}, "verify_initial_backoff must not exceed"),
    ({"reconcile_initial_backoff": 500.0}, "reconcile_initial_backoff must not exceed"),
])
def test_unusable_values_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        dataclasses.replace(POLICY, **changes)  # type: ignore[arg-type]


def test_round_trips_through_a_dict() -> None:
    assert Policy.from_dict(POLICY.as_dict()) == POLICY
    with pytest.raises(PolicyError, match="unknown policy fields"):
        Policy.from_dict({**POLICY.as_dict(), "surprise": 1})
    with pytest.raises(PolicyError):
        Policy.from_dict({"currency": "BRL"})


def test_backoff_doubles_and_caps() -> None:
    assert [backoff(2.0, 60.0, n) for n in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff(2.0, 60.0, 10_000) == 60.0
