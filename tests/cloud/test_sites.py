"""Site rules are checked before sending: a refused create sends nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from pointd.cloud import errors
from pointd.cloud.client import PointApiClient
from pointd.cloud.sites import Site, SiteRuleViolation, check_create
from tests.cloud.conftest import DEVICE, TOKEN, FakeClock


@pytest.mark.parametrize(
    ("site", "low", "high"),
    [(Site.MLA, 500, 400_000_000), (Site.MLB, 100, 7_000_000), (Site.MLM, 500, 35_000_000)],
)
def test_amount_limits_are_inclusive(site: Site, low: int, high: int) -> None:
    ticket = "T" if site is Site.MLA else None
    check_create(site, low, ticket_number=ticket)
    check_create(site, high, ticket_number=ticket)
    for amount in (low - 1, high + 1, 0, -500):
        with pytest.raises(SiteRuleViolation):
            check_create(site, amount, ticket_number=ticket)


@pytest.mark.parametrize("amount", [15.0, "1500", True, None])
def test_amount_must_be_an_integer(amount: object) -> None:
    with pytest.raises(SiteRuleViolation):
        check_create(Site.MLA, amount, ticket_number="T")


def test_mla_requires_ticket_number() -> None:
    with pytest.raises(SiteRuleViolation, match="ticket_number"):
        check_create(Site.MLA, 1500)
    with pytest.raises(SiteRuleViolation, match="ticket_number"):
        check_create(Site.MLA, 1500, ticket_number="")


@pytest.mark.parametrize(
    "extra",
    [
        {"ticket_number": "T"},
        {"description": "coffee"},
        {"payment": {"type": "debit_card"}},
    ],
)
def test_mlm_refuses_other_sites_fields(extra: dict[str, Any]) -> None:
    with pytest.raises(SiteRuleViolation):
        check_create(Site.MLM, 1500, **extra)


def test_mla_refuses_mlb_fields() -> None:
    with pytest.raises(SiteRuleViolation):
        check_create(Site.MLA, 1500, ticket_number="T", description="x")
    with pytest.raises(SiteRuleViolation):
        check_create(Site.MLA, 1500, ticket_number="T", payment={"type": "credit_card"})


@pytest.mark.parametrize(
    "payment",
    [
        {"type": "credit_card"},
        {"type": "credit_card", "installments": 3, "installments_cost": "buyer"},
        {"type": "debit_card"},
        {"type": "voucher_card", "voucher_type": "alelo"},
    ],
)
def test_mlb_accepts_documented_payment_options(payment: dict[str, Any]) -> None:
    check_create(Site.MLB, 1500, description="coffee", payment=payment)


@pytest.mark.parametrize(
    ("amount", "payment"),
    [
        (1500, {"type": "pix"}),
        (1500, {"type": "debit_card", "installments": 2}),
        (1500, {"type": "credit_card", "installments": 0}),
        (100_000, {"type": "credit_card", "installments": 73}),
        (1500, {"type": "credit_card", "installments": 4}),  # 3.75 per installment < 5.00
        (1500, {"type": "credit_card", "installments_cost": "nobody"}),
        (1500, {"type": "debit_card", "installments_cost": "buyer"}),
        (1500, {"type": "credit_card", "voucher_type": "sodexo"}),
        (1500, {"type": "voucher_card", "voucher_type": "ticket"}),
        (1500, {"type": "credit_card", "surprise": 1}),
        (1500, {"type": "credit_card", "installments": True}),
    ],
)
def test_mlb_refuses_bad_payment_options(amount: int, payment: dict[str, Any]) -> None:
    with pytest.raises(SiteRuleViolation):
        check_create(Site.MLB, amount, payment=payment)


def test_mlb_installments_at_exactly_five_each_are_accepted() -> None:
    check_create(Site.MLB, 1500, payment={"type": "credit_card", "installments": 3})


@pytest.mark.parametrize(
    ("site", "kwargs"),
    [
        (Site.MLA, {"amount_cents": 499, "ticket_number": "T"}),
        (Site.MLA, {"amount_cents": 1500}),
        (Site.MLB, {"amount_cents": 99}),
        (Site.MLB, {"amount_cents": 1500, "ticket_number": "T"}),
        (Site.MLM, {"amount_cents": 35_000_001}),
        (Site.MLM, {"amount_cents": 1500, "description": "x"}),
    ],
)
async def test_a_create_breaking_a_site_rule_sends_nothing(
    site: Site, kwargs: dict[str, Any], fake_clock: FakeClock
) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json={"id": "x", "amount": 1})

    async with PointApiClient(
        "https://api.example.test",
        TOKEN,
        site=site,
        clock=fake_clock,
        sleep=fake_clock.sleep,
        transport=httpx.MockTransport(handler),
    ) as client:
        amount = kwargs.pop("amount_cents")
        with pytest.raises(errors.InvalidRequest):
            await client.create_payment_intent(DEVICE, amount, "pd1_s_1_A_1", **kwargs)
    assert sent == []
