"""A whole day in one run of the real daemon: start, notify, sell, query with pointctl, stop.

Rules under test: READY=1 only once the daemon can serve, WATCHDOG=1 while it is healthy,
STOPPING=1 and exit code 0 on SIGTERM; pointctl's JSON tells the truth the simulator holds.
"""

from __future__ import annotations

import asyncio
import re

from pointd.core.states import SaleState
from pointd.register import messages as msg
from tests.e2e_daemon.harness import (
    APPROVED_CENTS,
    DEVICE,
    EVENT_TIMEOUT,
    SIM_SALE_SECONDS,
    STORE_ID,
    Store,
    eventually_async,
)


async def test_a_sale_through_the_real_daemon_then_a_clean_stop(store: Store) -> None:
    daemon = await store.start_daemon()
    ready = store.notify.seen("READY", "1")[0]
    # READY=1 carries the one-line summary; the register link may still be opening then.
    assert re.fullmatch(r"[01]/1 lanes ready, no relay \(polling Mercado Pago\).*",
                        ready.get("STATUS", "")), ready
    await store.notify.wait("STATUS", "1/1 lanes ready, no relay (polling Mercado Pago)")
    await store.notify.wait("WATCHDOG", "1", since=store.notify.messages.index(ready))

    sale = store.sale(APPROVED_CENTS, "day-1")
    await store.shows("day-1", SaleState.OPEN)
    await store.sim.advance(SIM_SALE_SECONDS)
    outcome = await asyncio.wait_for(sale, EVENT_TIMEOUT)

    record = await store.record()
    [intent] = record["intents"]
    [payment] = record["payments"]
    assert outcome.outcome is msg.Outcome.APPROVED
    assert outcome.payment_id == str(payment["id"])
    assert intent["amount"] == APPROVED_CENTS
    assert intent["external_reference"].startswith("pd1_")

    code, listing = await store.pointctl("sales")
    assert code == 0
    [row] = listing["sales"]
    assert row["lane"] == "1"
    assert row["state"] == SaleState.APPROVED.value
    assert row["amount_cents"] == APPROVED_CENTS
    assert row["payment_id"] == str(payment["id"])
    assert row["intent_id"] == intent["id"]
    assert row["terminal_id"] == DEVICE
    assert row["attempt"] == 1

    code, detail = await store.pointctl("sale", row["sale_id"])
    assert code == 0
    assert detail["sale"]["correlation_id"] == "day-1"
    assert detail["sale"]["approved_payment_id"] == str(payment["id"])
    assert detail["sale"]["may_hand_over"] is True
    events = [entry["event"] for entry in detail["timeline"]]
    assert len(events) >= 3, events
    assert [entry["seq"] for entry in detail["timeline"]] == sorted(
        entry["seq"] for entry in detail["timeline"]
    )

    assert (await store.register.handover_check("day-1")).allowed
    await store.register.handover_done("day-1")

    async def handed_over() -> bool:
        _code, answer = await store.pointctl("sale", row["sale_id"])
        return bool(answer["sale"]["state"] == SaleState.HANDED_OVER.value)

    await eventually_async("the handover to be journaled", handed_over)

    code, holds = await store.pointctl("holds")
    assert (code, holds) == (0, {"holds": []})

    code, status = await store.pointctl("status")
    assert code == 0, status
    assert status["ready"] is True
    assert status["healthy"] is True
    assert status["problems"] == []
    assert status["unfinished"] == 0
    assert status["relay"]["state"] == "disabled"
    [lane] = status["lanes"]
    assert (lane["lane"], lane["terminal"], lane["condition"]) == ("1", DEVICE, "ready")
    assert lane["register"]["connected"] is True

    code, _out, err = await store.pointctl_raw("sale", "01NOSUCHSALE0000000000000")
    assert code == 1
    assert "not_found" in err

    before_stop = len(store.notify.messages)
    assert await daemon.terminate() == 0
    stopping = store.notify.seen("STOPPING", "1", since=before_stop)
    assert stopping, store.notify.messages[before_stop:]
    assert not store.control_socket.exists(), "a clean stop removes the control socket"
    code, _out, err = await store.pointctl_raw("status")
    assert code == 3, "pointctl says the daemon is not reachable"
    assert str(store.control_socket) in err
    text = daemon.log_path.read_text(encoding="utf-8")
    assert "TEST-e2e-daemon-token" not in text, "the access token reached the log"
    assert STORE_ID in text
