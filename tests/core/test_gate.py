"""The handover gate's truth table and the exact conversion of API amounts to cents."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointd.core.events import PaymentVerified
from pointd.core.gate import Verdict, cents_from_major, judge_payment

AMOUNT, CURRENCY, COLLECTOR, REF = 1500, "BRL", "987654321", "pd1_s_1_A_1"
STATUSES = ["approved", "rejected", "cancelled", "pending", "in_process", "authorized",
            "in_mediation", "refunded", "charged_back", "", "APPROVED", "unheard_of"]


def judge(status: str, *, amount_ok: bool = True, currency_ok: bool = True,
          collector_ok: bool = True, reference: str | None = None,
          fraud: bool = False) -> Verdict:
    payment = PaymentVerified(
        "1", status, None, AMOUNT if amount_ok else AMOUNT + 1,
        CURRENCY if currency_ok else "ARS", COLLECTOR if collector_ok else "1", reference)
    return judge_payment(payment, amount_cents=AMOUNT, currency=CURRENCY,
                         collector_id=COLLECTOR, external_reference=REF,
                         fraud_alerted=fraud, tips_allowed=False).verdict


@pytest.mark.parametrize(
    ("status", "amount_ok", "currency_ok", "collector_ok", "reference", "fraud"),
    list(itertools.product(STATUSES, [True, False], [True, False], [True, False],
                           [None, "", REF, "pd1_s_1_A_2"], [False, True])),
)
def test_gate_truth_table(status: str, *, amount_ok: bool, currency_ok: bool,
                          collector_ok: bool, reference: str | None, fraud: bool) -> None:
    verdict = judge(status, amount_ok=amount_ok, currency_ok=currency_ok,
                    collector_ok=collector_ok, reference=reference, fraud=fraud)
    normalised = status.strip().lower()
    matches = amount_ok and currency_ok and collector_ok and reference in (None, "", REF)
    if normalised in ("rejected", "cancelled"):
        expected = Verdict.DECLINE
    elif fraud:
        expected = Verdict.BLOCK
    elif normalised in ("refunded", "charged_back"):
        expected = Verdict.REVERSED
    elif normalised != "approved":
        expected = Verdict.WAIT
    elif not matches:
        expected = Verdict.MISMATCH
    else:
        expected = Verdict.RELEASE
    assert verdict is expected
    assert (verdict is Verdict.RELEASE) == (normalised == "approved" and matches and not fraud)


def test_missing_amount_is_never_a_match() -> None:
    payment = PaymentVerified("1", "approved", None, None, CURRENCY, COLLECTOR, None)
    assert judge_payment(payment, amount_cents=AMOUNT, currency=CURRENCY,
                         collector_id=COLLECTOR, external_reference=None,
                         fraud_alerted=False, tips_allowed=True).verdict is Verdict.MISMATCH


@pytest.mark.parametrize(
    ("paid", "tips_allowed", "verdict"),
    [
        (AMOUNT, False, Verdict.RELEASE),
        (AMOUNT, True, Verdict.RELEASE),
        (AMOUNT + 200, False, Verdict.MISMATCH),
        (AMOUNT + 200, True, Verdict.RELEASE),
        (AMOUNT - 1, False, Verdict.MISMATCH),
        (AMOUNT - 1, True, Verdict.MISMATCH),
    ],
)
def test_a_tip_releases_only_where_tips_are_allowed(
    paid: int, *, tips_allowed: bool, verdict: Verdict
) -> None:
    payment = PaymentVerified("1", "approved", "accredited", paid, CURRENCY, COLLECTOR, REF)
    judgement = judge_payment(payment, amount_cents=AMOUNT, currency=CURRENCY,
                              collector_id=COLLECTOR, external_reference=REF,
                              fraud_alerted=False, tips_allowed=tips_allowed)
    assert judgement.verdict is verdict
    if paid > AMOUNT:
        assert "tip" in judgement.reason
        assert str(paid - AMOUNT) in judgement.reason or not tips_allowed


@pytest.mark.parametrize(("value", "cents"), [
    (15.0, 1500), (15, 1500), ("15.00", 1500), (0.1, 10), (1.75, 175), (12.34, 1234),
    (4000000.0, 400000000), (15.005, None), ("abc", None), (float("nan"), None),
    (float("inf"), None), (True, None), (None, None), ([15], None), ("", None),
    ("1e2", 10000), (0.07, 7), (-1.5, -150),
])
def test_cents_from_major(value: object, cents: int | None) -> None:
    assert cents_from_major(value) == cents


@given(st.integers(min_value=0, max_value=10**11))
def test_every_cent_amount_survives_the_float_round_trip(cents: int) -> None:
    assert cents_from_major(cents / 100) == cents
