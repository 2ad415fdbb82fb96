"""The reconciliation verdict: one payment line of a sale, compared with Mercado Pago's record.

The nightly export (``pointd.app.reconciliation_export``) asks Mercado Pago for each sale's
payments and writes one line per payment; which lines agree and which an accountant must
look at is a money decision, so it is taken here, purely, next to the handover gate: the
export only gathers the answers (``PaymentRecord``) and writes the files.

A line is ``OK`` when the payment's amount, currency and status agree with the journal and
with what the sale's outcome implies; otherwise ``MISMATCH``, with every difference named:
``amount``, ``currency``, ``status``, ``refunded`` (money went back), and three that mean
goods and money disagree: ``released_without_approved_payment``, ``second_approved_payment``
and ``approved_without_handover``. Lines Mercado Pago could not answer are ``UNKNOWN`` or
``MISSING`` (404), payments found only at Mercado Pago are ``EXTRA``, and a sale with no
payment on either side is ``NO_PAYMENT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pointd.core.gate import APPROVED_STATUS
from pointd.core.states import ENDED_UNPAID_STATES, RELEASED_STATES, SaleState


class Match(StrEnum):
    """How one export line compares with Mercado Pago."""

    OK = "ok"  # the payment exists with the journal's amount and a consistent status
    MISMATCH = "mismatch"  # it exists but amount, currency or status disagree
    MISSING = "missing_at_mercado_pago"  # the journal names it; Mercado Pago says 404
    UNKNOWN = "unknown"  # Mercado Pago could not be asked
    EXTRA = "extra"  # found at Mercado Pago for this sale's references; the journal lacks it
    NO_PAYMENT = "no_payment"  # no payment in the journal and none at Mercado Pago


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """What Mercado Pago's payments API says of one payment, as a line compares it."""

    payment_id: str
    status: str  # lower case
    amount_cents: int | None
    currency: str | None
    refunded_cents: int


@dataclass(frozen=True, slots=True)
class PaymentLine:
    """One payment of a sale (or its absence) compared with Mercado Pago."""

    payment_id: str | None
    journal_status: str | None
    mp_status: str | None
    mp_amount_cents: int | None
    mp_currency: str | None
    mp_refunded_cents: int | None
    matched: Match
    differences: tuple[str, ...] = ()


def judge_line(*, sale_state: SaleState, amount_cents: int, currency: str,
               settling_payment_id: str | None, journal_status: str | None,
               payment: PaymentRecord) -> PaymentLine:
    """Compare one payment the journal knows with Mercado Pago's record of it."""
    differences: list[str] = []
    if payment.amount_cents != amount_cents:
        differences.append("amount")
    if payment.currency is not None and payment.currency != currency:
        differences.append("currency")
    if journal_status is not None and journal_status != payment.status:
        differences.append("status")
    if payment.refunded_cents:
        differences.append("refunded")
    approved = payment.status == APPROVED_STATUS
    if sale_state in RELEASED_STATES:
        if payment.payment_id == settling_payment_id and not approved:
            differences.append("released_without_approved_payment")
        elif payment.payment_id != settling_payment_id and approved:
            differences.append("second_approved_payment")
    elif sale_state in ENDED_UNPAID_STATES and approved:
        differences.append("approved_without_handover")
    return PaymentLine(
        payment_id=payment.payment_id,
        journal_status=journal_status,
        mp_status=payment.status,
        mp_amount_cents=payment.amount_cents,
        mp_currency=payment.currency,
        mp_refunded_cents=payment.refunded_cents,
        matched=Match.MISMATCH if differences else Match.OK,
        differences=tuple(differences),
    )


def extra_line(payment: PaymentRecord) -> PaymentLine:
    """A payment Mercado Pago has for the sale's references that the journal never saw."""
    return PaymentLine(
        payment_id=payment.payment_id, journal_status=None, mp_status=payment.status,
        mp_amount_cents=payment.amount_cents, mp_currency=payment.currency,
        mp_refunded_cents=payment.refunded_cents, matched=Match.EXTRA,
        differences=("not_in_journal",),
    )


def unanswered_line(payment_id: str | None, journal_status: str | None,
                    matched: Match) -> PaymentLine:
    """A line Mercado Pago gave no record for (missing, unknown, or no payment at all)."""
    return PaymentLine(payment_id, journal_status, None, None, None, None, matched)
