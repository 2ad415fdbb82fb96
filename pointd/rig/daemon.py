"""The daemon of a rig: the real composition root in this event loop, or ``pointd run``.

``InProcessDaemon`` runs ``build`` and ``run`` exactly as ``pointd run`` does, with the ports
the rig hands in (a simulated USB bus, a clock a test moves by hand). ``DaemonRun`` is one
run of the real ``pointd run`` process, started as systemd starts it: ``NOTIFY_SOCKET``
points at the rig's notify socket, so READY=1, STATUS= and WATCHDOG=1 are seen as systemd
would see them. Either way readiness is READY=1 on that socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pointd.app.ports import Ports
from pointd.app.runtime import Parts, build, run
from pointd.config import DaemonConfig
from pointd.rig.process import Child, NotifySocket, child_environment

# A cold `pointd run` imports the whole product, replays its journal and asks for the device
# list before READY=1: about two seconds on an idle 2-core box. This bounds a broken start.
DAEMON_START_TIMEOUT = 60.0
# SIGTERM lets the daemon finish its journal write; it stops in well under a second.
DAEMON_STOP_TIMEOUT = 20.0
# Log levels that mean the daemon hit a bug (it only logs them and carries on).
FAILURE_LEVELS = frozenset({"error", "critical", "exception"})


class DaemonStopped(RuntimeError):
    """The daemon exited before it said READY=1."""


class InProcessDaemon:
    """``build(config, ports)`` and ``run(parts)`` as a task of this event loop."""

    def __init__(self, config: DaemonConfig, ports: Ports, notify: NotifySocket) -> None:
        self._config = config
        self._ports = ports
        self._notify = notify
        self._parts = build(config, ports)
        self._run: asyncio.Task[int] | None = None

    @property
    def parts(self) -> Parts:
        """Every part of the running daemon."""
        return self._parts

    async def start(self, within: float = DAEMON_START_TIMEOUT) -> None:
        """Run it and wait for READY=1; raise DaemonStopped if ``run`` returns first."""
        since = len(self._notify.messages)
        self._run = asyncio.get_running_loop().create_task(run(self._parts), name="daemon")
        ready = asyncio.ensure_future(self._notify.wait("READY", "1", since=since, within=within))
        await asyncio.wait({ready, self._run}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
            code = await self._run  # raises what stopped the daemon
            raise DaemonStopped(f"the daemon exited {code} before READY=1")
        ready.result()

    @property
    def exited(self) -> int | None:
        """The exit code once ``run`` returned, else None."""
        if self._run is None or not self._run.done() or self._run.cancelled():
            return None
        return self._run.result()

    async def stop(self, within: float = DAEMON_STOP_TIMEOUT) -> int:
        """Ask it to stop (as SIGTERM does) and return ``run``'s exit code."""
        assert self._run is not None
        self._parts.request_stop()
        async with asyncio.timeout(within):
            return await self._run


@dataclass
class DaemonRun:
    """One run of the real ``pointd run`` process."""

    child: Child
    notify: NotifySocket
    notify_from: int
    # A run a test makes fail on purpose logs its failure: not a bug to report.
    failure_expected: bool = False

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.child.pid

    @property
    def running(self) -> bool:
        """True while the daemon process lives."""
        return self.child.running

    @property
    def log_path(self) -> Path:
        """Where this run's output goes."""
        return self.child.log_path

    def log_entries(self) -> list[dict[str, Any]]:
        """Every JSON log line the daemon wrote so far."""
        return self.child.log_entries()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the daemon's output, for failure messages."""
        return self.child.log_tail(lines)

    def failures(self) -> list[dict[str, Any]]:
        """Log entries at a level that means a bug (none for a run failed on purpose)."""
        if self.failure_expected:
            return []
        return [e for e in self.log_entries() if e.get("level") in FAILURE_LEVELS]

    def seen(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        """This run's notify messages carrying ``key`` (= ``value``)."""
        return self.notify.seen(key, value, since=self.notify_from)

    async def wait_ready(self, within: float = DAEMON_START_TIMEOUT) -> dict[str, str]:
        """Wait for READY=1 from this run; fail with its output if it exits instead."""
        assert self.child.process is not None
        ready = asyncio.ensure_future(
            self.notify.wait("READY", "1", since=self.notify_from, within=within)
        )
        exited = asyncio.ensure_future(self.child.process.wait())
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if ready.done():
            return ready.result()
        ready.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ready
        raise DaemonStopped(
            f"pointd run exited {self.child.process.returncode} during start-up:\n"
            f"{self.log_tail()}"
        )

    async def wait_exit(self, within: float = DAEMON_STOP_TIMEOUT) -> int:
        """Wait for the daemon to exit by itself; its exit code."""
        return await self.child.wait(within)

    async def terminate(self, within: float = DAEMON_STOP_TIMEOUT) -> int:
        """SIGTERM, as ``systemctl stop`` sends; the exit code (SIGKILL after ``within``)."""
        code = await self.child.stop(within)
        assert code is not None
        return code

    async def kill(self) -> int:
        """SIGKILL: the process dies wherever it is."""
        await self.child.sigkill()
        return self.child.exit_codes[-1]



async def spawn_daemon(
    config_path: Path,
    log_path: Path,
    notify: NotifySocket,
    *,
    watchdog_usec: int | None = None,
    command: tuple[str, list[str]] | None = None,
    python: str = sys.executable,
) -> DaemonRun:
    """Start ``pointd run --config`` as systemd would, reporting to ``notify``.

    ``command`` is another ``(module, arguments)`` to run instead (a test's own entry point
    around the same daemon); ``python`` another interpreter (another virtual environment's).
    READY=1 is not waited for (``DaemonRun.wait_ready``): a test of a failing start-up wants
    the exit instead.
    """
    extra = {"NOTIFY_SOCKET": str(notify.path)}
    if watchdog_usec is not None:
        extra["WATCHDOG_USEC"] = str(watchdog_usec)
    child = Child("daemon", log_path, child_environment(extra), python)
    run = DaemonRun(child, notify, len(notify.messages))
    module, arguments = command or ("pointd.cli", ["run", "--config", str(config_path)])
    await child.start(arguments, module=module)
    return run
