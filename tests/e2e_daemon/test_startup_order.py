"""Start-up order in the real daemon: a sale that arrives before the first device list is
in waits for it, instead of being refused as "terminal unknown" (NO TERMINAL SET UP).

The lane pins its terminal by id. While the daemon starts (as after every restart systemd
makes) the register's link is up while the daemon still asks Mercado Pago for the device
list; the simulator answers that first GET 429 with a Retry-After, so the window lasts
seconds, not microseconds, and the SALE certainly lands in it.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pointd.core.states import Refusal, SaleState
from pointd.register import messages as msg
from pointd.register.prompts import prompt_for
from tests.e2e_daemon.harness import (
    APPROVED_CENTS,
    EVENT_TIMEOUT,
    LANGUAGE,
    SIM_SALE_SECONDS,
    Store,
    eventually,
)

pytestmark = pytest.mark.slow

# How long Mercado Pago makes the daemon wait for the device list after the restart.
RETRY_AFTER = 3


async def test_a_sale_during_start_up_waits_for_the_terminal_list(store: Store) -> None:
    async with httpx.AsyncClient(base_url=store.sim.base_url) as http:
        answer = await http.post("/_sim/faults", json={"get_429": 1, "retry_after": RETRY_AFTER})
    assert answer.status_code < 300, answer.text

    starting = await store.spawn()
    # The register's link is up before the device list is in: sell right then.
    await eventually(
        "the daemon's register link",
        lambda: any(e.get("event") == "register.link_up" for e in starting.log_entries()),
        EVENT_TIMEOUT,
    )
    sale = store.sale(APPROVED_CENTS, "early-1")
    await store.register.hello(EVENT_TIMEOUT)
    assert not starting.seen("READY"), "the SALE must reach the daemon before the list does"
    await starting.wait_ready()
    await store.shows("early-1", SaleState.OPEN)
    await store.sim.advance(SIM_SALE_SECONDS)
    outcome = await asyncio.wait_for(sale, EVENT_TIMEOUT)

    assert outcome.outcome is msg.Outcome.APPROVED
    refused = prompt_for(Refusal.TERMINAL_UNKNOWN, LANGUAGE).lines
    shown = [m.lines for m in store.messages(msg.Display, "early-1")]
    assert refused not in shown
    record = await store.record()
    assert len(record["intents"]) == 1
