"""Every sale outcome, register to terminal and back: what the cashier sees and is told.

Each test sends a SALE from lane 1's emulated register over a real pty, lets the simulated
terminal walk the outcome chosen by the amount (docs/simulator.md), and lets the daemon
learn it by polling (no relay). The assertions are on the register's side of the wire:
the DISPLAY screens, the RESULT and any HOLD or RELEASE.
"""

from __future__ import annotations

import asyncio

from pointd.core.states import SaleState
from pointd.register import messages as msg
from pointd.sim.cloud.world import SimIntent
from pointd.sim.register.emulator import SaleOutcome
from tests.e2e_register.harness import (
    DEVICES,
    ESCALATE,
    IO_TIMEOUT,
    POLL,
    SIM_ABANDON_SECONDS,
    SIM_SALE_SECONDS,
    SIM_SETTLE_SECONDS,
    VERIFY,
    Register,
    Store,
    eventually,
    lines_for,
)

S = SaleState


async def _open_sale(
    store: Store, amount: int, cid: str
) -> tuple[Register, asyncio.Task[SaleOutcome]]:
    register = store.registers[1]
    sale = store.sale(1, amount, cid)
    await register.shows(cid, S.OPEN)
    return register, sale


async def _result(sale: asyncio.Task[SaleOutcome]) -> msg.Outcome:
    outcome = await asyncio.wait_for(sale, IO_TIMEOUT)
    return outcome.outcome


def _one_intent(store: Store, amount: int) -> SimIntent:
    intents = store.sim_intents()
    assert [i.amount for i in intents] == [amount], "exactly one intent reached Mercado Pago"
    return intents[0]


async def test_approved_sale_releases_goods_and_records_the_handover(store: Store) -> None:
    register, sale = await _open_sale(store, 2500, "ok-1")
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    outcome = await asyncio.wait_for(sale, IO_TIMEOUT)

    intent = _one_intent(store, 2500)
    assert intent.payment_id is not None
    payment = store.sim.world.payments[intent.payment_id]
    assert outcome.outcome is msg.Outcome.APPROVED
    assert outcome.payment_id == str(payment.id)
    assert register.screens("ok-1") == [
        lines_for(S.CREATING),
        lines_for(S.OPEN),
        lines_for(S.VERIFYING),
        lines_for(S.APPROVED),
    ]
    [result] = register.of_kind(msg.Result, "ok-1")
    assert result.amount_cents == 2500
    assert register.of_kind(msg.Hold, "ok-1") == []

    check = await register.emulator.handover_check("ok-1")
    assert check.allowed
    await register.emulator.handover_done("ok-1")
    await eventually(
        "the handover to be journaled",
        lambda: (
            store.engine_state.sales[store.engine_state.payments[str(payment.id)]].state
            is S.HANDED_OVER
        ),
    )


async def test_finished_with_a_rejected_payment_is_declined(store: Store) -> None:
    register, sale = await _open_sale(store, 1200, "rej-1")
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)

    assert await _result(sale) is msg.Outcome.DECLINED
    intent = _one_intent(store, 1200)
    assert intent.state == "FINISHED"
    assert register.screens("rej-1")[-2:] == [lines_for(S.VERIFYING), lines_for(S.DECLINED)]
    assert not register.shown("rej-1", S.APPROVED)
    assert not (await register.emulator.handover_check("rej-1")).allowed


async def test_intent_error_fails_the_sale(store: Store) -> None:
    register, sale = await _open_sale(store, 1300, "err-1")
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)

    assert await _result(sale) is msg.Outcome.ERROR
    assert _one_intent(store, 1300).state == "ERROR"
    assert register.screens("err-1")[-1] == lines_for(S.FAILED)
    [result] = register.of_kind(msg.Result, "err-1")
    assert result.payment_id is None


async def test_canceled_on_the_terminal(store: Store) -> None:
    register, sale = await _open_sale(store, 1501, "cxl-1")
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)

    assert await _result(sale) is msg.Outcome.CANCELED
    assert _one_intent(store, 1501).state == "CANCELED"
    assert register.screens("cxl-1")[-1] == lines_for(S.CANCELED)


async def test_abandoned_after_fifteen_minutes(store: Store) -> None:
    register, sale = await _open_sale(store, 1601, "abn-1")
    # The terminal never takes it: fifteen minutes later Mercado Pago abandons it, and the
    # daemon's own abandon timer (with the poll) asks.
    await store.advance(cloud=SIM_ABANDON_SECONDS, daemon=SIM_ABANDON_SECONDS)
    assert await _result(sale) is msg.Outcome.ABANDONED
    assert _one_intent(store, 1601).state == "ABANDONED"
    assert register.screens("abn-1")[-1] == lines_for(S.ABANDONED)


async def test_confirmation_required_holds_then_approved_releases(store: Store) -> None:
    register, sale = await _open_sale(store, 1401, "cfa-1")
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    await register.shows("cfa-1", S.HELD)
    await eventually("HOLD", lambda: "cfa-1" in register.emulator.held)
    assert not (await register.emulator.handover_check("cfa-1")).allowed
    assert not sale.done()

    await store.advance(cloud=SIM_SETTLE_SECONDS, daemon=VERIFY)
    assert await _result(sale) is msg.Outcome.APPROVED
    [hold] = register.of_kind(msg.Hold, "cfa-1")
    [release] = register.of_kind(msg.Release, "cfa-1")
    [result] = register.of_kind(msg.Result, "cfa-1")
    kinds = [type(m) for m in register.received if m in (hold, release, result)]
    assert kinds == [msg.Hold, msg.Release, msg.Result], "HOLD, then RELEASE, then RESULT"
    assert register.screens("cfa-1")[-1] == lines_for(S.APPROVED)
    assert (await register.emulator.handover_check("cfa-1")).allowed


async def test_confirmation_required_then_rejected_ends_the_hold_declined(store: Store) -> None:
    register, sale = await _open_sale(store, 1402, "cfr-1")
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    await register.shows("cfr-1", S.HELD)

    await store.advance(cloud=SIM_SETTLE_SECONDS, daemon=VERIFY)
    assert await _result(sale) is msg.Outcome.DECLINED
    assert register.of_kind(msg.Hold, "cfr-1")
    assert register.of_kind(msg.Release, "cfr-1") == []
    assert register.screens("cfr-1")[-1] == lines_for(S.DECLINED)
    assert not (await register.emulator.handover_check("cfr-1")).allowed


async def test_confirmation_that_never_settles_escalates_and_stays_held(store: Store) -> None:
    register, sale = await _open_sale(store, 1403, "cfp-1")
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    await register.shows("cfp-1", S.HELD)

    await store.advance(cloud=SIM_SETTLE_SECONDS * 2, daemon=ESCALATE)
    await register.shows("cfp-1", S.ESCALATED)
    assert lines_for(S.ESCALATED) != lines_for(S.HELD)
    await eventually("a second HOLD", lambda: len(register.of_kind(msg.Hold, "cfp-1")) == 2)
    assert [h.reason for h in register.of_kind(msg.Hold, "cfp-1")] == ["held", "escalated"]
    assert register.of_kind(msg.Result, "cfp-1") == []
    assert register.of_kind(msg.Release, "cfp-1") == []
    assert "cfp-1" in register.emulator.held
    assert not sale.done()
    assert not (await register.emulator.handover_check("cfp-1")).allowed
    assert store.daemon is not None
    assert any(a.severity == "warning" for a in store.daemon.alerts)
    status = await register.emulator.status("cfp-1")
    assert status.state == S.ESCALATED.value


async def test_two_lanes_at_once_each_get_their_own_outcome(store: Store) -> None:
    one, two = store.registers[1], store.registers[2]
    approved = store.sale(1, 2500, "two-1")
    declined = store.sale(2, 1200, "two-2")
    await one.shows("two-1", S.OPEN)
    await two.shows("two-2", S.OPEN)
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)

    assert await _result(approved) is msg.Outcome.APPROVED
    assert await _result(declined) is msg.Outcome.DECLINED
    assert one.screens("two-2") == []
    assert two.screens("two-1") == []
    devices = {i.amount: i.device_id for i in store.sim_intents()}
    assert devices == {2500: DEVICES[1], 1200: DEVICES[2]}


async def test_handover_reported_during_a_hold_alerts_and_keeps_holding(store: Store) -> None:
    register, sale = await _open_sale(store, 1403, "hh-1")
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    await register.shows("hh-1", S.HELD)
    await eventually("HOLD", lambda: "hh-1" in register.emulator.held)
    holds = len(register.of_kind(msg.Hold, "hh-1"))

    # A register bug (or a cashier) says the goods left while the payment is unverified.
    await register.emulator.handover_done("hh-1")
    daemon = store.daemon
    assert daemon is not None
    await eventually(
        "a critical alert",
        lambda: any(a.severity == "critical" and "not paid" in a.message for a in daemon.alerts),
    )
    await eventually(
        "the hold told again", lambda: len(register.of_kind(msg.Hold, "hh-1")) == holds + 1
    )
    assert (await register.emulator.status("hh-1")).state == S.HELD.value
    assert not sale.done()
