"""systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING) and the health-gated watchdog.

Theory of operation: under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, an AF_UNIX
datagram socket given as a path or, with a leading ``@``, an abstract address. Each message
is one datagram of ``KEY=VALUE`` lines. Outside systemd the variable is unset and every call
is a no-op, so the daemon needs no "am I under systemd?" branches. With ``WatchdogSec=``,
systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``); the daemon must send ``WATCHDOG=1``
more often than that. ``WatchdogLoop`` sends it at half the interval and only after the
daemon's health check passed, so a wedged event loop or a dead reader gets the service
killed and restarted instead of being kept alive by a timer that still ticks.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

import structlog

log = structlog.get_logger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def _address(raw: str) -> str | None:
    if raw.startswith("@"):
        return "\0" + raw[1:]  # the abstract namespace: no file, a leading NUL byte
    if raw.startswith("/"):
        return raw
    return None  # vsock and other address kinds are not used on a store PC


class Notifier:
    """Send notify messages to systemd; silently does nothing when not under systemd."""

    def __init__(self, notify_socket: str | None) -> None:
        self._address = _address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            log.warning("notify_socket_unsupported", notify_socket=notify_socket)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` (from ``environ``, default the process env)."""
        env = os.environ if environ is None else environ
        return cls(env.get(NOTIFY_SOCKET_ENV) or None)

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up finished (journal replayed, ports open)."""
        return self._send({"READY": "1", **({"STATUS": status} if status else {})})

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows."""
        return self._send({"STATUS": text})

    def watchdog(self) -> bool:
        """Reset the watchdog timer; only call after a passed health check."""
        return self._send({"WATCHDOG": "1"})

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd a graceful stop began."""
        return self._send({"STOPPING": "1", **({"STATUS": status} if status else {})})

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to finish starting or stopping (e.g. a write-ahead step)."""
        return self._send({"EXTEND_TIMEOUT_USEC": str(int(seconds * 1_000_000))})

    def _send(self, fields: Mapping[str, str]) -> bool:
        if self._address is None:
            return False
        # One field per line: a newline inside a value would start a forged field.
        message = "\n".join(f"{k}={' '.join(v.splitlines())}" for k, v in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                # Never wait on the event loop: a notify socket whose queue is full (systemd
                # not reading) drops this message, as a missed ping, instead of the daemon
                # stopping until systemd reads.
                sock.send(message.encode(errors="replace"), socket.MSG_DONTWAIT)
        except OSError as exc:
            # Missing READY gets the unit failed by systemd's start timeout and a missing
            # WATCHDOG gets it restarted; crashing here would only lose the journal's view.
            log.warning("notify_failed", fields=sorted(fields), error=str(exc))
            return False
        return True


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec``), or None when not asked."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None  # the watchdog is meant for another process (e.g. our parent)
        except ValueError:
            return None
    return usec / 2 / 1_000_000


HealthCheck = Callable[[], Awaitable[bool]]
Sleep = Callable[[float], Awaitable[None]]


class WatchdogLoop:
    """Ping the watchdog every ``interval`` seconds, but only when ``check()`` passes."""

    def __init__(
        self,
        check: HealthCheck,
        notifier: Notifier,
        interval: float,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._check = check
        self._notifier = notifier
        self._interval = interval
        self._sleep = sleep

    async def beat(self) -> bool:
        """Run the health check once; send WATCHDOG=1 if it passed; return whether it did."""
        try:
            # A check that hangs is as unhealthy as one that fails; never wait past the
            # interval or the ping would be late even when the answer is yes.
            async with asyncio.timeout(self._interval):
                healthy = await self._check()
        except Exception as exc:
            log.warning("health_check_failed", error=repr(exc))
            return False
        if healthy is not True:
            log.warning("health_check_unhealthy")
            return False
        self._notifier.watchdog()
        return True

    async def run(self) -> None:
        """Beat forever (until cancelled)."""
        while True:
            await self.beat()
            await self._sleep(self._interval)
