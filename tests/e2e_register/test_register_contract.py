"""What the register is told, through real ptys and the daemon: it is never left guessing.

Withdrawn approvals (WITHDRAW), the bounded wait for HANDOVER_DONE and the emulator's
script mode, a create whose outcome stays unknown, a correlation id reused days later,
and the link's numbering after a register-side link-down (docs/register-protocol.md §3,
§6.2, §7).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pointd.core.effects import Notice
from pointd.core.states import SaleState
from pointd.register import messages as msg
from pointd.sim.register import DaemonRejected
from pointd.sim.register.emulator import SaleOutcome, outcome_from_status
from pointd.sim.register.script import ScriptedSale, run_script
from tests.e2e_register.harness import (
    IO_TIMEOUT,
    POLL,
    SIM_SALE_SECONDS,
    Register,
    Store,
    eventually,
    lines_for,
    script_next_intent,
)

S = SaleState
# The daemon's defaults, which the harness leaves as they are.
HANDOVER_WAIT = 120.0
RETRY_WINDOW = 3600.0
RECONCILE_ROUNDS = 5


def standing(store: Store, cid: str) -> SaleState | None:
    sales = [s for s in store.engine_state.sales.values() if s.correlation_id == cid]
    return max(sales, key=lambda s: s.requested_at).state if sales else None


async def approved(store: Store, lane: int, cents: int, cid: str) -> SaleOutcome:
    sale = store.sale(lane, cents, cid)
    await store.registers[lane].shows(cid, S.OPEN)
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    outcome = await asyncio.wait_for(sale, IO_TIMEOUT)
    assert outcome.outcome is msg.Outcome.APPROVED
    return outcome


# With the Orders backend the relay learns the payment id from the order webhook
# (transactions.payments[].reference.id), so the fraud alert finds the store either way.
@pytest.mark.parametrize("backend", ["payment-intent", "orders"])
async def test_a_fraud_alert_after_an_approved_result_withdraws_it(relayed_store: Store) -> None:
    store = relayed_store
    register = store.registers[1]
    outcome = await approved(store, 1, 2500, "wd-1")
    assert register.emulator.may_hand_over(outcome)

    # Mercado Pago's fraud alert reaches the daemon through the relay before the goods left.
    async with httpx.AsyncClient(base_url=store.sim.base_url) as http:
        sent = await http.post(f"/_sim/payments/{outcome.payment_id}/fraud_alert")
    assert sent.json()["status_code"] == 200, sent.text
    await eventually("WITHDRAW", lambda: "wd-1" in register.emulator.withdrawn)
    await eventually("HOLD", lambda: "wd-1" in register.emulator.held)
    assert register.of_kind(msg.Withdraw, "wd-1") == [msg.Withdraw("wd-1", "blocked")]
    assert register.of_kind(msg.Hold, "wd-1")[-1] == msg.Hold("wd-1", "blocked")
    assert register.screens("wd-1")[-1] == lines_for(S.BLOCKED)
    # The register obeys: no handover, and the daemon agrees.
    assert not register.emulator.may_hand_over(outcome)
    assert not await register.emulator.hand_over(outcome)
    check = await register.emulator.handover_check("wd-1")
    assert (check.allowed, check.reason) == (False, "blocked")
    status = await register.emulator.status("wd-1")
    assert (status.state, status.handover) == ("blocked", False)
    # It keeps the lane: the withdrawn sale is still the lane's open sale.
    refused = await asyncio.wait_for(store.sale(1, 1000, "wd-2"), IO_TIMEOUT)
    assert (refused.outcome, refused.reason) == (msg.Outcome.REFUSED, "lane_busy")

    # A restart re-tells the withdrawal to a register that may have missed it.
    withdraws = len(register.of_kind(msg.Withdraw, "wd-1"))
    await store.stop_daemon()
    await store.start_daemon()
    await eventually("WITHDRAW again",
                     lambda: len(register.of_kind(msg.Withdraw, "wd-1")) > withdraws)


async def test_a_fraud_alert_after_an_unconfirmed_handover_takes_back_handover_yes(
    relayed_store: Store,
) -> None:
    # The register never confirmed the handover, so the sale closed as handover_unconfirmed
    # (the goods may or may not have left). A fraud alert then names its payment: a register
    # that lost its RESULT and asks STATUS must not be told the goods may leave.
    store = relayed_store
    register = store.registers[1]
    outcome = await approved(store, 1, 2500, "fu-1")
    await store.advance(daemon=HANDOVER_WAIT)
    await register.shows("fu-1", S.HANDOVER_UNCONFIRMED)
    assert (await register.emulator.status("fu-1")).handover is True
    async with httpx.AsyncClient(base_url=store.sim.base_url) as http:
        sent = await http.post(f"/_sim/payments/{outcome.payment_id}/fraud_alert")
    assert sent.json()["status_code"] == 200, sent.text
    await eventually("the fraud alert",
                     lambda: outcome.payment_id in store.engine_state.fraud_alerts)
    status = await register.emulator.status("fu-1")
    assert (status.state, status.handover) == ("handover_unconfirmed", False)
    check = await register.emulator.handover_check("fu-1")
    assert (check.allowed, check.reason) == (False, "handover_unconfirmed")


async def run_scripted(store: Store, register: Register,
                       sales: list[ScriptedSale]) -> list[object]:
    """Run the emulator's script mode on a lane, moving the cloud for each sale."""
    script = asyncio.create_task(run_script(register.emulator, sales, IO_TIMEOUT * 3))
    for sale in sales:
        assert sale.correlation_id is not None
        await eventually(f"{sale.correlation_id} to start",
                         lambda cid=sale.correlation_id: register.shown(cid, S.OPEN)  # type: ignore[misc]
                         or bool(register.of_kind(msg.Result, cid)) or script.done())
        await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    return list(await asyncio.wait_for(script, IO_TIMEOUT))


async def test_a_script_with_two_approved_sales_hands_over_both(store: Store) -> None:
    register = store.registers[1]
    sales = [ScriptedSale(2500, msg.Outcome.APPROVED, "sc-1"),
             ScriptedSale(3000, msg.Outcome.APPROVED, "sc-2")]
    results = await run_scripted(store, register, sales)
    assert [(r.matched, r.handed_over) for r in results] == [(True, True), (True, True)]  # type: ignore[attr-defined]
    await eventually("both handed over", lambda: [standing(store, c) for c in ("sc-1", "sc-2")]
                     == [S.HANDED_OVER, S.HANDED_OVER])
    assert not any(isinstance(m, msg.Result) and m.outcome is msg.Outcome.REFUSED
                   for m in register.received)


async def test_a_register_that_never_confirms_gets_its_lane_back_after_the_wait(
    store: Store,
) -> None:
    register = store.registers[1]
    [first] = await run_scripted(store, register, [
        ScriptedSale(2500, msg.Outcome.APPROVED, "nc-1", handover=False)])
    assert (first.matched, first.handed_over) == (True, False)  # type: ignore[attr-defined]
    assert standing(store, "nc-1") is S.APPROVED
    refused = await asyncio.wait_for(store.sale(1, 1000, "nc-2"), IO_TIMEOUT)
    assert (refused.outcome, refused.reason) == (msg.Outcome.REFUSED, "lane_busy")

    await store.advance(daemon=HANDOVER_WAIT)
    await register.shows("nc-1", S.HANDOVER_UNCONFIRMED)
    status = await register.emulator.status("nc-1")
    assert (status.state, status.handover) == ("handover_unconfirmed", True)
    [result] = register.of_kind(msg.Result, "nc-1")  # no second RESULT
    assert result.outcome is msg.Outcome.APPROVED
    await approved(store, 1, 1000, "nc-3")  # the lane is free again


async def test_status_after_handover_says_the_goods_already_left(store: Store) -> None:
    register = store.registers[1]
    outcome = await approved(store, 1, 2500, "ho-1")
    assert await register.emulator.hand_over(outcome)
    await eventually("handed over", lambda: standing(store, "ho-1") is S.HANDED_OVER)
    status = await register.emulator.status("ho-1")
    assert (status.state, status.handover) == ("handed_over", False)
    # A register recovering from STATUS takes it as approved, with nothing to hand over.
    recovered = outcome_from_status(status)
    assert recovered is not None
    assert recovered.outcome is msg.Outcome.APPROVED
    assert not register.emulator.may_hand_over(recovered)


@pytest.mark.parametrize("backend", ["payment-intent"])
async def test_a_create_whose_outcome_stays_unknown_is_escalated_to_the_register(
    store: Store,
) -> None:
    # The create reaches Mercado Pago but its answer is lost, and then no read succeeds:
    # the daemon cannot tell whether the customer is about to pay (the Orders backend
    # resends the create instead of reading, so it is exercised in tests/core only).
    register = store.registers[1]
    await script_next_intent(store, create_failure="5xx")
    async with httpx.AsyncClient(base_url=store.sim.base_url) as http:
        await http.post("/_sim/faults", json={"get_5xx": 100_000})
    sale = store.sale(1, 2500, "cu-1")
    await register.shows("cu-1", S.CREATE_UNKNOWN)
    for _ in range(RECONCILE_ROUNDS):
        assert not register.shown("cu-1", Notice.CREATE_UNRESOLVED)
        await eventually("the next reconciliation round", lambda: bool(store.clock.pending()))
        await store.advance(daemon=max(store.clock.pending()) - store.clock())
    await register.shows("cu-1", Notice.CREATE_UNRESOLVED)
    assert register.emulator.severity is msg.Severity.ERROR
    assert (await register.emulator.status("cu-1")).state == "create_unknown"
    assert len(store.sim_intents()) == 1  # nothing was sent twice

    # Mercado Pago answers again: the daemon finds the intent and the sale goes on.
    async with httpx.AsyncClient(base_url=store.sim.base_url) as http:
        await http.post("/_sim/faults", json={"get_5xx": 0})
    await store.advance(daemon=max(store.clock.pending()) - store.clock())
    await register.shows("cu-1", S.OPEN)
    await store.advance(cloud=SIM_SALE_SECONDS, daemon=POLL)
    assert (await asyncio.wait_for(sale, IO_TIMEOUT)).outcome is msg.Outcome.APPROVED


async def test_a_correlation_id_reused_after_the_retry_window_is_refused(store: Store) -> None:
    register = store.registers[1]
    outcome = await approved(store, 1, 2500, "re-1")
    assert await register.emulator.hand_over(outcome)
    await eventually("handed over", lambda: standing(store, "re-1") is S.HANDED_OVER)

    # Within the window a repeat is a retry: the same RESULT again, nothing new.
    again = await asyncio.wait_for(register.emulator.sale(2500, "re-1", within=IO_TIMEOUT),
                                   IO_TIMEOUT)
    assert (again.outcome, again.payment_id) == (msg.Outcome.APPROVED, outcome.payment_id)

    # Days later the same id and amount is a new purchase: refused, never the old RESULT.
    results = len(register.of_kind(msg.Result, "re-1"))
    await store.advance(daemon=RETRY_WINDOW + 1)
    for restarted in (False, True):
        if restarted:  # the journal remembers what the session's memory lost
            await store.stop_daemon()
            await store.start_daemon()
        with pytest.raises(DaemonRejected) as caught:
            await asyncio.wait_for(register.emulator.sale(2500, "re-1", within=IO_TIMEOUT),
                                   IO_TIMEOUT)
        assert caught.value.error.code is msg.ErrorCode.ID_REUSED
    assert len(register.of_kind(msg.Result, "re-1")) == results
    assert len(store.sim_intents()) == 1
    status = await register.emulator.status("re-1")
    assert status.state == "handed_over"  # the old sale still answers STATUS


async def test_a_fresh_hello_after_a_register_side_link_down_is_answered_at_once(
    store: Store,
) -> None:
    # The register's HELLO (SEQ 01 on a link it just restarted) reaches the daemon, but
    # every ACK is lost: the register declares the link down and starts again at SEQ 01,
    # which repeats the last number the daemon accepted.
    emulator = store.registers[1].emulator
    emulator.restart_link()
    emulator.drop_acks_received(3)
    before = emulator.hellos_sent
    reply = await emulator.hello(IO_TIMEOUT * 2)
    assert reply.lane == 1
    # One HELLO whose ACKs were lost, then the fresh one, answered without a retry.
    assert emulator.hellos_sent - before == 2
    status = await emulator.status("nobody")
    assert status.state == msg.UNKNOWN_STATE
