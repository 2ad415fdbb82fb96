"""Fault injection: many randomized sales through the whole product while its parts fail.

Theory of operation
-------------------
``python bench/chaos.py --sales 500 --seed N`` starts the product the way a store runs it:

* ``pointd run`` as a real subprocess (``python -m pointd.cli run --config <toml>``), its
  readiness read from a ``NOTIFY_SOCKET`` the run owns, exactly as systemd would, on the
  Payment Intent backend or (``--backend orders``) the Orders API;
* ``pointd relay`` as a real subprocess on SQLite, the simulator's webhooks going through it;
* in this process: the Mercado Pago cloud simulator (time_scale 1, short terminal delays,
  webhook retries every few seconds); one register per lane speaking the protocol through
  the second, independent implementation (``pointd.sim.ecr``), the odd lanes on a real pty
  behind a stable symlink (the daemon opens the symlink, as it would ``/dev/pointd/register``)
  and the even lanes on the LAN (the daemon dials ``socket://``); and a TCP proxy between the
  daemon and the simulator that can swallow the answer to a create.

A cashier per lane sells continuously (``pointd.rig.chaos.cashier``). The seed draws every
sale (amount, scripted outcome, webhook quirk, create failure, stale or refused GETs, a
cashier's cancel) and, before anything runs, the whole schedule of faults against the parts
(``pointd.rig.chaos.plan``): when each lands, its kind and every choice it makes. The kinds
are SIGKILL of the daemon (at any moment, while it starts, while it recovers just after
READY, with a create or a payment read in flight), of the relay, or of both at once; an API
timeout after the simulator acted; 429 and 5xx bursts; serial noise, a corrupt frame, a
lost ACK; a register cable pulled and plugged back. The first sales and the first faults walk
through every kind in a seeded order, so even a short run exercises all of them.

A fault is *planned* when its moment comes and *fired* only when the part that plays it saw
it happen: the process manager found the process alive and killed it (before READY, for a
kill while starting), the proxy swallowed a create's answer, a trip wire was crossed, the
register damaged a frame, the cable was in, the simulator answered the error or played the
quirk (its record's ``faults_fired``). The report shows both side by side.

When every sale has ended, the run waits for the notifications to settle, stops the daemon,
reads the simulator's record, the relay's store stream and the journal, and checks the
money-safety rules (``pointd.rig.chaos.invariants``). It prints the counts and exits 1 on any
violation (2 if the product could not be run at all). Timing is real, so two runs with one
seed draw the same sales and the same fault schedule (its digest is printed) but may
interleave them differently; the violation list says which sale to look at.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.run_record import describe_machine, print_machine, save_json  # noqa: E402
from pointd.cloud.sites import Site  # noqa: E402
from pointd.logging import configure_logging  # noqa: E402
from pointd.rig import DAEMON_STOP_TIMEOUT, RelayProcess, RigLane, StoreRig, StoreSpec  # noqa: E402
from pointd.rig.chaos.cashier import (  # noqa: E402
    Cashier,
    Desk,
    SaleNote,
    Supervisor,
    Tally,
    Timings,
)
from pointd.rig.chaos.evidence import store_evidence  # noqa: E402
from pointd.rig.chaos.invariants import RULES, Checked, check, count_by_rule  # noqa: E402
from pointd.rig.chaos.plan import (  # noqa: E402
    SalePlan,
    SalePlanner,
    ScheduledFault,
    fault_schedule,
    schedule_digest,
)
from pointd.sim.cloud import CloudSimulator  # noqa: E402
from pointd.sim.cloud.config import Delays  # noqa: E402
from pointd.sim.ecr.lines import PtyCable, TcpCable  # noqa: E402
from pointd.sim.ecr.register import Register  # noqa: E402

STORE_ID = "chaos"
SITE = Site.MLB
COLLECTOR_ID = 123456789
BACKENDS = ("payment-intent", "orders")

# Simulated seconds per terminal step: a sale takes about half a second at the terminal.
SIM_DELAYS = Delays(take=0.1, read_card=0.15, authorise=0.1, close=0.05, settle=1.5)
# An untaken intent is abandoned after this long, and an unanswered webhook retried this
# often; Mercado Pago's 15 minutes would outlast the run.
SIM_ABANDON_AFTER = 6.0
SIM_WEBHOOK_RETRY = 2.0
SIM_WEBHOOK_ATTEMPTS = 20

# Daemon timers: the smallest the configuration accepts, so that a sale whose notification
# never comes is polled within a second.
DAEMON_TIMERS = {
    "poll_fallback_after": 1.0,
    "verify_initial_backoff": 1.0,
    "verify_max_backoff": 2.0,
    "confirmation_escalate_after": 10.0,
    "abandon_after": 60.0,
    "create_reconcile_attempts": 5,
}
# The daemon gives up on an answer after this; the proxy holds a swallowed answer longer.
DAEMON_READ_TIMEOUT = 2.0
STALL_HOLD = DAEMON_READ_TIMEOUT + 1.0

# A trip wire not crossed within this long is taken down again (no such request came).
TRIP_WIRE_WAIT = 10.0
# Webhook retries and the daemon's relay consumer catch up within this after the last sale.
NOTIFICATION_SETTLE_TIMEOUT = 45.0
SETTLE_LOOK = 1.0
# Real seconds a sale takes a lane, about, with faults: the schedule runs this far ahead
# (a run that outlasts it goes on without faults against the parts).
SALE_SECONDS = 8.0

EXIT_OK = 0
EXIT_VIOLATIONS = 1
EXIT_HARNESS = 2

FAILURE_LOG_LEVELS = ('"level": "error"', '"level": "critical"')

# Faults against the running parts, and their relative weights.
PART_FAULT_WEIGHTS = {
    "daemon_sigkill": 4,
    "daemon_sigkill_starting": 1,
    "daemon_sigkill_recovering": 1,
    "daemon_sigkill_mid_create": 1,
    "daemon_sigkill_mid_verify": 1,
    "relay_sigkill": 2,
    "daemon_and_relay_down": 1,
    "api_timeout_after_create": 2,
    "api_429_burst": 1,
    "api_5xx_burst": 1,
    "serial_noise": 1,
    "serial_corrupt_frame": 1,
    "serial_lost_ack": 1,
    "register_unplug": 2,
}
# What the second register counts, by the part fault that made it.
REGISTER_FIRED = {
    "serial_noise": "serial_noise",
    "serial_corrupt_frame": "serial_corrupt_frame",
    "serial_lost_ack_sent": "serial_lost_ack",
    "serial_lost_ack_received": "serial_lost_ack",
}
# The cashiers' patience, on the daemon timers above.
TIMINGS = Timings()


@dataclass(frozen=True)
class ChaosOptions:
    """What to run."""

    sales: int
    seed: int
    lanes: int = 4
    fault_interval: float = 2.5
    backend: str = "payment-intent"
    log_level: str = "warning"
    relay_delivery: str = "stream"  # the daemon's relay.delivery


def device_id(lane: int) -> str:
    """The simulated terminal pinned to ``lane``."""
    return f"PAX_A910__CHAOS{lane:04d}"


def fault_params(kind: str, rng: random.Random, lanes: int) -> dict[str, Any]:
    """Every choice a fault will make, drawn when the schedule is."""
    lane = rng.randint(1, lanes)
    if kind in ("daemon_sigkill", "daemon_sigkill_mid_create", "daemon_sigkill_mid_verify"):
        return {"down": round(rng.uniform(0.0, 1.5), 3)}
    if kind == "daemon_sigkill_starting":
        # A restarted daemon says READY about a second after it was started.
        return {"into_start": round(rng.uniform(0.05, 0.6), 3)}
    if kind == "daemon_sigkill_recovering":
        return {"after_ready": round(rng.uniform(0.0, 0.3), 3)}
    if kind == "relay_sigkill":
        return {"down": round(rng.uniform(0.5, 4.0), 3)}
    if kind == "daemon_and_relay_down":
        return {"down": round(rng.uniform(0.5, 3.0), 3), "relay_first": rng.random() < 0.5}
    if kind in ("api_429_burst", "api_5xx_burst"):
        return {"gets": rng.randint(2, 8)}
    if kind == "serial_noise":
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        return {"lane": lane, "noise": noise.hex()}
    if kind == "serial_lost_ack":
        return {"lane": lane, "sent": rng.random() < 0.5}
    if kind == "register_unplug":
        return {"lane": lane, "out": round(rng.uniform(0.2, 2.0), 3)}
    if kind == "serial_corrupt_frame":
        return {"lane": lane}
    return {}


def fault_units(fault: ScheduledFault) -> int:
    """How many times a fault is planned to fire: a burst's every error answer, else once."""
    return int(fault.params.get("gets", 1))


def is_create(request_line: bytes) -> bool:
    """Whether an HTTP request line creates a payment intent or an order."""
    method, _, rest = request_line.partition(b" ")
    path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
    return method == b"POST" and (path.endswith(b"/payment-intents") or path == b"/v1/orders")


def is_verify(request_line: bytes) -> bool:
    """Whether an HTTP request line reads a payment or an order (the daemon verifying)."""
    method, _, rest = request_line.partition(b" ")
    path = rest.split(b" ", 1)[0]
    return method == b"GET" and (path.startswith(b"/v1/payments/")
                                 or path.startswith(b"/v1/orders/"))


class StallingProxy:
    """TCP between the daemon and the simulator; can swallow an answer or trip a wire.

    A swallowed create reached the simulator, which created the intent or order and answered;
    the daemon hears nothing until its read timeout, which is the "timeout after the server
    acted" that rule 3 is about. A trip wire reports the moment a chosen request has been
    passed on, so that the daemon can be killed while that request is in flight.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._armed = 0
        self._wires: list[tuple[Callable[[bytes], bool], asyncio.Future[None]]] = []
        self.stalled = 0
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def arm(self) -> None:
        """Swallow the answer to the next create."""
        self._armed += 1

    def trip_wire(self, matches: Callable[[bytes], bool]) -> asyncio.Future[None]:
        """A future done once the next matching request has been passed to the simulator."""
        wire: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wires.append((matches, wire))
        return wire

    def _trip(self, request_line: bytes) -> None:
        for matches, wire in list(self._wires):
            if matches(request_line):
                self._wires.remove((matches, wire))
                if not wire.done():
                    wire.set_result(None)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            writer.close()
            return
        stall = asyncio.Event()

        async def to_server() -> None:
            while data := await reader.read(65536):
                request_line = data.split(b"\r\n", 1)[0]
                if self._armed and is_create(request_line):
                    self._armed -= 1
                    self.stalled += 1
                    stall.set()
                up_writer.write(data)
                await up_writer.drain()
                if self._wires:
                    self._trip(request_line)

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                if stall.is_set():
                    await asyncio.sleep(STALL_HOLD)
                    return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(to_server()), asyncio.ensure_future(to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for stream in (writer, up_writer):
                with contextlib.suppress(Exception):
                    stream.close()


@dataclass
class Restarts:
    """How long each restart took to READY (daemon) or to listening (relay)."""

    daemon: list[float] = field(default_factory=list)
    relay: list[float] = field(default_factory=list)


class ChaosRun:
    """The product under fault injection, and the evidence it leaves."""

    def __init__(self, options: ChaosOptions, state_dir: Path) -> None:
        self.options = options
        self.state_dir = state_dir
        # Sales and faults draw from separate streams so that adding a fault kind does not
        # change which sales a seed makes.
        self.planner = SalePlanner(random.Random(options.seed), options.sales, options.lanes)
        self.schedule = fault_schedule(
            random.Random(options.seed * 7919 + 1), PART_FAULT_WEIGHTS,
            mean_interval=options.fault_interval,
            horizon=SALE_SECONDS * options.sales / options.lanes + 60.0,
            params=lambda kind, rng: fault_params(kind, rng, options.lanes),
        )
        self.tally = Tally()
        self.restarts = Restarts()
        # Each register's account of the wire, kept with the logs for a failed run.
        self._traces = {lane: (state_dir / f"register-{lane}.trace").open("w", encoding="utf-8")
                        for lane in self._lanes()}
        self.registers = {lane: Register(name=f"lane-{lane}", on_trace=self._tracer(lane))
                          for lane in self._lanes()}
        self.cables: dict[int, PtyCable | TcpCable] = {
            lane: (PtyCable(register, state_dir / f"register-{lane}") if lane % 2
                   else TcpCable(register))
            for lane, register in self.registers.items()
        }
        self.cashiers: list[Cashier] = []
        self.proxy: StallingProxy | None = None
        self._rig: StoreRig | None = None
        self._sold = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self._stack = contextlib.AsyncExitStack()

    def _tracer(self, lane: int) -> Callable[[str], None]:
        trace = self._traces[lane]

        def write(line: str) -> None:
            trace.write(f"{time.time():.3f} {line}\n")

        return write

    # --- start and stop -----------------------------------------------------------------

    async def __aenter__(self) -> ChaosRun:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        self._http = await self._stack.enter_async_context(httpx.AsyncClient(timeout=30.0))
        for cable in self.cables.values():
            if isinstance(cable, PtyCable):
                cable.plug()
            else:
                await cable.plug()
        self._rig = StoreRig(self.state_dir, self._spec())
        await self.rig.__aenter__()
        upstream = int(self.sim.base_url.rsplit(":", 1)[1])
        self.proxy = StallingProxy(upstream)
        await self.proxy.start()
        await self.rig.start_daemon(cloud_url=f"http://127.0.0.1:{self.proxy.port}")
        desk = Desk(script=self._script, payments=self._payments,
                    control_socket=lambda _lane: self.state_dir / "control.sock")
        supervisor = Supervisor(desk, self.tally)
        self.cashiers = [Cashier(lane, register, planner=self.planner, desk=desk,
                                 supervisor=supervisor, tally=self.tally, timings=TIMINGS)
                         for lane, register in self.registers.items()]

    def _spec(self) -> StoreSpec:
        """The store under fault injection: ``pointd run`` and ``pointd relay`` as processes."""
        options = self.options
        return StoreSpec(
            store_id=STORE_ID,
            site=SITE,
            collector_id=COLLECTOR_ID,
            language="en",
            lanes=tuple(RigLane(lane, device_id(lane), register=cable.device_path)
                        for lane, cable in self.cables.items()),
            backend=options.backend,
            relay="process",
            daemon="process",
            start_daemon=False,  # it talks to the simulator through the stalling proxy
            sim={
                "delays": SIM_DELAYS,
                "time_scale": 1.0,
                "abandon_after": SIM_ABANDON_AFTER,
                "webhook_retry_interval": SIM_WEBHOOK_RETRY,
                "webhook_max_attempts": SIM_WEBHOOK_ATTEMPTS,
            },
            daemon_config={
                "cloud": {"connect_timeout": 1.0, "read_timeout": DAEMON_READ_TIMEOUT},
                "relay": {"canary_interval": 5.0, "silence_alarm": 15.0,
                          "reconnect_max_backoff": 1.0, "delivery": options.relay_delivery},
                "timers": DAEMON_TIMERS,
                "terminals": {"refresh_interval": 30.0},
                "logging": {"level": options.log_level, "format": "json"},
            },
        )

    async def __aexit__(self, *exc_info: object) -> None:
        if self._rig is not None:
            await self._rig.aclose()
        if self.proxy is not None:
            await self.proxy.close()
        for cable in self.cables.values():
            await cable.close()
        for trace in self._traces.values():
            trace.close()
        await self._stack.aclose()

    @property
    def rig(self) -> StoreRig:
        """The store on simulators."""
        assert self._rig is not None
        return self._rig

    @property
    def sim(self) -> CloudSimulator:
        """The cloud simulator."""
        return self.rig.sim

    @property
    def relay(self) -> RelayProcess:
        """The ``pointd relay`` process."""
        relay = self.rig.relay
        assert isinstance(relay, RelayProcess)
        return relay

    @property
    def notes(self) -> list[SaleNote]:
        """What every register saw of every sale."""
        return [note for cashier in self.cashiers for note in cashier.notes]

    def _lanes(self) -> range:
        return range(1, self.options.lanes + 1)

    # --- the simulator's control API ------------------------------------------------------

    async def _sim(self, method: str, path: str, body: Any = None) -> Any:
        assert self._http is not None
        response = await self._http.request(method, f"{self.sim.base_url}{path}", json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    async def _script(self, plan: SalePlan) -> None:
        await self._sim("POST", "/_sim/scenarios", dict(plan.scenario))

    async def _payments(self) -> list[Mapping[str, Any]]:
        record = await self._sim("GET", "/_sim/record")
        payments: list[Mapping[str, Any]] = record["payments"]
        return payments

    # --- selling --------------------------------------------------------------------------

    async def sell(self) -> None:
        """Run every lane's sales while the faults run; return when all sales ended."""
        faults = asyncio.ensure_future(self._inject_faults())
        try:
            await asyncio.gather(*(cashier.run() for cashier in self.cashiers))
        finally:
            self._sold.set()
            await faults

    # --- faults against the running parts -----------------------------------------------

    async def _inject_faults(self) -> None:
        """Apply the seed's schedule until the selling is over.

        Each fault waits its scheduled gap after the previous one has ended (a restart takes
        a second or so), so that faults do not pile up into one long outage.
        """
        previous = 0.0
        for fault in self.schedule:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sold.wait(), fault.at - previous)
            previous = fault.at
            if self._sold.is_set():
                return
            self.tally.planned[fault.kind] += fault_units(fault)
            if await self._apply(fault):
                self.tally.fired[fault.kind] += 1

    async def _apply(self, fault: ScheduledFault) -> bool:
        """Play one fault; whether it was seen to happen (API bursts: counted by the sim)."""
        p = fault.params
        actions: dict[str, Callable[[], Awaitable[bool]]] = {
            "daemon_sigkill": lambda: self._kill_daemon(p["down"]),
            "daemon_sigkill_starting": lambda: self._kill_while_starting(p["into_start"]),
            "daemon_sigkill_recovering": lambda: self._kill_while_recovering(p["after_ready"]),
            "daemon_sigkill_mid_create": lambda: self._kill_daemon_on(is_create, p["down"]),
            "daemon_sigkill_mid_verify": lambda: self._kill_daemon_on(is_verify, p["down"]),
            "relay_sigkill": lambda: self._kill_relay(p["down"]),
            "daemon_and_relay_down": lambda: self._both_down(p["down"], p["relay_first"]),
            "api_timeout_after_create": self._stall_create,
            "api_429_burst": lambda: self._burst({"get_429": p["gets"], "retry_after": 1}),
            "api_5xx_burst": lambda: self._burst({"get_5xx": p["gets"]}),
            "serial_noise": lambda: self._serial_noise(p["lane"], bytes.fromhex(p["noise"])),
            "serial_corrupt_frame": lambda: self._arm_register(
                self.registers[p["lane"]].corrupt_next_frame),
            "serial_lost_ack": lambda: self._arm_register(
                self.registers[p["lane"]].drop_next_ack_sent if p["sent"]
                else self.registers[p["lane"]].drop_next_ack_received),
            "register_unplug": lambda: self._unplug(p["lane"], p["out"]),
        }
        return await actions[fault.kind]()

    async def _kill(self) -> bool:
        """SIGKILL the daemon; whether it was alive to be killed."""
        run = self.rig.latest_run
        alive = run.running
        await run.kill()
        return alive

    async def _start_daemon(self) -> None:
        started = time.monotonic()
        await self.rig.start_daemon()
        self.restarts.daemon.append(time.monotonic() - started)

    async def _start_relay(self) -> None:
        started = time.monotonic()
        await self.relay.start()
        self.restarts.relay.append(time.monotonic() - started)

    async def _kill_daemon(self, down: float) -> bool:
        killed = await self._kill()
        await asyncio.sleep(down)
        await self._start_daemon()
        return killed

    async def _kill_while_starting(self, into_start: float) -> bool:
        """Kill the daemon, start it, and kill it again before it said READY."""
        await self._kill()
        run = await self.rig.start_daemon_process()
        await asyncio.sleep(into_start)
        fired = run.running and not run.seen("READY", "1")
        await run.kill()
        await self._start_daemon()
        return fired

    async def _kill_while_recovering(self, after_ready: float) -> bool:
        """Kill the daemon, and again just after READY, while recovery's effects run."""
        await self._kill()
        await self._start_daemon()
        await asyncio.sleep(after_ready)
        fired = await self._kill()
        await self._start_daemon()
        return fired

    async def _kill_daemon_on(self, matches: Callable[[bytes], bool], down: float) -> bool:
        """SIGKILL the daemon just after it sent such a request, before it hears the answer."""
        assert self.proxy is not None
        wire = self.proxy.trip_wire(matches)
        try:
            await asyncio.wait_for(asyncio.shield(wire), TRIP_WIRE_WAIT)
        except TimeoutError:
            wire.cancel()
            return False
        return await self._kill_daemon(down)

    async def _kill_relay(self, down: float) -> bool:
        alive = self.relay.child.running
        await self.relay.kill()
        await asyncio.sleep(down)
        await self._start_relay()
        return alive

    async def _both_down(self, down: float, relay_first: bool) -> bool:
        """The daemon and the relay dead at once (a power cut of the host running both)."""
        relay_alive, daemon_alive = self.relay.child.running, self.rig.latest_run.running
        kills = [self.relay.kill, self._kill]
        for kill in kills if relay_first else reversed(kills):
            await kill()
        await asyncio.sleep(down)
        await self._start_relay()
        await self._start_daemon()
        return relay_alive and daemon_alive

    async def _stall_create(self) -> bool:
        assert self.proxy is not None
        self.proxy.arm()
        return False  # the proxy counts the stall when a create comes

    async def _burst(self, faults: Mapping[str, Any]) -> bool:
        await self._sim("POST", "/_sim/faults", dict(faults))
        return False  # the simulator counts each error it answers

    async def _serial_noise(self, lane: int, noise: bytes) -> bool:
        self.registers[lane].inject_noise(noise)
        return False  # the register counts what it put on a line

    async def _arm_register(self, arm: Callable[[], None]) -> bool:
        arm()
        return False  # the register counts the frame it damaged

    async def _unplug(self, lane: int, out: float) -> bool:
        cable = self.cables[lane]
        if isinstance(cable, PtyCable):
            pulled = cable.unplug()
            await asyncio.sleep(out)
            cable.plug()
        else:
            pulled = await cable.unplug()
            await asyncio.sleep(out)
            await cable.plug()
        return pulled

    # --- settling and evidence -------------------------------------------------------------

    async def settle(self) -> None:
        """Let lost outcomes be asked for and notifications arrive, then stop the daemon."""
        await asyncio.gather(*(cashier.ask_lost_outcomes() for cashier in self.cashiers))
        await self._await_webhooks()
        await self._await_relay_drained()
        code = await self.rig.stop_daemon(DAEMON_STOP_TIMEOUT)
        if code != 0:
            raise RuntimeError(f"pointd run stopped with {code}:\n{self.rig.latest_run.log_tail()}")

    async def _await_webhooks(self) -> None:
        """Until every webhook of every intent was answered 2xx or ran out of attempts."""
        deadline = time.monotonic() + NOTIFICATION_SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            record = await self._sim("GET", "/_sim/record")
            last: dict[tuple[str, str], dict[str, Any]] = {}
            for attempt in record["webhooks"]:
                last[(attempt["data_id"], attempt["state"])] = attempt
            waiting = [a for a in last.values()
                       if not (a["status_code"] and 200 <= a["status_code"] < 300)
                       and a["attempt"] < SIM_WEBHOOK_ATTEMPTS]
            if not waiting:
                return
            await asyncio.sleep(SETTLE_LOOK)

    async def _await_relay_drained(self) -> None:
        """Until the daemon has acknowledged every event of its store's stream."""
        deadline = time.monotonic() + NOTIFICATION_SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            page = await self._relay_page(after=None)
            if all(event.get("kind") == "canary" for event in page):
                return
            await asyncio.sleep(SETTLE_LOOK)

    async def _relay_page(self, after: int | None) -> list[dict[str, Any]]:
        assert self._http is not None
        params: dict[str, Any] = {"wait": 0, "limit": 500}
        if after is not None:
            params["after"] = after
        response = await self._http.get(
            f"{self.relay.url}/stores/{STORE_ID}/events",
            params=params,
            headers={"authorization": f"Bearer {self.rig.secrets.store_token}"},
        )
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    async def check(self) -> Checked:
        """Count what fired where it fired; read every account and check the rules on them."""
        record = await self._sim("GET", "/_sim/record")
        self.tally.fired.update(record.get("faults_fired", {}))
        assert self.proxy is not None
        self.tally.fired["api_timeout_after_create"] += self.proxy.stalled
        for register in self.registers.values():
            for counted, kind in REGISTER_FIRED.items():
                self.tally.fired[kind] += register.fired[counted]
        stream: list[dict[str, Any]] = []
        after = 0
        while page := await self._relay_page(after):
            stream += page
            after = int(page[-1]["cursor"])
        evidence = store_evidence(store_id=STORE_ID, record=record,
                                  journal_path=self.state_dir / "journal.sqlite3",
                                  stream=stream, notes=self.notes,
                                  terminals=map(device_id, self._lanes()))
        return check(evidence)


def daemon_failures(log_path: Path) -> list[str]:
    """Error-level lines the daemon logged (it logs a failed effect and carries on)."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if any(level in line for level in FAILURE_LOG_LEVELS)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def report(options: ChaosOptions, run: ChaosRun, checked: Checked, wall: float,
           failures: list[str]) -> dict[str, Any]:
    """The run's figures as one JSON-ready mapping."""
    tally = run.tally
    notes = run.notes
    durations = sorted(n.seconds for n in notes)
    return {
        "benchmark": "chaos",
        "options": asdict(options),
        "wall_seconds": round(wall, 1),
        "sales": len(notes),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "faults": tally.faults(),
        "fault_schedule_digest": schedule_digest(run.schedule),
        "supervisor_overrides": dict(sorted(tally.overrides.items())),
        "results_withheld": tally.results_withheld,
        "daemon_restarts": len(run.restarts.daemon),
        "daemon_restart_to_ready_mean_s": round(_mean(run.restarts.daemon), 2),
        "relay_restarts": len(run.restarts.relay),
        "sale_seconds_p50": round(durations[len(durations) // 2], 2) if durations else 0.0,
        "sale_seconds_max": round(durations[-1], 2) if durations else 0.0,
        "checked": {rule: checked.cases[rule] for rule in RULES},
        "unexercised_rules": list(checked.unexercised),
        "passed": checked.passed,
        "violations_by_rule": count_by_rule(checked.violations),
        "violations": [str(v) for v in checked.violations],
        "daemon_error_lines": len(failures),
        "daemon_error_samples": failures[:5],
        "sale_errors": [f"{n.plan.correlation_id}: {n.error}" for n in notes if n.error][:10],
    }


def print_report(figures: dict[str, Any]) -> None:
    """The counts, then every violation."""
    print(f"\nsales: {figures['sales']} in {figures['wall_seconds']} s "
          f"(p50 {figures['sale_seconds_p50']} s, max {figures['sale_seconds_max']} s per sale)")
    print("outcomes:   " + ", ".join(f"{k} {v}" for k, v in figures["outcomes"].items()))
    print(f"faults:     {'kind':<28} planned  fired   "
          f"(schedule {figures['fault_schedule_digest']})")
    for kind, counts in figures["faults"].items():
        print(f"            {kind:<28} {counts['planned']:>7} {counts['fired']:>6}")
    print(f"            daemon restarts {figures['daemon_restarts']} (READY after "
          f"{figures['daemon_restart_to_ready_mean_s']} s mean), "
          f"relay restarts {figures['relay_restarts']}, supervisor overrides "
          f"{figures['supervisor_overrides'] or 'none'}")
    print("checked:    " + ", ".join(f"{k} {v}" for k, v in figures["checked"].items()))
    if figures["results_withheld"]:
        print(f"withheld:   {', '.join(figures['results_withheld'])} (STATUS showed the outcome; "
              "no RESULT came)")
    print("violations: " + ", ".join(f"{k} {v}" for k, v in figures["violations_by_rule"].items()))
    for line in figures["violations"]:
        print(f"  VIOLATION {line}")
    if figures["daemon_error_lines"]:
        print(f"daemon logged {figures['daemon_error_lines']} error lines, e.g.:")
        for line in figures["daemon_error_samples"]:
            print(f"  {line[:300]}")
    if figures["unexercised_rules"]:
        print("UNCHECKED   no case examined by: " + ", ".join(figures["unexercised_rules"]))
    total = sum(figures["violations_by_rule"].values())
    unchecked = len(figures["unexercised_rules"])
    print(f"\n{'PASS' if figures['passed'] else 'FAIL'}: {total} violation(s), "
          f"{unchecked} rule(s) that examined nothing")


async def run_chaos(options: ChaosOptions, state_dir: Path) -> dict[str, Any]:
    """One whole chaos run; its figures."""
    started = time.monotonic()
    async with ChaosRun(options, state_dir) as run:
        await run.sell()
        await run.settle()
        checked = await run.check()
    return report(options, run, checked, time.monotonic() - started,
                  [line for daemon in run.rig.runs for line in daemon_failures(daemon.log_path)])


def main(argv: list[str]) -> int:
    """``python bench/chaos.py --sales N --seed S``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sales", type=int, default=500, help="sales to make (default 500)")
    parser.add_argument("--seed", type=int, default=1,
                        help="RNG seed for the sales and the fault schedule")
    parser.add_argument("--lanes", type=int, default=4, help="checkout lanes (default 4)")
    parser.add_argument("--fault-interval", type=float, default=2.5,
                        help="mean seconds between faults against the parts (default 2.5)")
    parser.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0],
                        help="the daemon's cloud.backend (default payment-intent)")
    parser.add_argument("--state-dir", type=Path,
                        help="keep journal, relay database and logs here (default: a "
                             "temporary directory, removed unless the run fails)")
    parser.add_argument("--json", nargs="?", const="", default=None, metavar="PATH",
                        help="also write the figures as JSON (default bench/results/)")
    parser.add_argument("--relay-delivery", choices=["stream", "long-poll"], default="stream",
                        help="how the daemon reads the relay (relay.delivery; default stream)")
    args = parser.parse_args(argv)
    if args.sales < 1 or args.lanes < 1 or args.fault_interval <= 0:
        parser.error("--sales and --lanes must be at least 1, --fault-interval positive")
    options = ChaosOptions(args.sales, args.seed, args.lanes, args.fault_interval, args.backend,
                           relay_delivery=args.relay_delivery)
    configure_logging("warning", "console", sys.stderr)
    # The simulator drops create answers on purpose; uvicorn reports each as an error.
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    machine = describe_machine()
    print_machine("pointd chaos: randomized sales under injected faults", machine)
    temporary = args.state_dir is None
    # A short directory: the notify socket's path must fit in sockaddr_un.
    state_dir = Path(tempfile.mkdtemp(prefix="chaos-")) if temporary else args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    print(f"  state: {state_dir}  seed {options.seed}  sales {options.sales}  "
          f"lanes {options.lanes}  backend {options.backend}  "
          f"relay delivery {options.relay_delivery}")
    try:
        figures = asyncio.run(run_chaos(options, state_dir))
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        print(f"chaos: the product could not be run: {exc}", file=sys.stderr)
        print(f"chaos: logs kept in {state_dir}", file=sys.stderr)
        return EXIT_HARNESS
    figures["machine"] = machine
    print_report(figures)
    if args.json is not None:
        print(f"figures written to {save_json('chaos', args.json, figures)}")
    failed = not figures["passed"]
    if temporary and not failed:
        shutil.rmtree(state_dir, ignore_errors=True)
    elif failed:
        print(f"logs, journal and relay database kept in {state_dir}")
    return EXIT_VIOLATIONS if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
