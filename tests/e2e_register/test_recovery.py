"""Links and daemons that go away mid-sale: the register still learns the one true outcome.

Rules under test (architecture.md §2): a sale's outcome is never lost when the register's
line drops (the register asks STATUS after reconnecting), and a SALE repeated with the same
correlation id after the daemon restarted is the same sale, never a second charge.
"""

from __future__ import annotations

import asyncio

import pytest

from pointd.core.states import SaleState
from pointd.register import messages as msg
from pointd.sim.register.emulator import DaemonRejected
from tests.e2e_register.harness import (
    ESCALATE,
    IO_TIMEOUT,
    POLL,
    SIM_SALE_SECONDS,
    SIM_SETTLE_SECONDS,
    VERIFY,
    Store,
    eventually,
    script_next_intent,
    sim_record,
)

S = SaleState


def _sale_state(store: Store, cid: str) -> SaleState | None:
    sales = [s for s in store.engine_state.sales.values() if s.correlation_id == cid]
    return sales[-1].state if sales else None


async def test_pty_closed_mid_sale_then_status_tells_the_outcome(store: Store) -> None:
    register = store.registers[1]
    emulator = register.emulator
    sale = store.sale(1, 2500, "pty-1")
    await register.shows("pty-1", S.OPEN)

    await emulator.unplug()
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    await eventually("the sale to be approved", lambda: _sale_state(store, "pty-1") is S.APPROVED)
    assert not sale.done(), "the RESULT cannot have reached an unplugged register"
    assert register.of_kind(msg.Result, "pty-1") == []

    await emulator.replug()
    outcome = await asyncio.wait_for(sale, IO_TIMEOUT)
    assert outcome.outcome is msg.Outcome.APPROVED
    assert outcome.from_status, "learned by STATUS after the reconnect"
    intent = store.sim_intents()[0]
    assert outcome.payment_id == str(intent.payment_id)
    status = await emulator.status("pty-1")
    assert (status.state, status.payment_id) == (S.APPROVED.value, str(intent.payment_id))
    assert len(store.sim_intents()) == 1


async def test_pty_closed_while_held_keeps_the_hold_after_reconnect(store: Store) -> None:
    register = store.registers[1]
    emulator = register.emulator
    sale = store.sale(1, 1401, "pty-h")
    await register.shows("pty-h", S.OPEN)
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    await register.shows("pty-h", S.HELD)

    await emulator.unplug()
    await emulator.replug()
    status = await emulator.status("pty-h")
    assert status.state == S.HELD.value
    assert not (await emulator.handover_check("pty-h")).allowed

    await store.advance(cloud=SIM_SETTLE_SECONDS, daemon=VERIFY)
    outcome = await asyncio.wait_for(sale, IO_TIMEOUT)
    assert outcome.outcome is msg.Outcome.APPROVED


@pytest.mark.parametrize("finished_before_restart", [False, True], ids=["live", "finished"])
async def test_repeated_sale_after_daemon_restart_never_creates_a_second_intent(
    store: Store, finished_before_restart: bool
) -> None:
    register = store.registers[1]
    first = store.sale(1, 2500, "rst-1")
    await register.shows("rst-1", S.OPEN)
    if finished_before_restart:
        await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
        assert (await asyncio.wait_for(first, IO_TIMEOUT)).outcome is msg.Outcome.APPROVED
    else:
        first.cancel()

    assert await store.stop_daemon() == 0
    await store.start_daemon()
    repeated = store.sale(1, 2500, "rst-1")
    if not finished_before_restart:
        await register.shows("rst-1", S.OPEN)
        await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    outcome = await asyncio.wait_for(repeated, IO_TIMEOUT)

    assert outcome.outcome is msg.Outcome.APPROVED
    record = await sim_record(store)
    assert len(record["intents"]) == 1, "one sale, one intent at Mercado Pago"
    assert len(record["payments"]) == 1
    assert outcome.payment_id == str(record["payments"][0]["id"])
    sales = [s for s in store.engine_state.sales.values() if s.correlation_id == "rst-1"]
    assert len(sales) == 1
    assert sales[0].attempt == 1


async def test_same_id_with_another_amount_after_restart_is_refused(store: Store) -> None:
    register = store.registers[1]
    first = store.sale(1, 2500, "rst-2")
    await register.shows("rst-2", S.OPEN)
    first.cancel()
    await store.stop_daemon()
    await store.start_daemon()

    with pytest.raises(DaemonRejected) as caught:
        await asyncio.wait_for(register.emulator.sale(3000, "rst-2", within=IO_TIMEOUT), IO_TIMEOUT)
    assert caught.value.error.code is msg.ErrorCode.ID_REUSED
    assert len(store.sim_intents()) == 1


@pytest.mark.parametrize("failure", ["drop", "5xx"])
async def test_create_answer_lost_is_reconciled_never_resent(store: Store, failure: str) -> None:
    # Mercado Pago creates the intent but the answer never arrives: the daemon must find
    # that intent by its external_reference, not create another one (with Orders: resend
    # the same request with the same idempotency key, which answers with the same order).
    await script_next_intent(store, create_failure=failure)
    register = store.registers[1]
    sale = store.sale(1, 2500, f"lost-{failure}")
    await eventually(
        "the intent to be adopted", lambda: _sale_state(store, f"lost-{failure}") is S.OPEN
    )
    [intent] = store.sim_intents()
    assert store.engine_state.intents.get(intent.id) is not None

    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    outcome = await asyncio.wait_for(sale, IO_TIMEOUT)
    assert outcome.outcome is msg.Outcome.APPROVED
    assert outcome.payment_id == str(intent.payment_id)
    assert len(store.sim_intents()) == 1
    assert register.shown(f"lost-{failure}", S.CREATE_UNKNOWN)
    if store.config.cloud.backend == "orders":
        # The Orders API lists nothing: the order was named by resending the create with
        # the attempt's idempotency key, which the simulator saw for one order only.
        create_keys = {
            key: use.order_id
            for key, use in store.sim.orders.keys.items()
            if use.request[:2] == ("POST", "/v1/orders")
        }
        assert create_keys == {intent.external_reference: intent.id}


async def test_a_hold_survives_a_daemon_restart(store: Store) -> None:
    register = store.registers[1]
    first = store.sale(1, 1403, "hold-r")
    await register.shows("hold-r", S.OPEN)
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    await register.shows("hold-r", S.HELD)
    await eventually("HOLD", lambda: "hold-r" in register.emulator.held)
    first.cancel()
    # Most of the escalation time passes before the restart.
    await store.advance(daemon=ESCALATE - 4)
    holds_before = len(register.of_kind(msg.Hold, "hold-r"))
    assert not register.shown("hold-r", S.ESCALATED)

    assert await store.stop_daemon() == 0
    await store.start_daemon()
    # The register asks STATUS (its first request meets hello_required and a new HELLO);
    # the daemon answers and tells the hold again after that HELLO.
    status = await register.emulator.status("hold-r")
    assert status.state == S.HELD.value
    await eventually(
        "the hold to be told again",
        lambda: len(register.of_kind(msg.Hold, "hold-r")) > holds_before,
    )
    assert not (await register.emulator.handover_check("hold-r")).allowed

    # Escalation is measured from before the restart, not started again.
    await store.advance(daemon=5)
    await register.shows("hold-r", S.ESCALATED)
    assert register.of_kind(msg.Result, "hold-r") == []
    assert len(store.sim_intents()) == 1


async def test_register_waiting_through_a_daemon_restart_gets_the_result(store: Store) -> None:
    # The register keeps waiting for its held sale's RESULT and sends nothing while the
    # daemon restarts; the new daemon must still deliver the RESULT over the same line.
    register = store.registers[1]
    sale = store.sale(1, 1401, "wait-r")
    await register.shows("wait-r", S.OPEN)
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    await register.shows("wait-r", S.HELD)

    assert await store.stop_daemon() == 0
    await store.start_daemon()
    await store.advance(cloud=SIM_SETTLE_SECONDS, daemon=VERIFY)
    outcome = await asyncio.wait_for(sale, IO_TIMEOUT)
    assert outcome.outcome is msg.Outcome.APPROVED
    assert len(store.sim_intents()) == 1
