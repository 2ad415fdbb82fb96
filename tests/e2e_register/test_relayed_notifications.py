"""Outcomes learned from Mercado Pago's notifications through the relay, without polling.

The simulator's webhooks (``order`` with the Orders backend, the bare intent body with
payment intents) go to a real pointd relay on loopback, signed as the simulator signs
them; the daemon reads its store's stream and fetches what they name. The daemon's clock
never moves in these tests, so no poll timer can fire: only a notification can tell it
that the terminal finished.
"""

from __future__ import annotations

import asyncio

from pointd.core.states import SaleState
from pointd.register import messages as msg
from tests.e2e_register.harness import (
    IO_TIMEOUT,
    SIM_SALE_SECONDS,
    Store,
    eventually,
    sim_record,
)

S = SaleState
# The topic each backend's notifications arrive under at the relay and the simulator.
TOPIC = {"payment-intent": "point_integration_wh", "orders": "order"}


async def test_an_approved_sale_is_learned_from_its_notification(relayed_store: Store) -> None:
    store = relayed_store
    register = store.registers[1]
    sale = store.sale(1, 2500, "ntf-ok")
    await register.shows("ntf-ok", S.OPEN)

    await store.advance(cloud=SIM_SALE_SECONDS)
    outcome = await asyncio.wait_for(sale, IO_TIMEOUT)
    assert outcome.outcome is msg.Outcome.APPROVED
    [intent] = store.sim_intents()
    assert outcome.payment_id == str(intent.payment_id)
    record = await sim_record(store)
    delivered = [(w["topic"], w["data_id"], w["status_code"]) for w in record["webhooks"]]
    assert delivered, "the simulator sent a notification"
    backend = store.config.cloud.backend
    assert {(topic, status) for topic, _id, status in delivered} == {(TOPIC[backend], 200)}
    assert {data_id for _topic, data_id, _status in delivered} == {intent.id}


async def test_a_confirmation_required_hold_is_learned_from_its_notification(
    relayed_store: Store,
) -> None:
    store = relayed_store
    register = store.registers[1]
    sale = store.sale(1, 1403, "ntf-hold")
    await register.shows("ntf-hold", S.OPEN)

    await store.advance(cloud=SIM_SALE_SECONDS)
    await register.shows("ntf-hold", S.HELD)
    await eventually("HOLD", lambda: "ntf-hold" in register.emulator.held)
    assert not (await register.emulator.handover_check("ntf-hold")).allowed
    assert not sale.done()
