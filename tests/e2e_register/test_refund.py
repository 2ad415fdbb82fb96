"""Refunds from the register: REFUND over a real pty, the daemon, the simulator and back.

The register refunds a sale it took; the assertions are what the cashier sees (DISPLAY
screens, REFUND_RESULT) and what reached the simulated Mercado Pago account.
"""

from __future__ import annotations

import asyncio

import pytest

from pointd.core.refunds import REFUND_POLL_INTERVAL
from pointd.core.states import SaleState
from pointd.register import messages as msg
from pointd.register.prompts import RefundScreen
from pointd.sim.register.emulator import DaemonRejected
from tests.e2e_register.harness import (
    IO_TIMEOUT,
    POLL,
    SIM_SALE_SECONDS,
    SIM_SETTLE_SECONDS,
    Register,
    Store,
)


async def _paid(store: Store, amount: int, cid: str) -> Register:
    register = store.registers[1]
    sale = store.sale(1, amount, cid)
    await register.shows(cid, SaleState.OPEN)
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    outcome = await asyncio.wait_for(sale, IO_TIMEOUT)
    assert outcome.outcome is msg.Outcome.APPROVED
    await register.emulator.handover_done(cid)
    return register


def _refunds_of(store: Store, cid: str) -> list[int]:
    state = store.engine_state
    (sale,) = [s for s in state.sales.values() if s.correlation_id == cid]
    assert sale.approved_payment_id is not None
    payment = store.sim.world.payments[int(sale.approved_payment_id)]
    return [round(r["amount"] * 100) for r in payment.refunds]


async def test_partial_repeated_and_over_amount_refunds(store: Store) -> None:
    register = await _paid(store, 1500, "rf-sale-1")
    emulator = register.emulator

    done = await emulator.refund("rf-sale-1", 500, "RF-1", within=IO_TIMEOUT)
    assert (done.outcome, done.amount_cents, done.sale_id) == (
        msg.RefundOutcome.REFUNDED, 500, "rf-sale-1")
    assert register.shown("RF-1", RefundScreen.DONE)

    # The register lost the answer and asks again: the same refund, nothing new is sent.
    again = await emulator.refund("rf-sale-1", 500, "RF-1", within=IO_TIMEOUT)
    assert again == done

    over = await emulator.refund("rf-sale-1", 1001, "RF-2", within=IO_TIMEOUT)
    assert (over.outcome, over.reason) == (msg.RefundOutcome.REFUSED, "over_amount")
    assert register.shown("RF-2", RefundScreen.OVER_AMOUNT)

    with pytest.raises(DaemonRejected) as reused:
        await emulator.refund("rf-sale-1", 200, "RF-1", within=IO_TIMEOUT)
    assert reused.value.error.code is msg.ErrorCode.ID_REUSED

    assert _refunds_of(store, "rf-sale-1") == [500]


async def test_total_refund(store: Store, backend: str) -> None:
    register = await _paid(store, 2000, "rf-sale-2")
    refund = asyncio.create_task(
        register.emulator.refund("rf-sale-2", None, "RF-T", within=IO_TIMEOUT * 3))
    if backend == "payment-intent":
        # A whole refund is a refund intent the cashier completes on the terminal.
        await register.shows("RF-T", RefundScreen.ON_TERMINAL)
        await store.advance(cloud=SIM_SETTLE_SECONDS, daemon=REFUND_POLL_INTERVAL)
    result = await asyncio.wait_for(refund, IO_TIMEOUT)
    assert (result.outcome, result.amount_cents) == (msg.RefundOutcome.REFUNDED, 2000)
    assert register.shown("RF-T", RefundScreen.DONE)
    assert _refunds_of(store, "rf-sale-2") == [2000]
