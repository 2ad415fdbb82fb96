"""The cashier cancels from the register: before the terminal took the sale, and after.

A CANCEL is answered by the sale's RESULT: ``canceled`` while Mercado Pago still lets the
intent be deleted (OPEN), otherwise the sale's real outcome, with advice to cancel on the
terminal in between. It never leaves an intent queued on the terminal.
"""

from __future__ import annotations

import asyncio

from pointd.core.effects import Notice
from pointd.core.states import SaleState
from pointd.register import messages as msg
from tests.e2e_register.harness import (
    IO_TIMEOUT,
    POLL,
    SIM_SALE_SECONDS,
    SIM_SETTLE_SECONDS,
    VERIFY,
    Store,
    lines_for,
)

S = SaleState
# Simulated seconds until the terminal takes an intent (docs/simulator.md, delays.take).
SIM_TAKE_SECONDS = 2.0


async def test_cancel_before_the_terminal_took_it(store: Store) -> None:
    register = store.registers[1]
    sale = store.sale(1, 2500, "rc-1")
    await register.shows("rc-1", S.OPEN)

    await register.emulator.cancel("rc-1")
    outcome = await asyncio.wait_for(sale, IO_TIMEOUT)
    assert outcome.outcome is msg.Outcome.CANCELED
    [intent] = store.sim_intents()
    assert intent.state == "CANCELED"
    assert register.screens("rc-1")[-2:] == [lines_for(S.CANCELING), lines_for(S.CANCELED)]

    # The terminal is free again: the next sale goes through.
    again = store.sale(1, 2500, "rc-2")
    await register.shows("rc-2", S.OPEN)
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    assert (await asyncio.wait_for(again, IO_TIMEOUT)).outcome is msg.Outcome.APPROVED


async def test_cancel_after_the_terminal_took_it_gets_the_real_outcome(store: Store) -> None:
    register = store.registers[1]
    sale = store.sale(1, 2500, "rc-3")
    await register.shows("rc-3", S.OPEN)
    await store.advance(cloud=SIM_TAKE_SECONDS, daemon=POLL)
    await register.shows("rc-3", S.ON_TERMINAL)

    await register.emulator.cancel("rc-3")
    await register.shows("rc-3", Notice.CANCEL_ON_TERMINAL)
    assert not sale.done()
    [intent] = store.sim_intents()
    assert intent.state == "ON_TERMINAL", "the daemon cannot cancel it any more: not even tried"

    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    outcome = await asyncio.wait_for(sale, IO_TIMEOUT)
    assert outcome.outcome is msg.Outcome.APPROVED, "the customer paid: the cancel came too late"
    assert register.screens("rc-3")[-1] == lines_for(S.APPROVED)


async def test_cancel_while_held_is_too_late(store: Store) -> None:
    register = store.registers[1]
    sale = store.sale(1, 1402, "rc-4")
    await register.shows("rc-4", S.OPEN)
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    await register.shows("rc-4", S.HELD)

    await register.emulator.cancel("rc-4")
    await register.shows("rc-4", Notice.CANCEL_TOO_LATE)
    assert "rc-4" in register.emulator.held, "advice never lifts a hold"
    await store.advance(cloud=SIM_SETTLE_SECONDS, daemon=VERIFY)
    assert (await asyncio.wait_for(sale, IO_TIMEOUT)).outcome is msg.Outcome.DECLINED
