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
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pointd.core.states import SaleState
from pointd.register import messages as msg
from pointd.register.prompts import prompt_for
from pointd.rig import PACKAGE_ROOT, DaemonRun, NotifySocket, child_environment, spawn_daemon
from pointd.sim.cloud import CloudSimulator, SimConfig, SimDevice
from pointd.sim.register.emulator import RegisterEmulator, SaleOutcome

__all__ = ["NotifySocket", "child_environment"]

PROJECT_ROOT = PACKAGE_ROOT
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


async def run_pointd(config: Path, *, within: float = START_TIMEOUT) -> tuple[int, str, str]:
    """Run ``pointd run`` to its exit (for start-up failures): exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pointd.cli", "run", "--config", str(config),
        cwd=PROJECT_ROOT,
        env=child_environment(),
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
class Store:
    """The cloud simulator, one lane's register emulator and a (re)startable daemon."""

    tmp: Path
    sim: CloudSimulator
    register: RegisterEmulator
    notify: NotifySocket
    config_path: Path
    control_socket: Path
    runs: list[DaemonRun] = field(default_factory=list)
    _sales: list[asyncio.Task[SaleOutcome]] = field(default_factory=list)

    @property
    def daemon(self) -> DaemonRun:
        """The latest daemon run."""
        return self.runs[-1]

    async def start_daemon(self) -> DaemonRun:
        """Start ``pointd run``; return once it sent READY=1 and the lane can take a sale."""
        run = await self.spawn()
        await run.wait_ready(START_TIMEOUT)
        # A cashier looks at the lane before selling: wait until status says it is ready.
        await self.wait_status(
            "lane 1 ready",
            lambda status: status["cloud"]["reachable"]
            and status["lanes"][0]["condition"] == "ready"
            and status["lanes"][0]["register"]["connected"],
        )
        return run

    async def spawn(self, command: tuple[str, list[str]] | None = None) -> DaemonRun:
        """Start the daemon process (``command``: another entry point) without waiting."""
        log_path = self.tmp / f"daemon-{len(self.runs) + 1}.log"
        run = await spawn_daemon(self.config_path, log_path, self.notify,
                                 watchdog_usec=WATCHDOG_USEC, command=command)
        self.runs.append(run)
        return run

    async def pointctl_raw(self, *args: str) -> tuple[int, str, str]:
        """Run ``pointctl --json ARGS`` against this store's socket: exit code, stdout, stderr."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pointd.control.cli",
            "--socket", str(self.control_socket), "--json", *args,
            cwd=PROJECT_ROOT,
            env=child_environment(),
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
            if run.child.running:
                await run.terminate(STOP_TIMEOUT)
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
