"""A tip added on the terminal, through the real daemon: store.tips_allowed decides the handover."""

from __future__ import annotations

import asyncio

import pytest

from pointd.core.states import SaleState
from pointd.register import messages as msg
from pointd.sim.cloud.scenarios import parse_rule
from tests.e2e_daemon.harness import (
    APPROVED_CENTS,
    EVENT_TIMEOUT,
    SIM_SALE_SECONDS,
    Store,
    eventually_async,
)

TIP_CENTS = 300


def allow_tips(store: Store, allowed: bool) -> None:
    text = store.config_path.read_text(encoding="utf-8")
    setting = f"tips_allowed = {'true' if allowed else 'false'}\n\n[cloud]"
    store.config_path.write_text(text.replace("[cloud]", setting, 1), encoding="utf-8")


@pytest.mark.parametrize("allowed", [True, False])
async def test_a_tipped_payment_hands_over_only_where_tips_are_allowed(
    store: Store, *, allowed: bool
) -> None:
    allow_tips(store, allowed)
    store.sim.world.scenarios.add(parse_rule({"amount": APPROVED_CENTS, "tip_cents": TIP_CENTS}))
    await store.start_daemon()
    sale = store.sale(APPROVED_CENTS, "tip-1")
    await store.shows("tip-1", SaleState.OPEN)
    await store.sim.advance(SIM_SALE_SECONDS)
    [payment] = (await store.record())["payments"]
    assert payment["amount"] == APPROVED_CENTS + TIP_CENTS
    if allowed:
        outcome = await asyncio.wait_for(sale, EVENT_TIMEOUT)
        assert outcome.outcome is msg.Outcome.APPROVED
        detail = (await store.only_sale())["sale"]
        assert detail["may_hand_over"] is True
        assert f"tip of {TIP_CENTS} cents" in detail["detail"]
        return

    async def escalated() -> bool:
        return bool((await store.only_sale())["sale"]["state"] == SaleState.ESCALATED.value)

    await eventually_async("the tipped sale to wait for a supervisor", escalated, EVENT_TIMEOUT)
    detail = (await store.only_sale())["sale"]
    assert detail["may_hand_over"] is False
    assert "tips are not allowed" in detail["detail"]
    assert not sale.done()
