"""The prompts catalogue: every enum value, every language, within the display."""

from __future__ import annotations

import pytest

from pointd.core.effects import Notice
from pointd.core.states import LaneCondition, Refusal, SaleState
from pointd.register.messages import MAX_DISPLAY_LINES, Severity
from pointd.register.prompts import (
    DISPLAY_WIDTH,
    LANGUAGES,
    RefundScreen,
    catalogue_subjects,
    prompt_for,
)

EVERY_SUBJECT = [*SaleState, *Refusal, *Notice, *LaneCondition, *RefundScreen]


def test_languages_are_es_pt_en() -> None:
    assert set(LANGUAGES) == {"es", "pt", "en"}


def test_catalogue_has_exactly_every_enum_value() -> None:
    subjects = catalogue_subjects()
    # Compare with types: StrEnum members of different enums may be equal as strings.
    assert sorted((type(s).__name__, s.value) for s in subjects) == sorted(
        (type(s).__name__, s.value) for s in EVERY_SUBJECT
    )


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("subject", EVERY_SUBJECT, ids=lambda s: f"{type(s).__name__}.{s.name}")
def test_prompt_fits_the_display(subject: SaleState, language: str) -> None:
    prompt = prompt_for(subject, language)
    assert 2 <= len(prompt.lines) <= MAX_DISPLAY_LINES  # lines 1-2 carry the message
    for line in prompt.lines:
        assert line, "empty line"
        assert len(line) <= DISPLAY_WIDTH, line
        assert line.isascii(), line
        assert line == line.upper(), line


@pytest.mark.parametrize("subject", EVERY_SUBJECT, ids=lambda s: f"{type(s).__name__}.{s.name}")
def test_each_language_has_its_own_text_and_one_severity(subject: SaleState) -> None:
    prompts = [prompt_for(subject, language) for language in LANGUAGES]
    assert len({p.severity for p in prompts}) == 1
    assert prompt_for(subject, "es").lines != prompt_for(subject, "en").lines


@pytest.mark.parametrize(
    "state",
    [
        SaleState.HELD,
        SaleState.ESCALATED,
        SaleState.BLOCKED,
        SaleState.DECLINED,
        SaleState.VERIFYING,
    ],
)
def test_states_that_forbid_handover_say_so(state: SaleState) -> None:
    assert any("DO NOT HAND OVER" in line for line in prompt_for(state, "en").lines)
    assert any("NO ENTREGUE" in line for line in prompt_for(state, "es").lines)
    assert any("NAO ENTREGUE" in line for line in prompt_for(state, "pt").lines)


def test_held_is_verifying_payment_do_not_hand_over() -> None:
    assert prompt_for(SaleState.HELD, "en").lines == ("VERIFYING PAYMENT", "DO NOT HAND OVER")
    assert prompt_for(SaleState.HELD, "en").severity is Severity.WARN


def test_card_payments_unavailable() -> None:
    prompt = prompt_for(LaneCondition.CARD_PAYMENTS_UNAVAILABLE, "en")
    assert prompt.lines == ("CARD PAYMENTS", "UNAVAILABLE")
    assert prompt.severity is Severity.ERROR


def test_unknown_language_is_refused() -> None:
    with pytest.raises(KeyError):
        prompt_for(SaleState.OPEN, "fr")
