"""One store's ``pointd run`` in the simulation: the real ``build`` and ``run`` on simulated ports.

``SimDaemon.start`` does what systemd does with ``pointd run``: a new ``Process``, then the
composition root's ``build(config, ports)`` and ``run(parts)`` as that process, exactly as
``pointd run`` calls them. Only the ports differ (``ports()``): the wall clock is the
simulation's clock plus the store PC's clock error (``jump`` moves it, as an NTP step
would), the monotonic clock and every timer are the loop's, randomness comes from the seed,
the periodic jobs fire on the simulated time of day, the register ports are the lanes'
simulated cables, and both HTTP clients go through the simulated network.

``kill`` is a SIGKILL (``SimLoop.kill``): the process's code never runs again, and what the
kernel would release is released: the journal's file (its last committed transaction is
what the next start replays) and its lock, the control socket, the register ports and the
connections. ``stop`` is a SIGTERM: ``request_stop`` and the exit code of ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from pointd.app.engine import LoopTimers
from pointd.app.ports import Ports
from pointd.app.runtime import Parts, build, run
from pointd.app.systemd_notify import Notifier
from pointd.cloud.sites import Site
from pointd.config import DaemonConfig, config_from_mapping
from pointd.link.ports import Port
from pointd.rig.simulation.jobs import VirtualJobScheduler
from pointd.rig.simulation.loop import Process, SimLoop
from pointd.rig.simulation.net import Network
from pointd.rig.simulation.serial import Cable
from pointd.rig.toml import merged


class SimNotifier(Notifier):
    """systemd's notify socket, heard in memory: READY=1, STATUS=, STOPPING=1."""

    def __init__(self, on_ready: Callable[[], None]) -> None:
        super().__init__(None)
        self._on_ready = on_ready
        self.statuses: list[str] = []

    def ready(self, status: str | None = None) -> bool:
        """The daemon is serving."""
        self._on_ready()
        return True

    def status(self, text: str) -> bool:
        """A STATUS= line (kept, for a failing run's report)."""
        self.statuses.append(text)
        del self.statuses[:-20]
        return True

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1."""
        return True


def _write_secret(path: Path, value: str) -> str:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(value)
    return str(path)


class SimDaemon:
    """One store PC's daemon, restartable (module docstring)."""

    def __init__(self, *, loop: SimLoop, name: str, state_dir: Path, document: Mapping[str, Any],
                 cables: Mapping[int, Cable], network: Network, rng: random.Random,
                 epoch: float, trace: Callable[[str], None],
                 wrap_cloud: Callable[[httpx.AsyncBaseTransport],
                                      httpx.AsyncBaseTransport] | None = None) -> None:
        self._loop = loop
        self.name = name
        self.state_dir = state_dir
        self._document = dict(document)
        self._cables = {cable.url: cable for cable in cables.values()}
        self._network = network
        self._rng = rng
        self._epoch = epoch
        self._trace = trace
        self._wrap_cloud = wrap_cloud
        # The store PC's clock error: an NTP step moves it.
        self.clock_offset = 0.0
        self.process: Process | None = None
        self.parts: Parts | None = None
        self._run: asyncio.Task[int] | None = None
        self._ready = asyncio.Event()
        self.starts = 0
        self.ready_at: float | None = None
        self.exit_codes: list[int] = []

    # --- configuration and ports ---------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        """The journal file, which survives every kill."""
        return Path(self._document["journal"]["path"])

    @property
    def control_socket(self) -> Path:
        """Where ``pointctl`` (the supervisor) reaches it."""
        return Path(self._document["control"]["socket"])

    def config(self) -> DaemonConfig:
        """The daemon's pointd.toml, validated as ``pointd run`` validates the file."""
        return config_from_mapping(self._document, DaemonConfig, source=f"{self.name}.toml")

    def wall(self) -> float:
        """The store PC's wall clock."""
        return self._epoch + self._loop.time() + self.clock_offset

    def jump(self, seconds: float) -> None:
        """Step the store PC's wall clock (NTP correcting a drift, a wrong RTC)."""
        self.clock_offset += seconds
        self._trace(f"{self.name} wall clock jumps {seconds:+.3f} s")

    def ports(self) -> Ports:
        """The simulated machine (module docstring)."""
        rng = random.Random(self._rng.getrandbits(64))
        client = self.name
        cloud = self._network.transport(client)
        if self._wrap_cloud is not None:
            cloud = self._wrap_cloud(cloud)
        return Ports(
            wall_clock=self.wall,
            timers=LoopTimers(self.wall),
            usb=None,
            hotplug=None,
            notifier=SimNotifier(self._became_ready),
            open_register_port=self._open_register,
            cloud_transport=cloud,
            relay_transport=self._network.transport(client),
            monotonic=self._loop.time,
            random=rng.random,
            entropy=rng.randbytes,
            timezone=dt.UTC,
            job_scheduler=lambda zone: VirtualJobScheduler(self.wall, zone),
        )

    async def _open_register(self, url: str, baudrate: int) -> Port:
        cable = self._cables.get(url)
        if cable is None:
            raise FileNotFoundError(f"{url}: no such device")
        return await cable.open(url, baudrate)

    # --- life ----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether a run of the daemon is going on."""
        return self.process is not None and self.process.alive and self._run is not None \
            and not self._run.done()

    @property
    def ready(self) -> bool:
        """Whether the current run said READY=1."""
        return self._ready.is_set()

    def _became_ready(self) -> None:
        self.ready_at = self._loop.time()
        self._ready.set()
        self._trace(f"{self.name} READY (start {self.starts})")

    def start(self) -> None:
        """Start the daemon as systemd starts ``pointd run`` (a new process)."""
        self.starts += 1
        self._ready = asyncio.Event()
        process = Process(f"{self.name}#{self.starts}")
        config = self.config()
        parts = process.run(build, config, self.ports())
        process.on_death.append(lambda: _release_journal(parts))
        process.after_death.append(lambda: _close_quietly(parts.journal_lock))
        self.process, self.parts = process, parts
        self._run = process.spawn(run(parts), f"{self.name}-run")
        self._trace(f"{self.name} started (start {self.starts})")

    async def wait_ready(self, within: float) -> bool:
        """Wait for READY=1 of the current run; False if it did not come (or the run ended)."""
        run_task = self._run
        if run_task is None:
            return False
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait({ready, run_task}, timeout=within,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
        return self._ready.is_set()

    def kill(self) -> bool:
        """SIGKILL; False when no run was alive to kill."""
        process = self.process
        if process is None or not process.alive:
            return False
        self._loop.kill(process)
        self._trace(f"{self.name} killed (start {self.starts}, "
                    f"{'ready' if self.ready else 'not yet ready'})")
        return True

    async def stop(self, within: float) -> int | None:
        """SIGTERM; the exit code (None when it was not running)."""
        parts, run_task = self.parts, self._run
        if parts is None or run_task is None or not self.alive:
            return None
        parts.request_stop()
        try:
            async with asyncio.timeout(within):
                code = await asyncio.shield(run_task)
        except TimeoutError:
            self.kill()
            return None
        self.exit_codes.append(code)
        self._trace(f"{self.name} stopped with {code}")
        return code

    def crashed(self) -> BaseException | None:
        """What ended a run that ended by itself (a daemon failure), else None."""
        run_task = self._run
        if run_task is None or not run_task.done() or run_task.cancelled():
            return None
        return run_task.exception()


def _release_journal(parts: Parts) -> None:
    """What the kernel does for a dead daemon's journal: close the file, drop the lock."""
    with contextlib.suppress(Exception):
        parts.journal.close()
    # The lock's descriptor number stays taken (by /dev/null) so that dead code closing it
    # can never close a descriptor someone opened since.
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, parts.journal_lock)
    finally:
        os.close(devnull)


def _close_quietly(descriptor: int) -> None:
    with contextlib.suppress(OSError):
        os.close(descriptor)


def store_document(*, store_id: str, site: Site, backend: str, state_dir: Path,
                   access_token: str,
                   webhook_secret: str, store_token: str, cloud_url: str, relay_url: str,
                   lanes: Mapping[int, tuple[str, str]],
                   changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A pointd.toml as a mapping for one store; ``lanes`` maps lane → (register, terminal)."""
    document: dict[str, Any] = {
        "store": {"id": store_id, "site": site.value, "collector_id": 123456789,
                  "language": "en"},
        "cloud": {
            "base_url": cloud_url,
            "backend": backend,
            "access_token_file": _write_secret(state_dir / f"{store_id}-token", access_token),
            "webhook_secret_file": _write_secret(state_dir / f"{store_id}-webhook",
                                                 webhook_secret),
        },
        "relay": {
            "url": relay_url,
            "store_token_file": _write_secret(state_dir / f"{store_id}-relay", store_token),
        },
        "journal": {"path": str(state_dir / f"{store_id}-journal.sqlite3")},
        "control": {"socket": str(state_dir / f"{store_id}.sock")},
        "lanes": [{"number": lane, "register": register, "terminal": terminal, "baud": 115200}
                  for lane, (register, terminal) in sorted(lanes.items())],
        "logging": {"level": "warning", "format": "json"},
    }
    return merged(document, changes or {})
