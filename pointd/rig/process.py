"""Product processes started as systemd starts them, and a notify socket to hear them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pointd

# The directory that holds the ``pointd`` package: a child imports the same code as us.
PACKAGE_ROOT = Path(pointd.__file__).resolve().parents[1]
# Variables a child must not inherit: it is not under this process's systemd unit.
_NOT_INHERITED = frozenset(
    {"CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
     "POINTD_CONTROL_SOCKET"}
)
# A notify message is awaited this long at most: a daemon's start, on a loaded machine.
NOTIFY_TIMEOUT = 30.0


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a product subprocess: ours, less systemd's and pointd's settings."""
    env = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if part
    )
    env.update(extra or {})
    return env


class Child:
    """One ``python -m pointd.cli ...`` process; its output appended to a log file."""

    def __init__(self, name: str, log_path: Path, environment: Mapping[str, str],
                 python: str = sys.executable) -> None:
        self.name = name
        self.log_path = log_path
        self._env = dict(environment)
        self._python = python
        self.process: asyncio.subprocess.Process | None = None
        self.exit_codes: list[int] = []

    async def start(self, arguments: list[str], *, module: str = "pointd.cli") -> None:
        """Start it (again): ``python -m module arguments...``."""
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                self._python, "-m", module, *arguments,
                cwd=PACKAGE_ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        """True while the process lives."""
        return self.process is not None and self.process.returncode is None

    async def wait(self, within: float) -> int:
        """Wait for it to exit by itself; its exit code (TimeoutError after ``within``)."""
        assert self.process is not None
        async with asyncio.timeout(within):
            code = await self.process.wait()
        self.exit_codes.append(code)
        return code

    async def sigkill(self) -> None:
        """Kill it with no chance to clean up, like a power cut of the process."""
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGKILL)
            self.exit_codes.append(await process.wait())

    async def stop(self, within: float) -> int | None:
        """SIGTERM, wait, SIGKILL if it will not go; its exit code (None: never started)."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(within):
                    code = await process.wait()
            except TimeoutError:
                process.kill()
                code = await process.wait()
            self.exit_codes.append(code)
            return code
        return process.returncode

    def log_size(self) -> int:
        """How many characters its log holds now."""
        return len(self.log_text())

    def log_text(self, since: int = 0) -> str:
        """Its output so far (from character ``since`` on)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[since:]
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        """The end of its output, for an error message."""
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no output)"

    def log_entries(self) -> list[dict[str, Any]]:
        """Every JSON log line it wrote so far."""
        entries = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries


class NotifySocket:
    """A systemd-style notify socket: an AF_UNIX datagram socket the children report to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[dict[str, str]] = []
        self._arrived = asyncio.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setblocking(False)
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start collecting datagrams."""
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="notify-socket")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            datagram = await loop.sock_recv(self._sock, 65536)
            fields = dict(
                line.split("=", 1) for line in datagram.decode().splitlines() if "=" in line
            )
            async with self._arrived:
                self.messages.append(fields)
                self._arrived.notify_all()

    def seen(self, key: str, value: str | None = None, *, since: int = 0) -> list[dict[str, str]]:
        """Messages from index ``since`` on that carry ``key`` (with ``value`` if given)."""
        return [
            m for m in self.messages[since:] if key in m and (value is None or m[key] == value)
        ]

    async def wait(
        self, key: str, value: str | None = None, *, since: int = 0,
        within: float = NOTIFY_TIMEOUT,
    ) -> dict[str, str]:
        """The first message from index ``since`` on carrying ``key`` (= ``value``)."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: bool(self.seen(key, value, since=since)))
        return self.seen(key, value, since=since)[0]

    async def close(self) -> None:
        """Stop reading and unbind."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
