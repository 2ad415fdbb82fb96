"""The handover gate: the one place that judges whether a verified payment pays for a sale.

Rule 1 of architecture.md §2, as a pure function: goods may leave only when
``GET /v1/payments/{id}`` says ``approved``, the amount in exact cents, the currency and the
collector match the sale, the payment's external_reference (when Mercado Pago copies it)
names the sale's attempt, and no fraud alert names the payment. Anything else is a verdict
that keeps the goods in the store:

- ``DECLINE``: rejected or cancelled — the customer did not pay;
- ``WAIT``: pending, in process, authorized, in mediation or a status we do not know — ask
  again later;
- ``MISMATCH``: approved, but not for this sale's amount, currency, account or reference —
  a supervisor must look;

Tips: a Point terminal can let the customer add a tip, so an approved payment may be for
more than the sale (Orders: ``paid_amount``/``tip_amount`` above ``amount``). With tips
allowed (``store.tips_allowed``), a payment of at least the sale's amount releases and the
reason names the tip; without, only the exact amount releases and more is a ``MISMATCH``.
Less than the sale's amount never releases.
- ``REVERSED``: refunded or charged back — the money went back;
- ``BLOCK``: a fraud alert names the payment.

A notification's ``payment.state`` never reaches this gate: only PaymentVerified does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from pointd.core.events import PaymentVerified

APPROVED_STATUS = "approved"
DECLINED_STATUSES = frozenset({"rejected", "cancelled"})
REVERSED_STATUSES = frozenset({"refunded", "charged_back"})
# Statuses that may still turn into approved: keep verifying.
PENDING_STATUSES = frozenset({"pending", "in_process", "authorized", "in_mediation"})


class Verdict(StrEnum):
    """What the gate concluded about one verified payment."""

    RELEASE = "release"
    DECLINE = "decline"
    WAIT = "wait"
    MISMATCH = "mismatch"
    REVERSED = "reversed"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class Judgement:
    """A verdict and the human reason behind it (shown to technicians)."""

    verdict: Verdict
    reason: str


def judge_payment(
    payment: PaymentVerified,
    *,
    amount_cents: int,
    currency: str,
    collector_id: str,
    external_reference: str | None,
    fraud_alerted: bool,
    tips_allowed: bool,
) -> Judgement:
    """Judge a verified payment against the sale it is supposed to pay for."""
    status = payment.status.strip().lower()
    if status in DECLINED_STATUSES:
        return Judgement(Verdict.DECLINE, f"payment {status}")
    if fraud_alerted:
        return Judgement(Verdict.BLOCK, "a fraud alert names this payment")
    if status in REVERSED_STATUSES:
        return Judgement(Verdict.REVERSED, f"payment {status}")
    if status != APPROVED_STATUS:
        return Judgement(Verdict.WAIT, f"payment status {status[:40]!r}")
    problems = []
    paid = payment.amount_cents
    tip = paid - amount_cents if paid is not None and paid > amount_cents else 0
    if paid is None or paid < amount_cents or (tip and not tips_allowed):
        extra = " (a tip; tips are not allowed here)" if tip else ""
        problems.append(f"amount {paid} cents, sale is {amount_cents}{extra}")
    if payment.currency != currency:
        problems.append(f"currency {payment.currency[:8]!r}, expected {currency}")
    if payment.collector_id.strip() != collector_id.strip():
        problems.append("collector is not this account")
    if payment.external_reference and payment.external_reference != external_reference:
        problems.append("external_reference names another sale or attempt")
    if problems:
        return Judgement(Verdict.MISMATCH, "approved but " + "; ".join(problems))
    if tip:
        return Judgement(Verdict.RELEASE, f"approved for the amount plus a tip of {tip} cents")
    return Judgement(Verdict.RELEASE, "approved for the exact amount")


def cents_from_major(value: object) -> int | None:
    """Exact cents of a /v1/payments amount in major units (15.0 → 1500); None if inexact."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        cents = Decimal(str(value).strip()) * 100
    except InvalidOperation:
        return None
    if not cents.is_finite() or cents != cents.to_integral_value():
        return None
    return int(cents)
