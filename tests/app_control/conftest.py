"""A real engine and journal behind a real control socket, with fake cloud and providers."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog

from pointd.app.control_handlers import DaemonHandlers, EventSink, journal_audit
from pointd.app.engine import Alert, Engine
from pointd.cloud.models import Payment
from pointd.control.client import ControlClient
from pointd.control.methods import register_daemon_methods
from pointd.control.server import ControlServer
from pointd.core.effects import TellRegister
from pointd.core.events import Event, IntentObserved, ObservationSource, SaleRequested
from pointd.core.machine import CoreState, Step
from pointd.core.policy import Policy
from pointd.core.states import SaleState
from pointd.journal.store import Journal
from tests.support.cloud import FakeCloud

STORE = "loja-centro"
COLLECTOR = "987654321"
T0 = 1_795_000_000.0
# Every timer far beyond a test's life: nothing fires by itself while a test runs.
FAR = 3600.0
POLICY = Policy(
    currency="BRL",
    collector_id=COLLECTOR,
    min_amount_cents=100,
    max_amount_cents=7_000_000,
    poll_fallback_after=FAR,
    verify_initial_backoff=FAR,
    verify_max_backoff=FAR,
    confirmation_escalate_after=2 * FAR,
    abandon_after=2 * FAR,
    reconcile_initial_backoff=FAR,
    reconcile_max_backoff=FAR,
    create_retry_after=FAR,
)
ACCESS_TOKEN = "APP_USR-1234567890123456-112203-0a1b2c3d4e5f60718293a4b5c6d7e8f9-987654321"
STORE_TOKEN = "st-7c1e0b9a4f3d2e8b6a5c"
# The server's monotonic clock jumps this far on every reading, so the rate limits of
# verify, reconcile and bundle (tested with the server) never refuse a call here.
RATE_LIMIT_STEP = 60
# Waiting on real socket and task events; generous so a loaded machine never flakes.
IO_TIMEOUT = 10.0


def reference(sale_id: str, lane: int, attempt: int = 1) -> str:
    return f"pd1_{STORE}_{lane}_{sale_id}_{attempt}"


def payment(payment_id: str, status: str, cents: int, ref: str | None) -> Payment:
    return Payment(
        id=payment_id,
        status=status,
        status_detail="accredited" if status == "approved" else None,
        transaction_amount=Decimal(cents) / 100,
        amount_cents=cents,
        currency_id="BRL",
        collector_id=COLLECTOR,
        external_reference=ref,
        live_mode=False,
        last_four_digits="4242",
        refunds=(),
    )


class RecordingRegister:
    def __init__(self) -> None:
        self.told: list[TellRegister] = []

    async def tell(self, effect: TellRegister) -> None:
        self.told.append(effect)


@dataclass
class FakeTerminals:
    """Lane terminal rows as LaneTerminals.snapshot() shapes them."""

    conditions: dict[int, str] = field(default_factory=lambda: {1: "ready", 2: "ready"})
    cloud_reachable: bool = True

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "lane": lane,
                "terminal": f"PAX_A910__SMARTPOS{lane}",
                "pinned": True,
                "presence": "attached",
                "usb": {"serial": f"SMARTPOS{lane}", "bus_path": f"1-{lane}"},
                "mode": "PDV",
                "problem": None,
                "condition": condition,
                "cloud_reachable": self.cloud_reachable,
                "catalog_stale": False,
                "catalog_error": None,
                "pdv_switch": None,
            }
            for lane, condition in sorted(self.conditions.items())
        ]


@dataclass
class FakeRelay:
    status: dict[str, Any] = field(default_factory=lambda: {
        "state": "connected", "since": T0 - 60, "last_event_age": 3.0, "cursor": 42})

    def relay_status(self) -> dict[str, Any]:
        return dict(self.status)


@dataclass
class FakeLinks:
    connected: dict[int, bool] = field(default_factory=lambda: {1: True, 2: True})

    def link_status(self) -> list[dict[str, Any]]:
        return [{"lane": lane, "port": f"/dev/ttyUSB{lane}", "connected": up, "since": T0 - 30}
                for lane, up in sorted(self.connected.items())]


@dataclass
class EventsTap:
    """The handlers' event sink: the control server, until a test swaps in a broken one."""

    sink: EventSink

    def publish(self, topic: str, data: Any) -> int:
        return self.sink.publish(topic, data)

    def connection_report(self) -> list[dict[str, Any]]:
        return self.sink.connection_report()


@dataclass
class Rig:
    """Everything a test drives: the engine, its parts and a connected control client."""

    engine: Engine
    journal: Journal
    cloud: FakeCloud
    terminals: FakeTerminals
    relay: FakeRelay
    links: FakeLinks
    handlers: DaemonHandlers
    server: ControlServer
    client: ControlClient
    logs: list[str]
    events: EventsTap

    async def until(self, predicate: Callable[[], bool]) -> None:
        async def poll() -> None:
            # The awaited facts come from several tasks (engine effects, the fake cloud):
            # yielding to the loop until they hold is simpler than an event for each.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0)

        await asyncio.wait_for(poll(), IO_TIMEOUT)

    def state_of(self, sale_id: str) -> SaleState:
        return self.engine.state.sales[sale_id].state

    async def open_sale(self, sale_id: str, lane: int, cents: int) -> str:
        """Request a sale and wait until its intent exists (OPEN); return the intent id."""
        await self.engine.submit(SaleRequested(sale_id, lane, f"c-{sale_id}", cents,
                                               f"PAX_A910__SMARTPOS{lane}", None))
        await self.until(lambda: self.state_of(sale_id) is SaleState.OPEN)
        intent_id = self.engine.state.sales[sale_id].intent_id
        assert intent_id is not None
        return intent_id

    async def held_sale(self, sale_id: str, lane: int, cents: int, payment_id: str) -> None:
        """A sale whose intent ended CONFIRMATION_REQUIRED and whose payment is pending."""
        intent_id = await self.open_sale(sale_id, lane, cents)
        self.cloud.payments[payment_id] = payment(payment_id, "pending", cents,
                                                  reference(sale_id, lane))
        fetched = len(self.cloud.called("get_payment"))
        await self.engine.submit(IntentObserved(intent_id, "CONFIRMATION_REQUIRED", payment_id,
                                                None, ObservationSource.POLL,
                                                reference(sale_id, lane)))
        await self.until(lambda: len(self.cloud.called("get_payment")) > fetched)
        await self.until(lambda: self.engine.journal.timeline(sale_id)[-1].kind
                         == "PaymentVerified")
        assert self.state_of(sale_id) is SaleState.HELD


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    with structlog.testing.capture_logs():
        yield


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes, too short for pytest's tmp_path.
    path = Path(tempfile.mkdtemp(prefix="pactl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def rig(tmp_path: Path, sock_dir: Path) -> AsyncIterator[Rig]:
    journal = Journal.open(tmp_path / "journal.db")
    journal.record_policy(POLICY)
    cloud = FakeCloud()
    logs: list[str] = []
    holder: dict[str, DaemonHandlers] = {}

    # The handlers need the engine and the engine needs their callbacks: bind them late.
    def on_alert(alert: Alert) -> None:
        holder["handlers"].add_alert(alert)

    def on_step(event: Event, result: Step) -> None:
        holder["handlers"].engine_stepped(event, result)

    engine = Engine(
        journal=journal,
        state=CoreState.empty(STORE),
        policy=POLICY,
        cloud=cloud,
        register=RecordingRegister(),
        wall_clock=lambda: T0,
        on_alert=on_alert,
        on_step=on_step,
    )
    terminals, relay, links = FakeTerminals(), FakeRelay(), FakeLinks()
    ticks = itertools.count(step=RATE_LIMIT_STEP)
    server = ControlServer(sock_dir / "control.sock",
                           record_audit=journal_audit(journal, lambda: T0),
                           monotonic=lambda: float(next(ticks)))
    events = EventsTap(server)
    handlers = DaemonHandlers(
        engine=engine,
        journal=journal,
        cloud=cloud,
        terminals=terminals,
        relay=relay,
        links=links,
        events=events,
        config={"store": {"id": STORE}, "cloud": {"access_token_file": "/etc/pointd/token"}},
        secrets=[ACCESS_TOKEN, STORE_TOKEN],
        clock=lambda: T0,
        started_at=T0 - 100,
        recent_logs=lambda: list(logs),
    )
    holder["handlers"] = handlers
    handlers.ready = True
    register_daemon_methods(server, handlers)
    await server.start()
    client = await ControlClient.connect(server.path)
    try:
        yield Rig(engine, journal, cloud, terminals, relay, links, handlers, server, client,
                  logs, events)
    finally:
        await client.close()
        # Let the server read the client's EOF, so closing it cancels no live reader.
        for _ in range(5):
            await asyncio.sleep(0)
        await server.close()
        await engine.stop()
        journal.close()
