"""Sales refused before or at Mercado Pago: a busy lane, a busy terminal, a bad amount.

A refusal must reach the register as a RESULT ``refused`` with the reason and its screen,
must not disturb the sale already running, and must never leave a charge behind.
"""

from __future__ import annotations

import asyncio

import httpx

from pointd.core.states import Refusal, SaleState
from pointd.register import messages as msg
from tests.e2e_register.harness import (
    DEVICES,
    IO_TIMEOUT,
    POLL,
    SIM_SALE_SECONDS,
    TOKEN,
    Store,
    lines_for,
)

S = SaleState


async def test_second_sale_on_a_busy_lane_is_refused_and_the_first_completes(
    store: Store,
) -> None:
    register = store.registers[1]
    first = store.sale(1, 2500, "busy-1")
    await register.shows("busy-1", S.OPEN)

    second = store.sale(1, 4000, "busy-2")
    refused = await asyncio.wait_for(second, IO_TIMEOUT)
    assert refused.outcome is msg.Outcome.REFUSED
    assert refused.reason == Refusal.LANE_BUSY.value
    assert register.screens("busy-2") == [lines_for(Refusal.LANE_BUSY)]
    assert [i.amount for i in store.sim_intents()] == [2500]

    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    assert (await asyncio.wait_for(first, IO_TIMEOUT)).outcome is msg.Outcome.APPROVED
    assert [i.amount for i in store.sim_intents()] == [2500]


async def test_terminal_with_a_foreign_queued_intent_refuses_the_sale(store: Store) -> None:
    device = DEVICES[2]
    # Another point-of-sale program on the same account queued an intent on lane 2's terminal.
    async with httpx.AsyncClient(base_url=store.sim.base_url) as http:
        answer = await http.post(
            f"/point/integration-api/devices/{device}/payment-intents",
            json={
                "amount": 9900,
                "additional_info": {"external_reference": "other-pos-1", "ticket_number": "X1"},
            },
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert answer.status_code in (200, 201)

    register = store.registers[2]
    outcome = await asyncio.wait_for(store.sale(2, 3000, "tb-1"), IO_TIMEOUT)
    assert outcome.outcome is msg.Outcome.REFUSED
    assert outcome.reason == Refusal.TERMINAL_BUSY.value
    assert register.screens("tb-1")[-1] == lines_for(Refusal.TERMINAL_BUSY)
    assert [(i.device_id, i.amount) for i in store.sim_intents()] == [(device, 9900)]
    assert store.engine_state.sale_on_lane(2) is None

    # Once the other program's intent is gone, the lane takes its next sale normally.
    foreign = answer.json()["id"]
    async with httpx.AsyncClient(base_url=store.sim.base_url) as http:
        deleted = await http.delete(
            f"/point/integration-api/devices/{device}/payment-intents/{foreign}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert deleted.status_code == 200
    retry = store.sale(2, 3000, "tb-2")
    await register.shows("tb-2", S.OPEN)
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    assert (await asyncio.wait_for(retry, IO_TIMEOUT)).outcome is msg.Outcome.APPROVED


async def test_amount_out_of_range_is_refused_before_mercado_pago(store: Store) -> None:
    register = store.registers[1]
    for cid, amount in (("low-1", 499), ("high-1", 400_000_001)):
        outcome = await asyncio.wait_for(store.sale(1, amount, cid), IO_TIMEOUT)
        assert outcome.outcome is msg.Outcome.REFUSED
        assert outcome.reason == Refusal.AMOUNT_OUT_OF_RANGE.value
        assert register.screens(cid) == [lines_for(Refusal.AMOUNT_OUT_OF_RANGE)]
    assert store.sim_intents() == []

    ok = store.sale(1, 500, "edge-1")
    await register.shows("edge-1", S.OPEN)
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    assert (await asyncio.wait_for(ok, IO_TIMEOUT)).outcome is msg.Outcome.APPROVED
