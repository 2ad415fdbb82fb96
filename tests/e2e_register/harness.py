"""One store on one event loop, started by the rig: register emulators on real ptys, the daemon,
the cloud simulator (``pointd.rig.StoreRig`` with an in-process daemon).

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
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pointd.app.ports import Ports
from pointd.app.runtime import Parts
from pointd.cloud.sites import Site
from pointd.config import DaemonConfig
from pointd.core.states import LaneCondition
from pointd.register import messages as msg
from pointd.register.prompts import Subject, prompt_for
from pointd.rig import RigLane, RigSecrets, StoreRig, StoreSpec
from pointd.sim.cloud import CloudSimulator
from pointd.sim.cloud.world import SimIntent
from pointd.sim.register.emulator import RegisterEmulator, SaleOutcome
from pointd.sim.usb.bus import FakeUsbBus
from tests.support.clock import ManualClock

TOKEN = "TEST-e2e-register-token-5c21"
RELAY_STORE_TOKEN = "e2e-register-relay-store-token"
WEBHOOK_SECRET = "e2e-register-webhook-secret"
STORE_ID = "e2e-store"
COLLECTOR_ID = 123456789
LANGUAGE = "en"
# The simulated terminals and the USB serial each one reports (the id ends with it).
DEVICES = {1: "PAX_A910__SMARTPOS1234345545", 2: "GERTEC_MP35P__8701016695109435"}
USB_MODELS = {1: ("pax-a910", "1234345545"), 2: ("gertec-mp35p", "8701016695109435")}
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
    """A running store on the rig: simulator, clock, USB bus, registers, (re)startable daemon."""

    rig: StoreRig
    clock: ManualClock
    registers: dict[int, Register]
    _sales: list[asyncio.Task[SaleOutcome]] = field(default_factory=list)

    @property
    def tmp(self) -> Path:
        """The store's state directory."""
        return self.rig.state_dir

    @property
    def sim(self) -> CloudSimulator:
        """The cloud simulator."""
        return self.rig.sim

    @property
    def bus(self) -> FakeUsbBus:
        """The simulated USB bus the terminals are plugged into."""
        assert self.rig.bus is not None
        return self.rig.bus

    @property
    def daemon(self) -> Parts:
        """The running daemon's parts (its engine, lanes, alerts)."""
        return self.rig.daemon.parts

    @property
    def config(self) -> DaemonConfig:
        """The daemon's configuration."""
        return self.daemon.config

    @property
    def engine_state(self) -> Any:
        """The daemon's current core state."""
        return self.daemon.engine.state

    async def start_daemon(self) -> Parts:
        """Start a daemon on this store's configuration; return once every lane can sell."""
        await self.rig.start_daemon()
        parts = self.daemon
        lanes = parts.lanes
        await eventually(
            "the device list",
            lambda: (
                lanes.cloud_reachable
                and all(lanes.condition(n) is LaneCondition.READY for n in self.registers)
            ),
        )
        for register in self.registers.values():
            await register.emulator.hello(IO_TIMEOUT)
        return parts

    async def stop_daemon(self) -> int:
        """Ask the daemon to stop and wait for run() to return its exit code."""
        return await self.rig.stop_daemon(IO_TIMEOUT)

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
        """Stop the sales in flight; the rig stops every part, daemon first."""
        for task in self._sales:
            task.cancel()
        for task in self._sales:
            with contextlib.suppress(BaseException):
                await task


def store_spec(backend: str, *, relayed: bool) -> StoreSpec:
    """Two lanes pinned to their simulated terminals, which sit on the simulated USB bus.

    ``backend`` is ``cloud.backend``: the simulator serves both APIs on one base URL.
    """
    return StoreSpec(
        store_id=STORE_ID,
        site=Site.MLA,
        collector_id=COLLECTOR_ID,
        language=LANGUAGE,
        backend=backend,
        lanes=tuple(
            RigLane(lane, device, usb=USB_MODELS[lane]) for lane, device in DEVICES.items()
        ),
        relay="in-process" if relayed else "none",
        relay_config={"storage": {"batch_wait": 0.0}},
        sim={"time_scale": 0.0, "start_time": START_WALL},
        daemon_config={
            "cloud": {"read_timeout": 5.0},
            "timers": {
                "poll_fallback_after": POLL,
                "verify_initial_backoff": VERIFY,
                "verify_max_backoff": VERIFY,
                "confirmation_escalate_after": ESCALATE,
            },
            "logging": {"level": "warning"},
        },
        secrets=RigSecrets(TOKEN, WEBHOOK_SECRET, RELAY_STORE_TOKEN),
    )


def hand_driven(clock: ManualClock) -> Callable[[Ports], Ports]:
    """The daemon's wall clock and core timers on ``clock``; every other port the rig's."""
    return lambda ports: dataclasses.replace(ports, wall_clock=clock, timers=clock)


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
