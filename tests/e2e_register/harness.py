"""One store on one event loop: register emulators on real ptys, the daemon, the cloud simulator.

Time is driven by hand on both sides of the daemon. The cloud simulator runs frozen
(``time_scale=0``) and moves with ``sim.advance``; the daemon's wall clock and the core's
timers run on a ``ManualClock`` that moves with ``clock.advance``. Everything else is real:
the daemon opens the emulator's pty through pyserial, speaks HTTP to the simulator on
loopback, journals in SQLite under tmp_path and watches a simulated USB bus. Waits in the
tests are bounded waits for those real I/O exchanges to finish, never sleeps for timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from pointd.app.runtime import Daemon
from pointd.config import DaemonConfig, Secret, config_from_mapping
from pointd.core.states import LaneCondition
from pointd.register import messages as msg
from pointd.register.prompts import Subject, prompt_for
from pointd.relay.cli import open_storage
from pointd.relay.service import RelayService
from pointd.relay.settings import RelaySettings, StoreCredential
from pointd.sim.cloud import CloudSimulator, SimConfig, SimDevice
from pointd.sim.cloud.world import SimIntent
from pointd.sim.register.emulator import RegisterEmulator, SaleOutcome
from pointd.sim.usb.bus import FakeUsbBus

TOKEN = "TEST-e2e-register-token-5c21"
RELAY_STORE_TOKEN = "e2e-register-relay-store-token"
WEBHOOK_SECRET = "e2e-register-webhook-secret"
STORE_ID = "e2e-store"
COLLECTOR_ID = 123456789
LANGUAGE = "en"
# The simulated terminals and the USB serial each one reports (the id ends with it).
DEVICES = {1: "PAX_A910__SMARTPOS1234345545", 2: "GERTEC_MP35P__8701016695109435"}
USB_MODELS = {1: ("pax-a910", "1234345545"), 2: ("gertec-mp35p", "8701016695109435")}
USB_FIXTURES = Path(__file__).resolve().parents[2] / "hardware-fixtures" / "usb"
# Every outcome test runs once per Mercado Pago backend (``cloud.backend``).
BACKENDS = ("payment-intent", "orders")
# Both the daemon's clock and the simulator's wall clock start here, so they agree and
# every run sees the same dates.
START_WALL = 1_790_000_000.0
# Log levels that mean the daemon hit a bug (an effect or handler that raised); any of
# them fails the test, because the daemon itself only logs them and carries on.
FAILURE_LEVELS = frozenset({"error", "critical", "exception"})

# Daemon timers (seconds): the smallest the configuration accepts, driven by ManualClock.
POLL = 1.0
VERIFY = 1.0
ESCALATE = 10.0
# Simulated seconds from create to the end of an approved sale (take + read + authorise +
# close, the simulator's default delays).
SIM_SALE_SECONDS = 8.0
SIM_SETTLE_SECONDS = 30.0
SIM_ABANDON_SECONDS = 900.0

# Bounds on waiting for real I/O (pty frames, loopback HTTP, SQLite fsync); generous
# because two cores are shared with other test runs.
IO_TIMEOUT = 10.0
# How often a waiter looks again at state that has no event of its own.
LOOK_INTERVAL = 0.005


class ManualClock:
    """The daemon's wall clock and core timer service; only ``advance`` moves it."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _ManualTimer:
        """Run ``callback`` once the clock is advanced to ``when`` (at once if already due)."""
        timer = _ManualTimer(callback)
        if when <= self._now:
            asyncio.get_running_loop().call_soon(timer.fire)
        else:
            heapq.heappush(self._heap, (when, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> int:
        """Move forward and fire, in due order, every timer that fell due; return how many."""
        self._now += seconds
        fired = 0
        while self._heap and self._heap[0][0] <= self._now:
            _when, _order, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.fire()
                fired += 1
        return fired

    def pending(self) -> list[float]:
        """Due times of the armed timers, soonest first."""
        return sorted(when for when, _order, timer in self._heap if not timer.cancelled)


@dataclass
class _ManualTimer:
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback()


async def eventually(what: str, predicate: Callable[[], bool], within: float = IO_TIMEOUT) -> None:
    """Wait until ``predicate()`` holds; fail naming ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(LOOK_INTERVAL)


def lines_for(subject: Subject) -> tuple[str, ...]:
    """What the register's screen shows for a state, refusal, notice or lane condition."""
    return prompt_for(subject, LANGUAGE).lines


@dataclass
class Register:
    """One lane's emulated register and everything the daemon pushed to it."""

    lane: int
    emulator: RegisterEmulator
    displays: list[msg.Display] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.emulator.on_display(self.displays.append)

    @property
    def received(self) -> list[msg.Message]:
        """Every message the daemon sent, in order."""
        return self.emulator.received

    def screens(self, correlation_id: str) -> list[tuple[str, ...]]:
        """The screens shown for one sale, in order."""
        return [d.lines for d in self.displays if d.correlation_id == correlation_id]

    def shown(self, correlation_id: str, subject: Subject) -> bool:
        """Whether the screen for ``subject`` was shown for this sale."""
        return lines_for(subject) in self.screens(correlation_id)

    async def shows(self, correlation_id: str, subject: Subject) -> None:
        """Wait until the register showed ``subject`` for this sale."""
        await eventually(
            f"lane {self.lane} to show {subject!s} for {correlation_id}",
            lambda: self.shown(correlation_id, subject),
        )

    def of_kind(self, kind: type[Any], correlation_id: str) -> list[Any]:
        """The messages of one type the daemon sent about one sale."""
        return [
            m
            for m in self.received
            if isinstance(m, kind) and getattr(m, "correlation_id", None) == correlation_id
        ]


@dataclass
class Store:
    """A running store: simulator, clock, USB bus, registers and (re)startable daemon."""

    tmp: Path
    sim: CloudSimulator
    clock: ManualClock
    bus: FakeUsbBus
    registers: dict[int, Register]
    config: DaemonConfig
    daemon: Daemon | None = None
    _run: asyncio.Task[int] | None = None
    _sales: list[asyncio.Task[SaleOutcome]] = field(default_factory=list)

    @property
    def engine_state(self) -> Any:
        """The daemon's current core state."""
        assert self.daemon is not None
        assert self.daemon.engine is not None
        return self.daemon.engine.state

    async def start_daemon(self) -> Daemon:
        """Start a daemon on this store's configuration and wait until it is ready."""
        assert self._run is None or self._run.done(), "a daemon is already running"
        daemon = Daemon(
            self.config,
            usb_backend=self.bus.backend,
            hotplug=self.bus.hotplug(),
            wall_clock=self.clock,
            timers=self.clock,
        )
        self.daemon = daemon
        self._run = asyncio.create_task(daemon.run(), name="daemon")
        ready = asyncio.ensure_future(daemon.ready.wait())
        await asyncio.wait(
            {ready, self._run}, timeout=IO_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        ready.cancel()
        if self._run.done():
            self._run.result()
            raise AssertionError("the daemon stopped during start-up")
        assert daemon.ready.is_set(), "the daemon did not become ready"
        lanes = daemon.lanes
        assert lanes is not None
        await eventually(
            "the device list",
            lambda: (
                lanes.cloud_reachable
                and all(lanes.condition(n) is LaneCondition.READY for n in self.registers)
            ),
        )
        for register in self.registers.values():
            await register.emulator.hello(IO_TIMEOUT)
        return daemon

    async def stop_daemon(self) -> int:
        """Ask the daemon to stop and wait for run() to return its exit code."""
        assert self.daemon is not None
        assert self._run is not None
        self.daemon.request_stop()
        return await asyncio.wait_for(self._run, IO_TIMEOUT)

    def sale(self, lane: int, amount_cents: int, correlation_id: str) -> asyncio.Task[SaleOutcome]:
        """Start a SALE from a lane's register; the task ends with its RESULT."""
        emulator = self.registers[lane].emulator
        task = asyncio.create_task(
            emulator.sale(amount_cents, correlation_id, within=IO_TIMEOUT * 3),
            name=f"sale-{correlation_id}",
        )
        self._sales.append(task)
        return task

    async def advance(self, *, cloud: float = 0.0, daemon: float = 0.0) -> None:
        """Move the simulated cloud, then the daemon's clock (firing its due timers)."""
        if cloud:
            await self.sim.advance(cloud)
        if daemon:
            self.clock.advance(daemon)

    def sim_intents(self) -> list[SimIntent]:
        """Every intent the simulated account ever received, oldest first."""
        return sorted(self.sim.world.intents.values(), key=lambda intent: intent.created_at)

    async def close(self) -> None:
        """Stop every part, daemon first."""
        for task in self._sales:
            task.cancel()
        for task in self._sales:
            with contextlib.suppress(BaseException):
                await task
        if self._run is not None and not self._run.done():
            assert self.daemon is not None
            self.daemon.request_stop()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._run, IO_TIMEOUT)
        for register in self.registers.values():
            await register.emulator.close()


def daemon_config(
    tmp: Path,
    sim_url: str,
    registers: dict[int, str],
    backend: str = "payment-intent",
    relay_url: str | None = None,
) -> DaemonConfig:
    """The daemon's configuration for this store: lanes pinned, polling, a relay if given.

    ``backend`` is ``cloud.backend``: the simulator serves both APIs on one base URL.
    """
    token_file = tmp / "mp_access_token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    os.chmod(token_file, 0o600)
    document: dict[str, Any] = {
        "store": {
            "id": STORE_ID,
            "site": "MLA",
            "collector_id": COLLECTOR_ID,
            "language": LANGUAGE,
        },
        "cloud": {
            "base_url": sim_url,
            "backend": backend,
            "access_token_file": str(token_file),
            "read_timeout": 5.0,
        },
        "journal": {"path": str(tmp / "journal.sqlite3")},
        "control": {"socket": str(tmp / "control.sock")},
        "timers": {
            "poll_fallback_after": POLL,
            "verify_initial_backoff": VERIFY,
            "verify_max_backoff": VERIFY,
            "confirmation_escalate_after": ESCALATE,
        },
        "logging": {"level": "warning"},
        "lanes": [
            {"number": lane, "register": path, "terminal": DEVICES[lane]}
            for lane, path in registers.items()
        ],
    }
    if relay_url is not None:
        relay_token_file = tmp / "relay_store_token"
        relay_token_file.write_text(RELAY_STORE_TOKEN + "\n", encoding="utf-8")
        os.chmod(relay_token_file, 0o600)
        document["relay"] = {"url": relay_url, "store_token_file": str(relay_token_file)}
    return config_from_mapping(document, DaemonConfig, source="e2e")


@contextlib.asynccontextmanager
async def serve_relay(tmp: Path, clock: Callable[[], float]) -> AsyncIterator[str]:
    """A pointd relay for this store on loopback (SQLite under tmp); yield its base URL.

    ``clock`` is the relay's wall clock: the simulator's, so that the ``ts`` it signs
    webhooks with is within the relay's window.
    """
    settings = RelaySettings(
        host="127.0.0.1",
        port=0,
        webhook_secret=Secret(WEBHOOK_SECRET),
        sqlite_path=str(tmp / "relay.sqlite3"),
        batch_wait=0.0,
        stores=(
            StoreCredential(STORE_ID, hashlib.sha256(RELAY_STORE_TOKEN.encode()).hexdigest()),
        ),
    )
    service = RelayService(settings, open_storage(settings), clock=clock)
    config = uvicorn.Config(
        service.app, host="127.0.0.1", port=0, lifespan="on", log_level="error", access_log=False
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    await eventually("the relay to listen", lambda: server.started or serving.done())
    if serving.done():
        serving.result()
        raise AssertionError("the relay stopped during start-up")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        # The daemon is gone by now, but its last long-poll may still be parked on the
        # server side: force the exit instead of waiting out the poll.
        server.should_exit = True
        server.force_exit = True
        await asyncio.wait_for(serving, IO_TIMEOUT)


def sim_config(webhook_url: str | None = None) -> SimConfig:
    """The simulated account: one PDV terminal per lane, time frozen."""
    return SimConfig(
        access_token=TOKEN,
        webhook_secret=WEBHOOK_SECRET,
        devices=tuple(
            SimDevice(id=device, store_id="1000001", pos_id=lane, external_pos_id=f"LANE{lane}")
            for lane, device in DEVICES.items()
        ),
        time_scale=0.0,
        start_time=START_WALL,
        webhook_url=webhook_url,
        collector_id=COLLECTOR_ID,
    )


async def script_next_intent(store: Store, **scenario: object) -> None:
    """Script the next intent's fate through the simulator's control API (docs/simulator.md)."""
    async with httpx.AsyncClient(base_url=store.sim.base_url) as http:
        answer = await http.post("/_sim/scenarios", json={"next": True, **scenario})
    assert answer.status_code == 201, answer.text


async def sim_record(store: Store) -> dict[str, Any]:
    """Everything the simulated account ever received (``GET /_sim/record``)."""
    async with httpx.AsyncClient(base_url=store.sim.base_url) as http:
        answer = await http.get("/_sim/record")
    assert answer.status_code == 200, answer.text
    record: dict[str, Any] = answer.json()
    return record
