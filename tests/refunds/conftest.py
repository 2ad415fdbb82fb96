"""A real engine and journal against the cloud simulator over loopback, for either backend."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from pointd.app.engine import Engine
from pointd.cloud.backends import build_cloud_port
from pointd.cloud.port import CloudPort
from pointd.cloud.sites import Site
from pointd.core.effects import TellRegister
from pointd.core.events import HandoverConfirmed, SaleRequested
from pointd.core.machine import CoreState
from pointd.core.policy import Policy
from pointd.core.refunds import REFUND_POLL_INTERVAL, Refund, TellRefund
from pointd.core.states import SaleState
from pointd.journal.store import Journal
from pointd.sim.cloud import CloudSimulator, SimConfig, SimDevice
from tests.support.clock import ManualClock

TOKEN = "TEST-refund-tests-token-2b7e"
STORE = "refund-shop"
DEVICE = "PAX_A910__SMARTPOS7700000001"
COLLECTOR = 123456789
START = 1_790_000_000.0
LANE = 1
POLL = 1.0
POLICY = Policy(currency="ARS", collector_id=str(COLLECTOR), min_amount_cents=100,
                max_amount_cents=10_000_000, poll_fallback_after=POLL,
                verify_initial_backoff=POLL, verify_max_backoff=POLL)
# Simulated seconds that finish any intent or refund intent (take + read + authorise).
SIM_SETTLE = 30.0
# Bounds on waiting for real I/O (loopback HTTP, SQLite fsync) on a shared 2-core machine.
IO_TIMEOUT = 10.0
LOOK_INTERVAL = 0.005
BACKENDS = ["payment-intent", "orders"]
# Log levels that mean a bug in an effect or handler (the engine only logs those).
FAILURE_LEVELS = frozenset({"error", "critical", "exception"})


async def eventually(what: str, predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds; fail naming ``what`` after IO_TIMEOUT."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + IO_TIMEOUT
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(LOOK_INTERVAL)


@dataclass
class Screens:
    """The engine's register output, recorded."""

    sales: list[TellRegister] = field(default_factory=list)
    refunds: list[TellRefund] = field(default_factory=list)

    async def tell(self, effect: TellRegister) -> None:
        self.sales.append(effect)

    async def tell_refund(self, effect: TellRefund) -> None:
        self.refunds.append(effect)


@dataclass
class Rig:
    """One backend's engine, its journal and the simulator, with time driven by hand."""

    backend: str
    engine: Engine
    journal: Journal
    cloud: CloudPort
    sim: CloudSimulator
    clock: ManualClock
    screens: Screens
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def paid_sale(self, cents: int = 1500) -> str:
        """A sale taken, verified approved and handed over; returns its sale id."""
        sale_id = f"SALE{next(self.ids):06d}"
        await self.engine.submit(SaleRequested(sale_id, LANE, f"c-{sale_id}", cents, DEVICE,
                                               None))
        await eventually("the intent", lambda: self.state_of(sale_id) is SaleState.OPEN)
        await self.sim.advance(SIM_SETTLE)
        self.clock.advance(POLL)
        await eventually("approval", lambda: self.state_of(sale_id) is SaleState.APPROVED)
        await self.engine.submit(HandoverConfirmed(sale_id))
        return sale_id

    def state_of(self, sale_id: str) -> SaleState:
        return self.engine.state.sales[sale_id].state

    def refund(self, refund_id: str) -> Refund:
        return self.engine.refund_book.refunds[refund_id]

    async def settle(self, refund_id: str) -> Refund:
        """Let the terminal finish a refund intent and the engine poll it until final."""
        await eventually("the refund to be sent", lambda: self.refund(refund_id).sends > 0
                         and self.refund(refund_id).status.value != "sending")
        for _ in range(5):
            if self.refund(refund_id).is_final:
                break
            await self.sim.advance(SIM_SETTLE)
            await self._poll_once()
        refund = self.refund(refund_id)
        # The register hears a refund's standing from the engine's per-lane queue, after
        # the step that decided it: wait for that, not only for the book.
        await eventually("the register told the refund's standing", lambda: any(
            told.refund_id == refund_id and told.status is refund.status
            for told in self.screens.refunds))
        return refund

    async def _poll_once(self) -> None:
        # The poll timer's event is journaled at once, its GET's answer later (the client
        # paces GETs of one refund intent in real time): wait for the answer itself.
        answers = self._observations()
        self.clock.advance(REFUND_POLL_INTERVAL)
        await eventually("the poll's answer", lambda: self._observations() > answers)

    def _observations(self) -> int:
        return sum(1 for _ in self.journal.replay_kinds(["RefundObserved"]))

    def payment_of(self, sale_id: str) -> Any:
        payment_id = self.engine.state.sales[sale_id].approved_payment_id
        assert payment_id is not None
        return self.sim.world.payments[int(payment_id)]

    def refunded_cents(self, sale_id: str) -> int:
        return self.sim.world.refunded_cents(self.payment_of(sale_id))


def sim_config() -> SimConfig:
    return SimConfig(access_token=TOKEN, webhook_secret="refund-tests-webhook-secret",
                     devices=(SimDevice(id=DEVICE, store_id="1000001", pos_id=1),),
                     time_scale=0.0, start_time=START, collector_id=COLLECTOR)


@pytest.fixture(autouse=True)
def quiet_logs() -> Any:
    with structlog.testing.capture_logs() as logs:
        yield logs


@pytest.fixture(params=BACKENDS)
async def rig(
    request: pytest.FixtureRequest, tmp_path: Path, quiet_logs: list[dict[str, Any]]
) -> AsyncIterator[Rig]:
    async with CloudSimulator(sim_config()) as sim:
        cloud, close = build_cloud_port(request.param, sim.base_url, TOKEN, Site.MLA)
        journal = Journal.open(tmp_path / "journal.sqlite3")
        clock = ManualClock(START)
        screens = Screens()
        ids = itertools.count(1)
        engine = Engine(journal=journal, state=CoreState.empty(STORE), policy=POLICY,
                        cloud=cloud, register=screens, wall_clock=clock, timers=clock,
                        new_refund_id=lambda: f"RF{next(ids):04d}")
        rig = Rig(request.param, engine, journal, cloud, sim, clock, screens)
        try:
            yield rig
        finally:
            await rig.engine.stop()  # the test's own engine, if it restarted one
            await close()
            journal.close()
        failures = [e for e in quiet_logs if e.get("log_level") in FAILURE_LEVELS]
        assert failures == [], "the engine logged errors"
