"""The real ``pointd run`` process and what a test needs around it: notify socket, pointctl, store.

The daemon is a subprocess started exactly as systemd starts it (``python -m pointd.cli
run --config FILE``) with ``NOTIFY_SOCKET`` pointing at a datagram socket this test binds
and ``WATCHDOG_USEC`` set small, so every notify message it sends is seen here. The cloud
simulator and the register emulator run in the test's event loop: the simulator is frozen
(``time_scale=0``) and moved with ``sim.advance``; the emulator owns a real pty whose slave
the daemon opens through a symlink. The daemon itself runs on the real clock with its
timers at the configuration's minimum (1 s), so a step that needs a daemon poll takes about
a second. Waits are bounded waits for events (a datagram, a RESULT, a pointctl answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pointd.core.states import SaleState
from pointd.register import messages as msg
from pointd.register.prompts import prompt_for
from pointd.sim.cloud import CloudSimulator, SimConfig, SimDevice
from pointd.sim.register.emulator import RegisterEmulator, SaleOutcome

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "TEST-e2e-daemon-token-7f3a91"
WEBHOOK_SECRET = "e2e-daemon-webhook-secret"
STORE_ID = "e2e-daemon"
COLLECTOR_ID = 123456789
LANGUAGE = "en"
DEVICE = "PAX_A910__SMARTPOS1234345545"
LANE = 1
# systemd's WatchdogSec=1: the daemon must ping every half second.
WATCHDOG_USEC = 1_000_000
# Simulated seconds from create to the end of a sale, and from CONFIRMATION_REQUIRED to
# the settled payment (the simulator's default delays, docs/simulator.md).
SIM_SALE_SECONDS = 8.0
SIM_SETTLE_SECONDS = 30.0
# Amounts whose outcome the simulator fixes (docs/simulator.md, "Outcomes by amount").
APPROVED_CENTS = 2500
CONFIRMATION_APPROVED_CENTS = 1401

# Bounds on waiting for real events. A start imports the whole product in a fresh
# interpreter (about 2 s on an idle box); two cores are shared with other test runs.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
# A daemon poll is due within poll_fallback_after (1 s) of the change it must see.
EVENT_TIMEOUT = 15.0
POINTCTL_TIMEOUT = 15.0
# How often a waiter looks again at state that has no event of its own.
LOOK_INTERVAL = 0.02
# Log levels that mean the daemon hit a bug: it only logs them and carries on.
FAILURE_LEVELS = frozenset({"error", "critical", "exception"})


async def eventually(what: str, predicate: Callable[[], bool], within: float) -> None:
    """Wait until ``predicate()`` holds; fail naming ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(LOOK_INTERVAL)


async def eventually_async(
    what: str, predicate: Callable[[], Awaitable[bool]], within: float = EVENT_TIMEOUT
) -> None:
    """Like ``eventually`` for a check that does I/O (a pointctl call)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(LOOK_INTERVAL)


class NotifySocket:
    """A systemd-style notify socket: an AF_UNIX datagram socket bound in the test's tmp dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[dict[str, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setblocking(False)
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start collecting datagrams."""
        self._reader = asyncio.create_task(self._read(), name="notify-socket")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            datagram = await loop.sock_recv(self._sock, 65536)
            fields = dict(
                line.split("=", 1) for line in datagram.decode().splitlines() if "=" in line
            )
            self.messages.append(fields)

    def seen(self, key: str, value: str | None = None, *, since: int = 0) -> list[dict[str, str]]:
        """Messages from index ``since`` on that carry ``key`` (with ``value`` if given)."""
        return [
            m
            for m in self.messages[since:]
            if key in m and (value is None or m[key] == value)
        ]

    async def wait(
        self, key: str, value: str | None = None, *, since: int = 0, within: float = EVENT_TIMEOUT
    ) -> dict[str, str]:
        """The first message from index ``since`` on carrying ``key`` (= ``value``)."""
        await eventually(
            f"{key}={value or '*'} on the notify socket",
            lambda: bool(self.seen(key, value, since=since)),
            within,
        )
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


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment for a product subprocess: no inherited systemd or pointd settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                       "WATCHDOG_PID", "POINTD_CONTROL_SOCKET"}
    }
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env.update(extra)
    return env


async def run_pointd(config: Path, *, within: float = START_TIMEOUT) -> tuple[int, str, str]:
    """Run ``pointd run`` to its exit (for start-up failures): exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pointd.cli", "run", "--config", str(config),
        cwd=PROJECT_ROOT,
        env=child_environment({}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("pointd run did not exit") from None
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@dataclass
class DaemonProcess:
    """One run of the real daemon; its output goes to a log file the test can read."""

    process: asyncio.subprocess.Process
    log_path: Path
    notify: NotifySocket
    notify_from: int

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.process.pid

    def log_entries(self) -> list[dict[str, Any]]:
        """Every JSON log line the daemon wrote so far."""
        entries = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def log_tail(self, lines: int = 30) -> str:
        """The end of the daemon's output, for failure messages."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def failures(self) -> list[dict[str, Any]]:
        """Log entries at a level that means a bug."""
        return [e for e in self.log_entries() if e.get("level") in FAILURE_LEVELS]

    async def wait_ready(self) -> dict[str, str]:
        """Wait for READY=1 from this run; fail with its output if it exits instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not self.notify.seen("READY", "1", since=self.notify_from):
            if self.process.returncode is not None:
                raise AssertionError(
                    f"pointd exited {self.process.returncode} during start-up:\n{self.log_tail()}"
                )
            if loop.time() >= deadline:
                raise AssertionError(f"no READY=1 from pointd:\n{self.log_tail()}")
            await asyncio.sleep(LOOK_INTERVAL)
        return self.notify.seen("READY", "1", since=self.notify_from)[0]

    async def terminate(self) -> int:
        """SIGTERM, as ``systemctl stop`` sends; return the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return await self._exit()

    async def kill(self) -> int:
        """SIGKILL: the process dies wherever it is."""
        self.process.kill()
        return await self._exit()

    async def _exit(self) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"pointd did not exit:\n{self.log_tail()}") from None


@dataclass
class Store:
    """The cloud simulator, one lane's register emulator and a (re)startable daemon."""

    tmp: Path
    sim: CloudSimulator
    register: RegisterEmulator
    notify: NotifySocket
    config_path: Path
    control_socket: Path
    runs: list[DaemonProcess] = field(default_factory=list)
    _sales: list[asyncio.Task[SaleOutcome]] = field(default_factory=list)

    @property
    def daemon(self) -> DaemonProcess:
        """The latest daemon run."""
        return self.runs[-1]

    async def start_daemon(self) -> DaemonProcess:
        """Start ``pointd run``; return once it sent READY=1 and the lane can take a sale."""
        log_path = self.tmp / f"daemon-{len(self.runs) + 1}.log"
        with log_path.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pointd.cli", "run", "--config", str(self.config_path),
                cwd=PROJECT_ROOT,
                env=child_environment(
                    {"NOTIFY_SOCKET": str(self.notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
                ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )
        run = DaemonProcess(process, log_path, self.notify, len(self.notify.messages))
        self.runs.append(run)
        await run.wait_ready()
        # READY=1 comes before the first terminal list; a sale taken earlier is refused
        # (terminal_unknown), so wait for the lane as a cashier would see it.
        await self.wait_status(
            "lane 1 ready",
            lambda status: status["cloud"]["reachable"]
            and status["lanes"][0]["condition"] == "ready"
            and status["lanes"][0]["register"]["connected"],
        )
        return run

    async def pointctl_raw(self, *args: str) -> tuple[int, str, str]:
        """Run ``pointctl --json ARGS`` against this store's socket: exit code, stdout, stderr."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pointd.control.cli",
            "--socket", str(self.control_socket), "--json", *args,
            cwd=PROJECT_ROOT,
            env=child_environment({}),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), POINTCTL_TIMEOUT)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def pointctl(self, *args: str) -> tuple[int, Any]:
        """Run ``pointctl --json ARGS``: exit code and the JSON it printed."""
        code, out, err = await self.pointctl_raw(*args)
        try:
            answer = json.loads(out)
        except ValueError:
            raise AssertionError(f"pointctl {args} exited {code}: {out!r} {err!r}") from None
        return code, answer

    async def wait_status(
        self, what: str, predicate: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """Ask ``pointctl status`` until ``predicate`` holds for its answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENT_TIMEOUT
        last: Any = None
        while True:
            # Exit 3 while the socket is not bound yet; 0 or 4 once the daemon answers.
            _code, out, _err = await self.pointctl_raw("status")
            last = json.loads(out) if out.strip() else None
            if isinstance(last, dict) and predicate(last):
                return last
            if loop.time() >= deadline:
                raise AssertionError(f"timed out waiting for {what}; last status: {last}")
            await asyncio.sleep(LOOK_INTERVAL)

    async def only_sale(self) -> dict[str, Any]:
        """The one sale in the journal (``pointctl sales``) with its detail (``pointctl sale``)."""
        code, listing = await self.pointctl("sales")
        assert code == 0, listing
        [row] = listing["sales"]
        code, detail = await self.pointctl("sale", row["sale_id"])
        assert code == 0, detail
        assert isinstance(detail, dict)
        return detail

    def sale(self, amount_cents: int, correlation_id: str) -> asyncio.Task[SaleOutcome]:
        """Start a SALE from the register; the task ends with its RESULT (or STATUS answer)."""
        task = asyncio.create_task(
            self.register.sale(amount_cents, correlation_id, within=EVENT_TIMEOUT * 4),
            name=f"sale-{correlation_id}",
        )
        self._sales.append(task)
        return task

    async def shows(self, correlation_id: str, state: SaleState) -> None:
        """Wait until the register's screen showed ``state`` for this sale."""
        await eventually(
            f"the register to show {state.value} for {correlation_id}",
            lambda: self.shown(correlation_id, state),
            EVENT_TIMEOUT,
        )

    def shown(self, correlation_id: str, state: SaleState) -> bool:
        """Whether the daemon put the screen for ``state`` on the register for this sale."""
        screen = prompt_for(state, LANGUAGE).lines
        return any(
            isinstance(m, msg.Display) and m.correlation_id == correlation_id
            and m.lines == screen
            for m in self.register.received
        )

    def messages(self, kind: type[Any], correlation_id: str) -> list[Any]:
        """The messages of one type the daemon sent about one sale."""
        return [
            m
            for m in self.register.received
            if isinstance(m, kind) and getattr(m, "correlation_id", None) == correlation_id
        ]

    async def record(self) -> dict[str, Any]:
        """Everything the simulated account received (``GET /_sim/record``)."""
        async with httpx.AsyncClient(base_url=self.sim.base_url) as http:
            answer = await http.get("/_sim/record")
        assert answer.status_code == 200, answer.text
        record: dict[str, Any] = answer.json()
        return record

    async def close(self) -> None:
        """Stop the daemon if it still runs, then the sales in flight and the emulator."""
        for run in self.runs:
            if run.process.returncode is None:
                with contextlib.suppress(AssertionError):
                    await run.terminate()
        for task in self._sales:
            task.cancel()
        for task in self._sales:
            with contextlib.suppress(BaseException):
                await task
        await self.register.close()


def sim_config() -> SimConfig:
    """The simulated account: one PDV terminal, frozen time starting at the real time."""
    return SimConfig(
        access_token=TOKEN,
        webhook_secret=WEBHOOK_SECRET,
        devices=(SimDevice(id=DEVICE, store_id="1000001", pos_id=LANE, external_pos_id="LANE1"),),
        time_scale=0.0,
        collector_id=COLLECTOR_ID,
    )


def write_token(path: Path, mode: int = 0o600) -> Path:
    """The access token file, as an installer would write it."""
    path.write_text(TOKEN + "\n", encoding="utf-8")
    os.chmod(path, mode)
    return path


def daemon_toml(
    *, tmp: Path, base_url: str, register: str, token_file: Path, extra: str = ""
) -> str:
    """A complete daemon configuration: one lane pinned to the simulator's terminal, no relay."""
    return f"""\
[store]
id = "{STORE_ID}"
site = "MLA"
collector_id = {COLLECTOR_ID}
language = "{LANGUAGE}"

[cloud]
base_url = "{base_url}"
access_token_file = "{token_file}"
read_timeout = 5.0

[journal]
path = "{tmp / 'journal.sqlite3'}"

[control]
socket = "{tmp / 'control.sock'}"

[timers]
poll_fallback_after = 1
verify_initial_backoff = 1
verify_max_backoff = 1

[logging]
level = "info"
format = "json"
{extra}
[[lanes]]
number = {LANE}
register = "{register}"
terminal = "{DEVICE}"
"""
