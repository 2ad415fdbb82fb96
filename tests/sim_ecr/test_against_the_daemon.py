"""The second register, written from the protocol page alone, against the real daemon.

The daemon runs in this event loop exactly as ``pointd run`` (the rig's in-process daemon),
opening lane 1's register as a serial port (a real pty behind a stable symlink) and dialling
lane 2's over TCP (``socket://``). The simulator runs at real speed with short terminal
steps. Each test is a passage of docs/register-protocol.md that the two independent readings
of the page, the daemon's and this register's, must agree on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pointd.rig import RigLane, StoreRig, StoreSpec
from pointd.sim.cloud.config import Delays
from pointd.sim.cloud.scenarios import Outcome, Scenario, ScenarioRule
from pointd.sim.ecr.lines import PtyCable, TcpCable
from pointd.sim.ecr.register import Refused, Register, Result

DEVICES = {1: "PAX_A910__ECR00000001", 2: "PAX_A910__ECR00000002"}
# The daemon's start, a sale and a restart take seconds on a loaded 2-core machine.
WITHIN = 60.0
FAST = Delays(take=0.05, read_card=0.05, authorise=0.05, close=0.05, settle=0.3)
# A held sale stays held this long: long enough to restart the daemon or pull a cable.
SLOW_SETTLE = Delays(take=0.05, read_card=0.05, authorise=0.05, close=0.05, settle=6.0)


@dataclass
class Store:
    rig: StoreRig
    registers: dict[int, Register]
    cables: dict[int, PtyCable | TcpCable]

    def script(self, amount: int, outcome: Outcome) -> None:
        self.rig.sim.world.scenarios.add(ScenarioRule(Scenario(outcome=outcome), amount=amount))


@contextlib.asynccontextmanager
async def running_store(tmp_path: Path, backend: str = "payment-intent",
                        delays: Delays = FAST) -> AsyncIterator[Store]:
    registers = {lane: Register(name=f"ecr-{lane}") for lane in DEVICES}
    pty = PtyCable(registers[1], tmp_path / "register-1")
    tcp = TcpCable(registers[2])
    pty.plug()
    await tcp.plug()
    cables: dict[int, PtyCable | TcpCable] = {1: pty, 2: tcp}
    spec = StoreSpec(
        store_id="ecr",
        lanes=tuple(RigLane(lane, DEVICES[lane], register=cables[lane].device_path)
                    for lane in DEVICES),
        backend=backend,
        relay="none",
        sim={"delays": delays, "time_scale": 1.0},
        daemon_config={"timers": {"poll_fallback_after": 1.0, "verify_initial_backoff": 1.0,
                                  "verify_max_backoff": 1.0}},
    )
    try:
        async with StoreRig(tmp_path, spec) as rig:
            yield Store(rig, registers, cables)
    finally:
        for cable in cables.values():
            await cable.close()


async def held_on_every_lane(store: Store, prefix: str,
                             base: int) -> list[asyncio.Future[Result]]:
    """A sale on each lane, scripted to wait for confirmation: in progress once all are held."""
    for register in store.registers.values():
        await register.hello(WITHIN)
    for lane in DEVICES:
        store.script(base + lane, Outcome.CONFIRMATION_APPROVED)
    sales = [asyncio.ensure_future(register.sale(f"{prefix}{lane}", base + lane, within=WITHIN))
             for lane, register in store.registers.items()]
    for lane, register in store.registers.items():
        await register.until(lambda r=register, c=f"{prefix}{lane}": c in r.held, WITHIN)
    return sales


@pytest.mark.parametrize("backend", ["payment-intent", "orders"])
async def test_hello_sale_handover_on_a_serial_and_a_lan_register(
    tmp_path: Path, backend: str
) -> None:
    async with running_store(tmp_path, backend) as store:
        for lane, register in store.registers.items():
            reply = await register.hello(WITHIN)
            assert reply.get("version") == "1.0"
            assert register.lane == lane
        for lane, register in store.registers.items():
            cid = f"E{lane}-1"
            result = await register.sale(cid, 2500 + lane, within=WITHIN)
            assert result.outcome == "approved"
            assert register.may_hand_over(cid)
            assert (await register.handover_check(cid)).allowed
            await register.handover_done(cid)
            status = await register.status(cid)
            assert (status.state, status.handover) == ("handed_over", False)


async def test_declined_held_then_released_and_an_unknown_sale(tmp_path: Path) -> None:
    async with running_store(tmp_path) as store:
        register = store.registers[1]
        await register.hello(WITHIN)
        store.script(3001, Outcome.FINISHED_REJECTED)
        assert (await register.sale("D-1", 3001, within=WITHIN)).outcome == "declined"
        store.script(3002, Outcome.CONFIRMATION_APPROVED)
        result = await register.sale("H-1", 3002, within=WITHIN)
        assert result.outcome == "approved"
        assert "H-1" not in register.held
        status = await register.status("NEVER-SENT")
        assert status.state == "unknown"


async def test_a_resent_sale_is_the_same_sale_and_another_amount_is_id_reused(
    tmp_path: Path,
) -> None:
    async with running_store(tmp_path) as store:
        register = store.registers[2]
        await register.hello(WITHIN)
        first = await register.sale("R-1", 4100, within=WITHIN)
        again = await register.sale("R-1", 4100, within=WITHIN)
        assert first.outcome == again.outcome == "approved"
        assert len(store.rig.sim.world.intents) == 1
        with pytest.raises(Refused) as refused:
            await register.sale("R-1", 4200, within=WITHIN)
        assert refused.value.code == "id_reused"


async def test_a_sale_rides_out_a_daemon_restart(tmp_path: Path) -> None:
    async with running_store(tmp_path, delays=SLOW_SETTLE) as store:
        sales = await held_on_every_lane(store, "X", 5000)
        assert await store.rig.stop_daemon() == 0
        await store.rig.start_daemon()
        results = await asyncio.gather(*sales)
        assert [r.outcome for r in results] == ["approved", "approved"]
        assert len(store.rig.sim.world.intents) == 2


async def test_line_noise_a_corrupt_frame_and_lost_acks_cost_nothing(tmp_path: Path) -> None:
    async with running_store(tmp_path) as store:
        register = store.registers[1]
        await register.hello(WITHIN)
        register.inject_noise(b"\x00\x55\x03garbage\x10")
        register.corrupt_next_frame()
        register.drop_next_ack_sent()
        register.drop_next_ack_received()
        result = await register.sale("N-1", 6100, within=WITHIN)
        assert result.outcome == "approved"
        assert set(register.fired) == {"serial_noise", "serial_corrupt_frame",
                                       "serial_lost_ack_sent", "serial_lost_ack_received"}
        assert len(store.rig.sim.world.intents) == 1


async def test_an_unplugged_cable_comes_back_and_the_sale_still_ends(tmp_path: Path) -> None:
    async with running_store(tmp_path, delays=SLOW_SETTLE) as store:
        sales = await held_on_every_lane(store, "U", 7000)
        pty, tcp = store.cables[1], store.cables[2]
        assert isinstance(pty, PtyCable)
        assert isinstance(tcp, TcpCable)
        assert pty.unplug()
        assert await tcp.unplug()
        await asyncio.sleep(0.5)
        pty.plug()
        await tcp.plug()
        results = await asyncio.gather(*sales)
        assert [r.outcome for r in results] == ["approved", "approved"]


async def test_a_sale_and_its_cancel_sent_to_a_restarted_daemon_are_both_sent_again(
    tmp_path: Path,
) -> None:
    # A serial register does not notice the daemon's restart: its SALE and the cashier's
    # CANCEL, sent at once, are each answered hello_required. Both must go again after the
    # HELLO; when the register attributed both ERRORs to the CANCEL, the SALE never went
    # again and the sale had no outcome (simulation seed 3148).
    async with running_store(tmp_path, delays=SLOW_SETTLE) as store:
        register = store.registers[1]
        await register.hello(WITHIN)
        assert await store.rig.stop_daemon() == 0
        await store.rig.start_daemon()
        store.script(8001, Outcome.CONFIRMATION_APPROVED)
        sale = asyncio.ensure_future(register.sale("K-1", 8001, within=WITHIN))
        cancel = asyncio.ensure_future(register.cancel("K-1", within=WITHIN))
        result, _ = await asyncio.gather(sale, cancel)
        assert [e.get("code") for e in register.errors][:2] == ["hello_required"] * 2
        assert result.outcome in {"canceled", "approved"}
        assert len(store.rig.sim.world.intents) == 1
