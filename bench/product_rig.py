"""The whole product for end-to-end benchmarks: a real ``pointd run`` among simulators.

``ProductRig`` starts the Mercado Pago cloud simulator and one register emulator per lane
on a real pty in the benchmark's own event loop, and, as subprocesses exactly as they are
deployed, ``pointd relay`` on SQLite (unless the rig runs without a relay) and the daemon,
``python -m pointd.cli run --config <generated TOML>``. The daemon therefore has a process
and an event loop of its own: the footprint benchmark reads it in /proc, and the latency
benchmark's simulators do not queue their work in front of the daemon's.

The simulator is subclassed only to time things (``TimedCloudSimulator``): when an intent
reaches a final state and when its webhook POST starts and is answered, with
``time.monotonic_ns`` (CLOCK_MONOTONIC, the same clock in every process); and, optionally,
to draw the customer's time at the terminal per sale, so that sales do not all end in step
with a 1 s poll.

No USB library is needed: each lane is pinned to its simulated terminal by device id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pointd.cloud.sites import Site  # noqa: E402
from pointd.register import messages as msg  # noqa: E402
from pointd.relay.service import INTAKE_PATH  # noqa: E402
from pointd.sim.cloud import CloudSimulator, SimConfig  # noqa: E402
from pointd.sim.cloud.config import Delays, SimDevice  # noqa: E402
from pointd.sim.cloud.world import Delivery, SimIntent  # noqa: E402
from pointd.sim.register import RegisterEmulator  # noqa: E402

STORE_ID = "bench-store"
SITE = Site.MLB
FINAL_INTENT_STATES = frozenset({"FINISHED", "CANCELED", "ERROR", "ABANDONED"})
RELAY_LISTENING = re.compile(r"pointd relay listening on http://127\.0\.0\.1:(\d+)/")
# A cold `pointd run` imports the whole stack, replays the journal and refreshes the
# terminal list before it answers HELLO: about a second here; this bounds a broken start.
DAEMON_START_TIMEOUT = 60.0
# SIGTERM lets the daemon finish its journal write; it stops in milliseconds.
DAEMON_STOP_TIMEOUT = 15.0
# `pointd relay` waits for a store's open long-poll (up to its 25 s wait) before it exits on
# SIGTERM; its database is thrown away here, so it is killed after this.
RELAY_STOP_TIMEOUT = 0.5


def device_id(lane: int) -> str:
    """The simulated terminal pinned to ``lane``."""
    return f"PAX_A910__BENCH{lane:04d}"


def toml_text(table: Mapping[str, Any]) -> str:
    """A TOML document for the daemon's configuration (tables, arrays of tables, scalars)."""
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, str):
            return json.dumps(value)  # a TOML basic string for the characters used here
        raise TypeError(f"no TOML form for {value!r}")

    def body(mapping: Mapping[str, Any], prefix: str) -> None:
        nested = {k: v for k, v in mapping.items() if isinstance(v, dict | list)}
        for key, value in mapping.items():
            if key not in nested:
                lines.append(f"{key} = {scalar(value)}")
        for key, value in nested.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                lines.append(f"\n[{name}]")
                body(value, name + ".")
            else:
                for item in value:
                    lines.append(f"\n[[{name}]]")
                    body(item, name + ".")

    body(table, "")
    return "\n".join(lines).lstrip() + "\n"


@dataclass
class SaleTimes:
    """Monotonic nanosecond timestamps the simulator takes for one intent."""

    final_ns: int | None = None
    final_state: str | None = None
    webhook_ns: int | None = None
    webhook_answered_ns: int | None = None


class TimedCloudSimulator(CloudSimulator):
    """The cloud simulator, timing final states and webhook sends per intent."""

    def __init__(
        self,
        config: SimConfig,
        *,
        customer_delay: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(config)
        self.times: dict[str, SaleTimes] = {}
        world = self.world
        move = world._move
        delay_before = world._delay_before

        def timed_move(intent: SimIntent, state: str, at: float) -> None:
            if state in FINAL_INTENT_STATES:
                times = self.times.setdefault(intent.id, SaleTimes())
                times.final_ns, times.final_state = time.monotonic_ns(), state
            move(intent, state, at)

        def customer_delay_before(state: str) -> float:
            if state == "PROCESSING" and customer_delay is not None:
                return customer_delay()
            return delay_before(state)

        # Instance attributes win over the class's methods: the world's own calls come here.
        world._move = timed_move  # type: ignore[method-assign]
        world._delay_before = customer_delay_before  # type: ignore[method-assign]

    async def send_webhook(self, delivery: Delivery) -> int | None:
        """Timestamp the start of a final-state POST and its answer."""
        if delivery.state not in FINAL_INTENT_STATES or delivery.attempt != 1:
            return await super().send_webhook(delivery)
        times = self.times.setdefault(delivery.data_id, SaleTimes())
        times.webhook_ns = time.monotonic_ns()
        status = await super().send_webhook(delivery)
        times.webhook_answered_ns = time.monotonic_ns()
        return status


@dataclass
class RigOptions:
    """What to start: lanes, relay or not, simulator delays and daemon timers."""

    lanes: int = 10
    relay: bool = True
    delays: Delays = field(
        default_factory=lambda: Delays(take=0.05, read_card=0.05, authorise=0.05, close=0.05)
    )
    # Seconds the customer takes before the card is read, drawn per sale; None: fixed delay.
    customer_delay: Callable[[], float] | None = None
    timers: dict[str, float] = field(default_factory=dict)
    canary_interval: float = 60.0
    log_level: str = "warning"


class ProductRig:
    """Simulators, relay, register emulators and a ``pointd run`` subprocess (``async with``)."""

    def __init__(self, state_dir: Path, options: RigOptions) -> None:
        self.state_dir = state_dir
        self.options = options
        self.access_token = "TEST-" + secrets.token_hex(16)
        self.webhook_secret = secrets.token_hex(32)
        self.store_token = secrets.token_urlsafe(24)
        self.sim: TimedCloudSimulator | None = None
        self.relay_port = 0
        self.registers: dict[int, RegisterEmulator] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.config_path = state_dir / "pointd.toml"
        self.log_path = state_dir / "daemon.log"
        self.relay_log_path = state_dir / "relay.log"
        self.relay_process: subprocess.Popen[bytes] | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.process is not None
        return self.process.pid

    async def __aenter__(self) -> ProductRig:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        options = self.options
        if options.relay:
            await self._start_relay()
        webhook_url = (
            f"http://127.0.0.1:{self.relay_port}{INTAKE_PATH}" if options.relay else None
        )
        self.sim = await self._stack.enter_async_context(
            TimedCloudSimulator(
                SimConfig(
                    access_token=self.access_token,
                    webhook_secret=self.webhook_secret,
                    site=SITE,
                    devices=tuple(
                        SimDevice(id=device_id(lane), pos_id=lane, external_pos_id=f"LANE{lane}")
                        for lane in range(1, options.lanes + 1)
                    ),
                    delays=options.delays,
                    time_scale=1.0,
                    webhook_url=webhook_url,
                ),
                customer_delay=options.customer_delay,
            )
        )
        for lane in range(1, options.lanes + 1):
            self.registers[lane] = await RegisterEmulator.open_pty()
        self.config_path.write_text(toml_text(self._daemon_config()), encoding="utf-8")
        self.process = self._spawn(["run", "--config", str(self.config_path)], self.log_path)
        await self._await_daemon()

    async def _await_daemon(self) -> None:
        hellos = asyncio.gather(
            *(emulator.hello(within=DAEMON_START_TIMEOUT) for emulator in self.registers.values())
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DAEMON_START_TIMEOUT
        while not hellos.done():
            if self.process is not None and self.process.poll() is not None:
                hellos.cancel()
                with contextlib.suppress(BaseException):
                    await hellos
                raise RuntimeError(
                    f"pointd run exited with {self.process.returncode}: {self.daemon_log_tail()}"
                )
            if loop.time() > deadline:
                hellos.cancel()
                raise RuntimeError(f"pointd run did not answer HELLO: {self.daemon_log_tail()}")
            await asyncio.wait({hellos}, timeout=0.1)
        await hellos

    def daemon_log_tail(self, lines: int = 20) -> str:
        """The end of the daemon's output, for an error message."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no daemon output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no daemon output)"

    async def __aexit__(self, *exc_info: object) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, DAEMON_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for emulator in self.registers.values():
            await emulator.close()
        await self._stack.aclose()
        relay, self.relay_process = self.relay_process, None
        if relay is not None and relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(RELAY_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()

    async def _start_relay(self) -> None:
        config = {
            "server": {"host": "127.0.0.1"},
            "intake": {"webhook_secret_file": self._secret_file("relay_webhook_secret",
                                                                self.webhook_secret)},
            "storage": {"backend": "sqlite",
                        "sqlite_path": str(self.state_dir / "relay.sqlite3")},
            "stores": [{"id": STORE_ID,
                        "token_sha256": hashlib.sha256(self.store_token.encode()).hexdigest()}],
        }
        relay_config = self.state_dir / "relay.toml"
        relay_config.write_text(toml_text(config), encoding="utf-8")
        self.relay_process = self._spawn(
            ["relay", "--config", str(relay_config), "--port", "0", "--log-level", "warning"],
            self.relay_log_path,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DAEMON_START_TIMEOUT
        while True:
            found = RELAY_LISTENING.search(self.relay_log_path.read_text(errors="replace"))
            if found:
                self.relay_port = int(found.group(1))
                return
            if self.relay_process.poll() is not None or loop.time() > deadline:
                raise RuntimeError(f"pointd relay did not start: {self.relay_log_path}")
            await asyncio.sleep(0.05)

    def _spawn(self, arguments: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        # Not under systemd: no READY=1 or watchdog pings to send.
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        with log_path.open("wb") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "pointd.cli", *arguments],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def _daemon_config(self) -> dict[str, Any]:
        assert self.sim is not None
        options = self.options
        config: dict[str, Any] = {
            "store": {"id": STORE_ID, "site": SITE.value, "collector_id": 123456789,
                      "language": "es"},
            "cloud": {"base_url": self.sim.base_url,
                      "access_token_file": self._secret_file("mp_access_token",
                                                             self.access_token),
                      "webhook_secret_file": self._secret_file("mp_webhook_secret",
                                                               self.webhook_secret)},
            "journal": {"path": str(self.state_dir / "journal.sqlite3")},
            "control": {"socket": str(self.state_dir / "control.sock")},
            "logging": {"level": options.log_level, "format": "json"},
        }
        if options.relay:
            config["relay"] = {
                "url": f"http://127.0.0.1:{self.relay_port}",
                "store_token_file": self._secret_file("relay_store_token", self.store_token),
                "canary_interval": options.canary_interval,
                "silence_alarm": max(180.0, 3 * options.canary_interval),
            }
        if options.timers:
            config["timers"] = dict(options.timers)
        config["lanes"] = [
            {"number": lane, "register": emulator.device_path, "baud": 115200,
             "terminal": device_id(lane)}
            for lane, emulator in self.registers.items()
        ]
        return config

    def _secret_file(self, name: str, value: str) -> str:
        path = self.state_dir / name
        path.write_text(value, encoding="utf-8")
        path.chmod(0o600)
        return str(path)


@dataclass
class LaneLoadResult:
    """What continuous selling on the rig's lanes achieved."""

    sales: int
    seconds: float
    outcomes: dict[str, int]


async def sell_continuously(
    rig: ProductRig,
    *,
    total: int | None = None,
    seconds: float | None = None,
    amount_cents: int = 1500,
    on_sale_start: Callable[[int, str], None] | None = None,
    on_sale_end: Callable[[int, str, msg.Outcome], None] | None = None,
    sale_timeout: float = 60.0,
) -> LaneLoadResult:
    """Every lane sells, hands over and sells again until ``total`` sales or ``seconds``."""
    if (total is None) == (seconds is None):
        raise ValueError("give exactly one of total and seconds")
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop_at = None if seconds is None else started + seconds
    budget = total
    outcomes: dict[str, int] = {}
    done = 0

    def take_one() -> bool:
        nonlocal budget
        if stop_at is not None:
            return loop.time() < stop_at
        assert budget is not None
        if budget <= 0:
            return False
        budget -= 1
        return True

    async def lane_loop(lane: int, emulator: RegisterEmulator) -> None:
        nonlocal done
        while take_one():
            cid = emulator.new_correlation_id()
            if on_sale_start is not None:
                on_sale_start(lane, cid)
            outcome = await emulator.sale(amount_cents, correlation_id=cid, within=sale_timeout)
            if on_sale_end is not None:
                on_sale_end(lane, cid, outcome.outcome)
            outcomes[outcome.outcome.value] = outcomes.get(outcome.outcome.value, 0) + 1
            if outcome.outcome is msg.Outcome.APPROVED:
                await emulator.handover_done(cid)
            done += 1

    await asyncio.gather(*(lane_loop(lane, em) for lane, em in rig.registers.items()))
    return LaneLoadResult(done, loop.time() - started, outcomes)


def uniform_delay(low: float, high: float, seed: int = 9) -> Callable[[], float]:
    """A reproducible source of delays spread evenly over [low, high)."""
    rng = random.Random(seed)
    return lambda: rng.uniform(low, high)
