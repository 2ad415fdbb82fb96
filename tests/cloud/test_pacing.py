"""Back-off, Retry-After and the per-intent GET pace, on a fake clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointd.cloud.pacing import (
    BACKOFF_CAP,
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    IntentGetPacer,
    backoff_delay,
    retry_after_seconds,
)


@given(st.integers(min_value=0, max_value=60), st.floats(min_value=0, max_value=0.999999))
def test_backoff_is_full_jitter_below_the_cap(attempt: int, draw: float) -> None:
    delay = backoff_delay(attempt, draw)
    assert 0 <= delay < BACKOFF_CAP
    assert delay <= 0.5 * 2**attempt


def test_backoff_doubles_until_the_cap() -> None:
    assert [backoff_delay(n, 0.999) for n in range(6)] == pytest.approx(
        [0.4995, 0.999, 1.998, 3.996, 7.992, 7.992]
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        (" 2.5 ", 2.5),
        (None, DEFAULT_RETRY_AFTER),
        ("Wed, 21 Oct 2026 07:28:00 GMT", DEFAULT_RETRY_AFTER),
        ("-4", DEFAULT_RETRY_AFTER),
        ("nan", DEFAULT_RETRY_AFTER),
        ("86400", MAX_RETRY_AFTER),
    ],
)
def test_retry_after_is_read_and_bounded(header: str | None, expected: float) -> None:
    assert retry_after_seconds(header) == expected


def test_pacer_spaces_gets_of_one_intent_one_second_apart() -> None:
    pacer = IntentGetPacer()
    assert pacer.reserve("a", now=10.0) == 0.0
    assert pacer.reserve("a", now=10.2) == pytest.approx(0.8)
    # a third caller queues behind the second
    assert pacer.reserve("a", now=10.2) == pytest.approx(1.8)
    # other intents are not held back
    assert pacer.reserve("b", now=10.2) == 0.0


def test_pacer_lets_a_get_through_once_the_interval_passed() -> None:
    pacer = IntentGetPacer()
    pacer.reserve("a", now=0.0)
    assert pacer.reserve("a", now=1.0) == 0.0
    assert pacer.reserve("a", now=5.0) == 0.0


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 5)), max_size=40))
def test_pacer_never_grants_two_slots_of_one_intent_closer_than_a_second(
    calls: list[tuple[str, float]],
) -> None:
    pacer = IntentGetPacer()
    now = 0.0
    granted: dict[str, list[float]] = {}
    for intent, step in calls:
        now += step
        granted.setdefault(intent, []).append(now + pacer.reserve(intent, now))
    for slots in granted.values():
        assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(slots))


def test_pacer_forgets_old_intents() -> None:
    pacer = IntentGetPacer()
    for n in range(100):
        pacer.reserve(f"intent-{n}", now=float(n))
    assert len(pacer) <= 2
