"""A whole store on simulators: cloud simulator, relay, daemon, register emulators, USB bus.

``StoreRig`` is the one place that wires a store together from the simulators. What runs
where is the ``StoreSpec``'s choice: the daemon in this event loop (the same ``build`` and
``run`` as ``pointd run``, with the rig's ports) or as the real ``pointd run`` process; the
relay in this loop, as ``pointd relay``, or not at all. Start order is the order each
part needs the one before: relay (the simulator sends its webhooks there) → cloud
simulator → register emulators on real ptys → USB bus → daemon. Stop order is the
reverse. ``pointd demo``, the benchmarks, the chaos run and the end-to-end tests all start
their store here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pointd.app.engine import LoopTimers
from pointd.app.ports import Ports
from pointd.app.systemd_notify import Notifier
from pointd.cloud.sites import Site
from pointd.config import DaemonConfig, config_from_mapping
from pointd.rig.daemon import (
    DAEMON_START_TIMEOUT,
    DAEMON_STOP_TIMEOUT,
    DaemonRun,
    InProcessDaemon,
    spawn_daemon,
)
from pointd.rig.process import NotifySocket, child_environment
from pointd.rig.relay import InProcessRelay, RelayProcess, relay_config, relay_document
from pointd.rig.toml import merged, toml_text
from pointd.sim.cloud import CloudSimulator, SimConfig, SimDevice
from pointd.sim.register import RegisterEmulator
from pointd.sim.usb import FakeUsbBus
from pointd.sim.usb.dumps import default_dump_directory

RelayMode = Literal["in-process", "process", "none"]
DaemonMode = Literal["in-process", "process"]


@dataclass(frozen=True)
class RigLane:
    """One checkout lane: its terminal in the simulated account, and on the USB bus."""

    number: int
    device_id: str
    # (model, serial) of the terminal plugged into the simulated USB bus; None: no USB.
    usb: tuple[str, str] | None = None
    # Pin the lane by its terminal's USB serial (needs ``usb``) instead of its device id.
    pin_by_serial: bool = False
    # The lane's register port as the daemon opens it (a pty path or ``socket://host:port``)
    # when the caller runs its own register there; None: the rig opens a RegisterEmulator.
    register: str | None = None


@dataclass(frozen=True)
class RigSecrets:
    """The simulated account's token and webhook secret, and the store's relay token."""

    access_token: str
    webhook_secret: str
    store_token: str

    @classmethod
    def generated(cls) -> RigSecrets:
        """Fresh random secrets, as an installer would make."""
        return cls(
            access_token="TEST-" + secrets.token_hex(16),
            webhook_secret=secrets.token_hex(32),
            store_token=secrets.token_urlsafe(24),
        )


@dataclass(frozen=True)
class StoreSpec:
    """What the rig starts and how each part is configured."""

    store_id: str
    lanes: tuple[RigLane, ...]
    site: Site = Site.MLA
    collector_id: int = 123456789
    language: str = "en"
    backend: str = "payment-intent"
    relay: RelayMode = "in-process"
    daemon: DaemonMode = "in-process"
    # False: the caller starts the daemon itself (``start_daemon``), e.g. behind a proxy.
    start_daemon: bool = True
    # SimConfig fields beyond the account and the lanes' devices (delays, time_scale, …).
    sim: Mapping[str, Any] = field(default_factory=dict)
    # Laid over the rig's pointd.toml table by table (timers, cloud timeouts, logging, …).
    daemon_config: Mapping[str, Any] = field(default_factory=dict)
    # Laid over the rig's relay.toml table by table.
    relay_config: Mapping[str, Any] = field(default_factory=dict)
    secrets: RigSecrets = field(default_factory=RigSecrets.generated)
    # A process daemon's systemd watchdog (WATCHDOG_USEC); None: not armed.
    watchdog_usec: int | None = None
    # A process relay's --log-level (its output goes to <state dir>/relay.log).
    relay_log_level: str = "warning"


class StoreRig:
    """The store of a ``StoreSpec``, started and stopped with ``async with``."""

    def __init__(
        self,
        state_dir: Path,
        spec: StoreSpec,
        *,
        sim_factory: Callable[[SimConfig], CloudSimulator] = CloudSimulator,
        ports: Callable[[Ports], Ports] = lambda ports: ports,
        on_register: Callable[[int, RegisterEmulator], None] = lambda lane, emulator: None,
    ) -> None:
        self.state_dir = state_dir
        self.spec = spec
        self._sim_factory = sim_factory
        self._adjust_ports = ports
        self._on_register = on_register
        self.secrets = spec.secrets
        self.notify = NotifySocket(state_dir / "notify.sock")
        self.registers: dict[int, RegisterEmulator] = {}
        self.bus = self._usb_bus()
        self.relay = self._relay()
        self.in_process: InProcessDaemon | None = None
        self.runs: list[DaemonRun] = []
        self.config_path = state_dir / "pointd.toml"
        self.cloud_url: str | None = None
        self._sim: CloudSimulator | None = None
        self._stack = contextlib.AsyncExitStack()

    # --- the parts ------------------------------------------------------------------------

    @property
    def sim(self) -> CloudSimulator:
        """The running cloud simulator."""
        assert self._sim is not None, "the rig is not started"
        return self._sim

    @property
    def daemon(self) -> InProcessDaemon:
        """The in-process daemon of the latest start."""
        assert self.in_process is not None, "no in-process daemon was started"
        return self.in_process

    @property
    def latest_run(self) -> DaemonRun:
        """The latest run of the daemon process."""
        return self.runs[-1]

    def sim_wall(self) -> float:
        """The simulator's wall clock (what it signs webhooks with)."""
        if self._sim is None:
            start = self.spec.sim.get("start_time")
            return float(start) if start is not None else time.time()
        return self._sim.world.start_wall + self._sim.clock.now()

    # --- start and stop -------------------------------------------------------------------

    async def __aenter__(self) -> StoreRig:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _start(self) -> None:
        self.notify.start()
        if self.relay is not None:
            await self.relay.start()
            self._stack.push_async_callback(self.relay.stop)
        self._sim = await self._stack.enter_async_context(self._sim_factory(self.sim_config()))
        for lane in self.spec.lanes:
            if lane.register is not None:
                continue
            emulator = await RegisterEmulator.open_pty(self.state_dir / f"register-{lane.number}")
            self.registers[lane.number] = emulator
            self._on_register(lane.number, emulator)
        if self.spec.start_daemon:
            await self.start_daemon()

    async def aclose(self) -> None:
        """Stop every part: daemon first, then registers, simulator, relay."""
        if self.in_process is not None and self.in_process.exited is None:
            with contextlib.suppress(Exception):
                await self.in_process.stop()
        for run in self.runs:
            with contextlib.suppress(Exception):
                await run.terminate()
        for emulator in self.registers.values():
            await emulator.close()
        await self._stack.aclose()
        await self.notify.close()

    # --- the daemon -----------------------------------------------------------------------

    async def start_daemon(self, *, cloud_url: str | None = None) -> None:
        """Start the daemon (again) and wait for READY=1.

        ``cloud_url`` sends the daemon's API calls there instead of to the simulator (a
        proxy that misbehaves); it is kept for later restarts.
        """
        if cloud_url is not None:
            self.cloud_url = cloud_url
        document = self.config_document()
        self.config_path.write_text(toml_text(document), encoding="utf-8")
        if self.spec.daemon == "in-process":
            config = config_from_mapping(document, DaemonConfig, source=str(self.config_path))
            self.in_process = InProcessDaemon(config, self.ports(), self.notify)
            await self.in_process.start()
            return
        run = await self.start_daemon_process()
        await run.wait_ready(DAEMON_START_TIMEOUT)

    async def start_daemon_process(self) -> DaemonRun:
        """Start ``pointd run`` on the rig's configuration; READY=1 is not waited for."""
        log_path = self.state_dir / f"daemon-{len(self.runs) + 1}.log"
        run = await spawn_daemon(self.config_path, log_path, self.notify,
                                 watchdog_usec=self.spec.watchdog_usec)
        self.runs.append(run)
        return run

    async def stop_daemon(self, within: float = DAEMON_STOP_TIMEOUT) -> int:
        """Stop the daemon as SIGTERM does; its exit code."""
        if self.spec.daemon == "in-process":
            return await self.daemon.stop(within)
        return await self.latest_run.terminate(within)

    def ports(self) -> Ports:
        """The in-process daemon's ports: real time, the simulated USB bus, the notify socket."""
        ports = Ports(
            wall_clock=time.time,
            timers=LoopTimers(time.time),
            usb=self.bus.backend if self.bus is not None else None,
            hotplug=self.bus.hotplug() if self.bus is not None else None,
            notifier=Notifier(str(self.notify.path)),
        )
        return self._adjust_ports(ports)

    async def hello_all(self, within: float = DAEMON_START_TIMEOUT) -> None:
        """Every register says HELLO and gets its answer (the daemon serves every lane)."""
        await asyncio.gather(*(emulator.hello(within) for emulator in self.registers.values()))

    # --- configuration --------------------------------------------------------------------

    def sim_config(self) -> SimConfig:
        """The simulated account: one PDV terminal per lane, webhooks to the relay if any."""
        spec = self.spec
        values: dict[str, Any] = {
            "access_token": self.secrets.access_token,
            "webhook_secret": self.secrets.webhook_secret,
            "site": spec.site,
            "collector_id": spec.collector_id,
            "devices": tuple(
                SimDevice(id=lane.device_id, pos_id=lane.number,
                          external_pos_id=f"LANE{lane.number}")
                for lane in spec.lanes
            ),
            "webhook_url": self.relay.intake_url if self.relay is not None else None,
        }
        values.update(spec.sim)
        return SimConfig(**values)

    def config_document(self) -> dict[str, Any]:
        """The daemon's pointd.toml as a mapping (secrets in files beside it)."""
        spec = self.spec
        document: dict[str, Any] = {
            "store": {"id": spec.store_id, "site": spec.site.value,
                      "collector_id": spec.collector_id, "language": spec.language},
            "cloud": {
                "base_url": self.cloud_url or self.sim.base_url,
                "backend": spec.backend,
                "access_token_file": self.secret_file("mp_access_token",
                                                      self.secrets.access_token),
                "webhook_secret_file": self.secret_file("mp_webhook_secret",
                                                        self.secrets.webhook_secret),
            },
            "journal": {"path": str(self.state_dir / "journal.sqlite3")},
            "control": {"socket": str(self.state_dir / "control.sock")},
            "lanes": [self._lane_table(lane) for lane in spec.lanes],
        }
        if self.relay is not None:
            document["relay"] = {
                "url": self.relay.url,
                "store_token_file": self.secret_file("relay_store_token",
                                                     self.secrets.store_token),
            }
        return merged(document, spec.daemon_config)

    def secret_file(self, name: str, value: str) -> str:
        """Write a secret where the configuration names it, readable by this user only."""
        path = self.state_dir / name
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(value)
        path.chmod(0o600)
        return str(path)

    def _lane_table(self, lane: RigLane) -> dict[str, Any]:
        register = lane.register or self.registers[lane.number].device_path
        table: dict[str, Any] = {"number": lane.number, "register": register, "baud": 115200}
        if lane.pin_by_serial:
            assert lane.usb is not None, f"lane {lane.number} is pinned by a USB serial"
            table["terminal_serial"] = lane.usb[1]
        else:
            table["terminal"] = lane.device_id
        return table

    def _usb_bus(self) -> FakeUsbBus | None:
        plugged = [lane.usb for lane in self.spec.lanes if lane.usb is not None]
        if not plugged or self.spec.daemon != "in-process":
            return None
        bus = FakeUsbBus.from_directory(default_dump_directory())
        for model, serial in plugged:
            bus.plug(model, serial=serial)
        return bus

    def _relay(self) -> InProcessRelay | RelayProcess | None:
        spec = self.spec
        if spec.relay == "none":
            return None
        document = relay_document(
            sqlite_path=self.state_dir / "relay.sqlite3",
            stores={spec.store_id: self.secrets.store_token},
            changes=spec.relay_config,
        )
        if spec.relay == "process":
            secret = Path(self.secret_file("relay_webhook_secret", self.secrets.webhook_secret))
            return RelayProcess(document, secret, self.state_dir,
                                environment=child_environment(), log_level=spec.relay_log_level)
        config = relay_config(document)
        return InProcessRelay(config, self.secrets.webhook_secret, clock=self.sim_wall)

