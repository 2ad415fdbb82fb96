"""The daemon process dies or is stopped mid-sale: the restarted daemon finishes the same sale.

Rules under test (architecture.md §2): a sale survives SIGKILL at any moment with exactly one
intent at Mercado Pago and the true outcome at the register; a HELD sale stays held across a
restart and its HOLD is told again; SIGTERM stops cleanly (STOPPING=1, exit 0) and the sale
resumes at the next start; a second daemon on the same journal refuses to start.
"""

from __future__ import annotations

import asyncio
import signal

from pointd.core.states import SaleState
from pointd.register import messages as msg
from tests.e2e_daemon.harness import (
    APPROVED_CENTS,
    CONFIRMATION_APPROVED_CENTS,
    EVENT_TIMEOUT,
    SIM_SALE_SECONDS,
    SIM_SETTLE_SECONDS,
    Store,
    eventually,
    run_pointd,
)


async def _one_intent_one_payment(store: Store) -> tuple[dict[str, object], dict[str, object]]:
    record = await store.record()
    assert len(record["intents"]) == 1, "one sale, one intent at Mercado Pago"
    assert len(record["payments"]) == 1
    return record["intents"][0], record["payments"][0]


async def test_sigkill_mid_sale_then_restart_completes_the_sale(store: Store) -> None:
    first = await store.start_daemon()
    sale = store.sale(APPROVED_CENTS, "kill-1")
    await store.shows("kill-1", SaleState.OPEN)
    before_kill = len(store.notify.messages)

    assert await first.kill() == -signal.SIGKILL
    assert store.notify.seen("STOPPING", since=before_kill) == []
    # The customer pays while no daemon runs.
    await store.sim.advance(SIM_SALE_SECONDS)
    assert not sale.done()

    await store.start_daemon()
    outcome = await asyncio.wait_for(sale, EVENT_TIMEOUT)
    intent, payment = await _one_intent_one_payment(store)
    assert outcome.outcome is msg.Outcome.APPROVED
    assert outcome.payment_id == str(payment["id"])
    status = await store.register.status("kill-1")
    assert (status.state, status.payment_id) == (SaleState.APPROVED.value, str(payment["id"]))

    detail = await store.only_sale()
    assert detail["sale"]["correlation_id"] == "kill-1"
    assert detail["sale"]["state"] == SaleState.APPROVED.value
    assert detail["sale"]["intent_id"] == intent["id"]
    assert detail["sale"]["attempt"] == 1


async def test_sigkill_while_held_keeps_the_hold_and_tells_it_again(store: Store) -> None:
    first = await store.start_daemon()
    sale = store.sale(CONFIRMATION_APPROVED_CENTS, "held-1")
    await store.shows("held-1", SaleState.OPEN)
    await store.sim.advance(SIM_SALE_SECONDS)
    await store.shows("held-1", SaleState.HELD)
    await eventually("HOLD", lambda: "held-1" in store.register.held, EVENT_TIMEOUT)
    await eventually(
        "STATUS= to say the held sale must not be handed over",
        lambda: any("is held: do not hand over" in m["STATUS"]
                    for m in store.notify.seen("STATUS")),
        EVENT_TIMEOUT,
    )

    code, holds = await store.pointctl("holds")
    assert code == 0
    [hold] = holds["holds"]
    assert (hold["lane"], hold["state"]) == ("1", SaleState.HELD.value)
    code, status = await store.pointctl("status")
    assert code == 4, "pointctl status exits 4 while a sale is held"
    assert status["holds"] == 1
    assert status["problems"]

    holds_before = len(store.messages(msg.Hold, "held-1"))
    assert await first.kill() == -signal.SIGKILL
    await store.start_daemon()

    code, holds_after = await store.pointctl("holds")
    assert code == 0
    assert [h["sale_id"] for h in holds_after["holds"]] == [hold["sale_id"]]
    reply = await store.register.status("held-1")
    assert reply.state == SaleState.HELD.value
    assert not reply.handover
    await eventually(
        "the HOLD to be told again",
        lambda: len(store.messages(msg.Hold, "held-1")) > holds_before,
        EVENT_TIMEOUT,
    )
    assert not (await store.register.handover_check("held-1")).allowed
    assert not sale.done()

    # The payment settles; the restarted daemon verifies it and releases the sale.
    await store.sim.advance(SIM_SETTLE_SECONDS)
    outcome = await asyncio.wait_for(sale, EVENT_TIMEOUT)
    _intent, payment = await _one_intent_one_payment(store)
    assert outcome.outcome is msg.Outcome.APPROVED
    assert outcome.payment_id == str(payment["id"])
    code, holds_end = await store.pointctl("holds")
    assert (code, holds_end) == (0, {"holds": []})


async def test_sigterm_mid_sale_stops_cleanly_and_the_sale_resumes(store: Store) -> None:
    first = await store.start_daemon()
    sale = store.sale(APPROVED_CENTS, "term-1")
    await store.shows("term-1", SaleState.OPEN)
    before_stop = len(store.notify.messages)

    assert await first.terminate() == 0
    assert store.notify.seen("STOPPING", "1", since=before_stop)
    assert not store.control_socket.exists()
    await store.sim.advance(SIM_SALE_SECONDS)

    await store.start_daemon()
    outcome = await asyncio.wait_for(sale, EVENT_TIMEOUT)
    _intent, payment = await _one_intent_one_payment(store)
    assert outcome.outcome is msg.Outcome.APPROVED
    assert outcome.payment_id == str(payment["id"])
    detail = await store.only_sale()
    assert detail["sale"]["state"] == SaleState.APPROVED.value
    assert detail["sale"]["attempt"] == 1


async def test_a_second_daemon_on_the_same_journal_refuses_to_start(store: Store) -> None:
    # A second `pointd run` (a technician trying it by hand while the service runs) must
    # stop before it replays the journal, runs recovery or opens the register's port.
    first = await store.start_daemon()
    sale = store.sale(APPROVED_CENTS, "two-1")
    await store.shows("two-1", SaleState.OPEN)

    code, out, err = await run_pointd(store.config_path)

    assert code == 1, (out, err)
    assert "another pointd is running on the journal" in err
    assert "journal.replayed" not in out
    assert "link.up" not in out
    assert first.running
    code, status = await store.pointctl("status")
    assert code == 0
    assert status["lanes"][0]["register"]["connected"] is True
    await store.sim.advance(SIM_SALE_SECONDS)
    outcome = await asyncio.wait_for(sale, EVENT_TIMEOUT)
    assert outcome.outcome is msg.Outcome.APPROVED
    await _one_intent_one_payment(store)
