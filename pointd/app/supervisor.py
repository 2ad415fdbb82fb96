"""The daemon's one failure path, and the start-up gate that sale admission waits on.

Theory of operation
-------------------
Every long-running part of the daemon runs as a task the ``Supervisor`` spawned. A task is
*essential* when the daemon is not doing its job without it: the engine (its health), each
lane's register session, the terminal watch and device refresh, the relay consumer, the
control socket and the watchdog. When an essential task ends while nobody asked the daemon
to stop (it raised, returned, or was cancelled by someone else), ``fail`` runs once: it
logs the reason, sets systemd's ``STATUS=`` to it and asks the daemon to stop. ``healthy``
is false from then on, so the watchdog is never fed again; the daemon then stops the way
it always stops (the engine finishes its journal write) and exits non-zero, and systemd's
``Restart=on-failure`` starts a new one, which replays the journal and recovers every sale
in progress. A non-essential task (showing a lane's condition on a register) that fails is
logged and forgotten.

``StartUpGate`` is set once start-up has learnt what admission depends on (the first
device list asked for, the USB bus scanned). A SALE that arrives earlier waits for it
instead of being refused for a terminal the daemon has not looked up yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog

from pointd.app.systemd_notify import Notifier

log = structlog.get_logger(__name__)


class StartUpGate:
    """Opened once the lanes' terminals are known; sale admission waits for it."""

    def __init__(self) -> None:
        self._open = asyncio.Event()

    @property
    def is_open(self) -> bool:
        """Whether start-up has finished learning the lanes' terminals."""
        return self._open.is_set()

    def open(self) -> None:
        """Start-up has asked for the device list (answered or not) and scanned USB."""
        self._open.set()

    async def wait(self) -> None:
        """Return once the gate is open."""
        await self._open.wait()


class Supervisor:
    """Runs the daemon's tasks; any essential one that ends stops the daemon as failed."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self._stopping = False
        self._failure: str | None = None

    @property
    def failure(self) -> str | None:
        """Why the daemon failed, or None while it has not."""
        return self._failure

    @property
    def healthy(self) -> bool:
        """False once a failure was reported or a stop was asked for."""
        return self._failure is None and not self._stop.is_set()

    def spawn(self, work: Coroutine[Any, Any, object], name: str, *, essential: bool) -> None:
        """Run ``work`` as a task; if ``essential``, its end is the daemon's failure."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.append(task)
        task.add_done_callback(lambda done: self._ended(done, essential=essential))

    def fail(self, reason: str) -> None:
        """Report the first failure: STATUS= says it, the watchdog starves, the daemon stops."""
        if self._failure is not None or self._stopping:
            return
        self._failure = reason
        log.critical("daemon.failed", reason=reason)
        self._notifier.status(f"failed: {reason}")
        self._stop.set()

    def request_stop(self) -> None:
        """Ask the daemon to stop cleanly (SIGTERM, SIGINT)."""
        self._stop.set()

    async def wait(self) -> None:
        """Return once a stop was asked for or a failure reported."""
        await self._stop.wait()

    @property
    def stop_requested(self) -> bool:
        """Whether the daemon is on its way down."""
        return self._stop.is_set()

    async def cancel_all(self) -> None:
        """Cancel every task and wait for each to finish (the daemon is stopping)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()

    def _ended(self, task: asyncio.Task[Any], *, essential: bool) -> None:
        if self._stopping:
            return
        if task.cancelled():
            reason = f"{task.get_name()} was cancelled"
        elif (error := task.exception()) is not None:
            reason = f"{task.get_name()} failed: {type(error).__name__}: {error}"
        else:
            reason = f"{task.get_name()} ended"
        if not essential:
            if not task.cancelled() and task.exception() is not None:
                log.error("daemon.task_failed", task=task.get_name(), reason=reason)
            return
        if self._stop.is_set():
            # Already on the way down (a stop was asked for, or an earlier failure): the
            # exit code is decided; a part that ends now is only worth a line in the log.
            if not task.cancelled() and task.exception() is not None:
                log.error("daemon.task_failed_while_stopping", task=task.get_name(),
                          reason=reason)
            return
        self.fail(reason)
