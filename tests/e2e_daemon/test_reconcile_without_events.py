"""An unknown create, with the intent events endpoints gone, through the real daemon.

The create's answer is lost (the connection closes mid-answer) while the intent was
made; the simulator answers the events endpoints 404, as if removed from the API. The
daemon must neither start a second attempt nor give up: the payments search by
external_reference finds the payment once the terminal took it, and the sale ends paid.
"""

from __future__ import annotations

import asyncio

from pointd.register import messages as msg
from pointd.sim.cloud.scenarios import parse_rule
from tests.e2e_daemon.harness import (
    APPROVED_CENTS,
    EVENT_TIMEOUT,
    SIM_SALE_SECONDS,
    Store,
    eventually,
)


async def test_a_lost_create_is_reconciled_by_the_payment_when_events_are_gone(
    store: Store,
) -> None:
    store.sim.world.events_unavailable = True
    store.sim.world.scenarios.add(parse_rule({"next": True, "create_failure": "drop"}))
    await store.start_daemon()
    sale = store.sale(APPROVED_CENTS, "lost-1")
    await eventually("the dropped create", lambda: bool(store.sim.world.intents), EVENT_TIMEOUT)
    await store.sim.advance(SIM_SALE_SECONDS)
    outcome = await asyncio.wait_for(sale, EVENT_TIMEOUT * 2)
    record = await store.record()
    [intent] = record["intents"]
    [payment] = record["payments"]
    assert outcome.outcome is msg.Outcome.APPROVED
    assert outcome.payment_id == str(payment["id"])
    assert intent["external_reference"].endswith("_1"), "no second attempt was made"
    detail = (await store.only_sale())["sale"]
    assert detail["attempt"] == 1
    assert any(
        entry.get("event") == "cloud.intent_events_unavailable"
        for entry in store.daemon.log_entries()
    )
