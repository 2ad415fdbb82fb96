"""Per-site rules for a payment-intent create, checked before anything is sent.

Mercado Pago documents different amount limits and optional fields per site
(mercadopago-api.md §1.3 and §5). Checking them locally turns a would-be 400 into an
``InvalidRequest`` that provably sent nothing, so the caller never has to wonder whether
a refused create reached the terminal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Site(StrEnum):
    """The Mercado Pago sites where the Point Integration API is documented."""

    MLA = "MLA"  # Argentina
    MLB = "MLB"  # Brazil
    MLM = "MLM"  # Mexico


@dataclass(frozen=True, slots=True)
class SiteRules:
    """What one site accepts in a create."""

    min_cents: int
    max_cents: int
    currency_id: str
    requires_ticket_number: bool
    accepts_ticket_number: bool
    accepts_description: bool
    accepts_payment: bool


SITE_RULES: Mapping[Site, SiteRules] = {
    Site.MLA: SiteRules(500, 400_000_000, "ARS", True, True, False, False),
    Site.MLB: SiteRules(100, 7_000_000, "BRL", False, False, True, True),
    Site.MLM: SiteRules(500, 35_000_000, "MXN", False, False, False, False),
}

PAYMENT_TYPES = frozenset({"credit_card", "debit_card", "voucher_card"})
INSTALLMENTS_COSTS = frozenset({"seller", "buyer"})
VOUCHER_TYPES = frozenset({"sodexo", "alelo"})
MAX_INSTALLMENTS = 72
# MLB: each installment must be at least 5.00.
MIN_INSTALLMENT_CENTS = 500
PAYMENT_KEYS = frozenset({"type", "installments", "installments_cost", "voucher_type"})


class SiteRuleViolation(ValueError):
    """A create would break a documented site rule."""


def _check_payment(payment: Mapping[str, Any], amount_cents: int) -> None:
    unknown = set(payment) - PAYMENT_KEYS
    if unknown:
        raise SiteRuleViolation(f"payment has unknown fields: {sorted(unknown)}")
    kind = payment.get("type")
    if kind not in PAYMENT_TYPES:
        raise SiteRuleViolation(f"payment.type must be one of {sorted(PAYMENT_TYPES)}")
    installments = payment.get("installments")
    if installments is not None:
        if kind != "credit_card":
            raise SiteRuleViolation("payment.installments is only allowed with credit_card")
        if (
            isinstance(installments, bool)
            or not isinstance(installments, int)
            or not 1 <= installments <= MAX_INSTALLMENTS
        ):
            raise SiteRuleViolation(f"payment.installments must be 1-{MAX_INSTALLMENTS}")
        if amount_cents < installments * MIN_INSTALLMENT_CENTS:
            raise SiteRuleViolation("each installment must be at least 500 cents")
    cost = payment.get("installments_cost")
    if cost is not None:
        if kind != "credit_card":
            raise SiteRuleViolation("payment.installments_cost is only allowed with credit_card")
        if cost not in INSTALLMENTS_COSTS:
            allowed = sorted(INSTALLMENTS_COSTS)
            raise SiteRuleViolation(f"payment.installments_cost must be one of {allowed}")
    voucher = payment.get("voucher_type")
    if voucher is not None:
        if kind != "voucher_card":
            raise SiteRuleViolation("payment.voucher_type is only allowed with voucher_card")
        if voucher not in VOUCHER_TYPES:
            raise SiteRuleViolation(f"payment.voucher_type must be one of {sorted(VOUCHER_TYPES)}")


def check_create(
    site: Site,
    amount_cents: object,
    *,
    ticket_number: str | None = None,
    description: str | None = None,
    payment: Mapping[str, Any] | None = None,
) -> None:
    """Raise SiteRuleViolation unless the create is acceptable on ``site``."""
    rules = SITE_RULES[site]
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int):
        raise SiteRuleViolation("amount must be an integer number of cents")
    if not rules.min_cents <= amount_cents <= rules.max_cents:
        raise SiteRuleViolation(
            f"amount {amount_cents} is outside {site}'s {rules.min_cents}-{rules.max_cents} cents"
        )
    if ticket_number is not None and not rules.accepts_ticket_number:
        raise SiteRuleViolation(f"ticket_number is not accepted on {site}")
    if rules.requires_ticket_number and not ticket_number:
        raise SiteRuleViolation(f"ticket_number is required on {site}")
    if description is not None and not rules.accepts_description:
        raise SiteRuleViolation(f"description is not accepted on {site}")
    if payment is not None:
        if not rules.accepts_payment:
            raise SiteRuleViolation(f"payment options are not accepted on {site}")
        _check_payment(payment, amount_cents)
