"""A whole store, deterministically: daemons, relay, cloud and registers in one process.

Theory of operation
-------------------
``Simulation(options).run()`` builds the world of a chaos run inside one ``SimLoop``:

* the Mercado Pago cloud: the cloud simulator's own world and HTTP app
  (``pointd.sim.cloud``), served as the ``cloud`` process, its clock the loop's, its webhooks
  sent through the simulated network to the relay;
* the relay: the real ``RelayService`` on SQLite (a file in the state directory), served as
  a ``relay`` process that can be killed and restarted on the same file;
* two stores sharing both, one on the Payment Intent backend and one on Orders, each a real
  ``pointd run`` (``SimDaemon``: ``build`` and ``run`` on simulated ports) with its own
  journal; half their lanes on serial cables, half on the LAN (``socket://``);
* one register per lane, the second implementation of the register protocol
  (``pointd.sim.ecr``), driven by a cashier, and a supervisor on the control socket
  (``pointd.rig.chaos.cashier``).

Every random choice comes from the seed: the sales and their scripted quirks, the schedule
of faults against the parts, every latency, every timer's lateness and the daemons' own
randomness. So one seed is one run, replayed exactly: the trace of what each part did and
when (``Trace``) is the same byte for byte, and its SHA-256 is printed as the run's digest.

When the selling is over the run settles (lost outcomes asked for, webhooks answered, the
relay's stream acknowledged), stops each daemon as SIGTERM does, reads the cloud's record,
each journal and the relay's stream, and checks them with the chaos run's rules
(``pointd.rig.chaos.invariants``). An unhandled error anywhere, a daemon that ended by
itself, or one that did not stop cleanly is reported too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import hashlib
import logging
import random
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from pointd.cloud.sites import Site
from pointd.config import RelaySecrets, Secret
from pointd.relay.cli import open_storage
from pointd.relay.service import INTAKE_PATH, RelayService
from pointd.relay.storage import Storage
from pointd.rig.chaos.cashier import Cashier, Desk, SaleNote, Supervisor, Tally, Timings
from pointd.rig.chaos.evidence import store_evidence, store_record
from pointd.rig.chaos.invariants import RULES, Checked, check, count_by_rule
from pointd.rig.chaos.plan import (
    SALE_FAULTS,
    SalePlan,
    SalePlanner,
    ScheduledFault,
    fault_schedule,
    schedule_digest,
)
from pointd.rig.relay import relay_config, relay_document
from pointd.rig.simulation.daemon import SimDaemon, store_document
from pointd.rig.simulation.loop import Process, SimLoop, SimulationError
from pointd.rig.simulation.net import Network
from pointd.rig.simulation.serial import Cable
from pointd.rig.store import RigSecrets
from pointd.sim.cloud import CloudSimulator, Delays, SimConfig, SimDevice
from pointd.sim.cloud.scenarios import parse_rule
from pointd.sim.cloud.server import SimClock
from pointd.sim.ecr.register import Register

# The account's country: both stores' ``store.site``.
SITE = Site.MLB
# The simulated stores' first day: 2026-09-21 14:13:20 UTC.
EPOCH = 1_790_000_000.0
CLOUD_HOST = "api.mercadopago.sim"
RELAY_HOST = "relay.sim"
# Mercado Pago retries an unanswered webhook for days; here every 5 minutes, 20 times.
WEBHOOK_RETRY = 300.0
WEBHOOK_ATTEMPTS = 20
# A timer fires up to this late (a loaded machine); it decides the order of timers due together.
TIMER_LATENESS = 0.0005
# The cashiers' patience on the daemon's default timers (escalation after 120 s).
TIMINGS = Timings(sale_timeout=20 * 60.0, supervisor_after=130.0, supervisor_look=5.0,
                  refusal_pause=2.0, result_quiet=60.0, result_grace=10.0, hold_watch=300.0,
                  look_interval=0.5, status_settle=600.0)
# A daemon's start, or its stop, takes well under a second of simulated time.
START_WITHIN = 120.0
STOP_WITHIN = 30.0
# After the last sale: how long notifications and acknowledgements may take to settle.
SETTLE_WITHIN = WEBHOOK_RETRY * WEBHOOK_ATTEMPTS + 600.0
SETTLE_LOOK = 5.0
# A trip wire not crossed within this long is taken down again (no such request came).
TRIP_WIRE_WAIT = 120.0
# Mean simulated seconds a sale takes a lane (for the fault schedule's horizon).
SALE_SECONDS = 40.0
TRACE_TAIL = 400
CLOSE_WITHIN = 60.0

# Faults against the running parts, and their relative weights.
PART_FAULT_WEIGHTS = {
    "daemon_sigkill": 4,
    "daemon_sigkill_starting": 2,
    "daemon_sigkill_recovering": 2,
    "daemon_sigkill_mid_create": 1,
    "daemon_sigkill_mid_verify": 1,
    "relay_sigkill": 2,
    "daemon_and_relay_down": 1,
    "api_timeout_after_create": 2,
    "api_timeout_after_read": 1,
    "api_reset_after_acted": 1,
    "internet_down": 1,
    "api_429_burst": 1,
    "api_5xx_burst": 1,
    "relay_unavailable": 1,
    "webhook_lost": 1,
    "relay_answer_lost": 1,
    "serial_noise": 1,
    "serial_corrupt_frame": 1,
    "serial_lost_ack": 1,
    "register_unplug": 2,
    "clock_jump": 1,
}


@dataclass(frozen=True)
class SimOptions:
    """One run: the seed, its size, and what shrinking leaves out."""

    seed: int
    sales: int = 200
    lanes: int = 4
    fault_interval: float = 30.0
    # Scheduled faults (by index) and sales (by index) whose faults are left out.
    skip_faults: frozenset[int] = frozenset()
    clean_sales: frozenset[int] = frozenset()
    keep_trace: bool = False
    # Wraps each daemon's cloud transport: how a test injects a known bug through a port.
    cloud_transport: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None = None


@dataclass
class SimReport:
    """What one run did and found."""

    seed: int
    sales: int
    digest: str
    schedule: tuple[ScheduledFault, ...]
    simulated_seconds: float = 0.0
    wall_seconds: float = 0.0
    trace_lines: int = 0
    trace_tail: list[str] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    checked: Checked = field(default_factory=Checked)
    findings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No violation, every rule exercised, and nothing else wrong."""
        return self.checked.passed and not self.findings

    @property
    def failures(self) -> list[str]:
        """Every violation and finding, one line each."""
        return [str(v) for v in self.checked.violations] + self.findings

    def signature(self) -> frozenset[str]:
        """What kind of failure this is (the rules broken, the kinds of finding)."""
        return frozenset({v.rule for v in self.checked.violations}
                         | {f.split(":", 1)[0] for f in self.findings})

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "seed": self.seed,
            "sales": self.sales,
            "digest": self.digest,
            "schedule_digest": schedule_digest(self.schedule),
            "simulated_seconds": round(self.simulated_seconds, 1),
            "wall_seconds": round(self.wall_seconds, 3),
            "trace_lines": self.trace_lines,
            "outcomes": dict(sorted(self.tally.outcomes.items())),
            "faults": self.tally.faults(),
            "supervisor_overrides": dict(sorted(self.tally.overrides.items())),
            "checked": {rule: self.checked.cases[rule] for rule in RULES},
            "unexercised_rules": list(self.checked.unexercised),
            "violations_by_rule": count_by_rule(self.checked.violations),
            "failures": self.failures,
            "passed": self.passed,
        }


class Trace:
    """What happened, line by line: hashed as it goes; the tail (or all) kept for printing."""

    def __init__(self, clock: Callable[[], float], *, keep_all: bool) -> None:
        self._clock = clock
        self._hash = hashlib.sha256()
        self.count = 0
        self.lines: collections.deque[str] = collections.deque(
            maxlen=None if keep_all else TRACE_TAIL)

    def __call__(self, what: str) -> None:
        line = f"{self._clock():14.6f} {what}"
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self.count += 1
        self.lines.append(line)

    def digest(self) -> str:
        """SHA-256 of every line so far."""
        return self._hash.hexdigest()


@dataclass(frozen=True)
class StoreSetup:
    """One store of the simulation (its relay token is random: no trace line shows it)."""

    store_id: str
    backend: str
    lanes: tuple[int, ...]
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))


def stores_for(lanes: int) -> tuple[StoreSetup, ...]:
    """The first half of the lanes on Payment Intents, the rest on Orders (one store each)."""
    split = max(1, lanes // 2)
    setups = [StoreSetup("sim-intents", "payment-intent", tuple(range(1, split + 1)))]
    if lanes > split:
        setups.append(StoreSetup("sim-orders", "orders", tuple(range(split + 1, lanes + 1))))
    return tuple(setups)


def device_id(lane: int) -> str:
    """The simulated terminal pinned to ``lane``."""
    return f"PAX_A910__SIMLANE{lane:04d}"


def fault_params(kind: str, rng: random.Random, *, lanes: int, stores: int) -> dict[str, Any]:
    """Every choice a fault will make, drawn when the schedule is."""
    store = rng.randrange(stores)
    lane = rng.randint(1, lanes)
    params: dict[str, Any]
    if kind in ("daemon_sigkill", "daemon_sigkill_mid_create", "daemon_sigkill_mid_verify"):
        params = {"store": store, "down": round(rng.uniform(0.0, 20.0), 3)}
    elif kind == "daemon_sigkill_starting":
        params = {"store": store, "into_start": round(rng.uniform(0.0, 0.08), 4)}
    elif kind == "daemon_sigkill_recovering":
        params = {"store": store, "after_ready": round(rng.uniform(0.0, 0.5), 4)}
    elif kind == "relay_sigkill":
        params = {"down": round(rng.uniform(1.0, 90.0), 3)}
    elif kind == "daemon_and_relay_down":
        params = {"store": store, "down": round(rng.uniform(1.0, 60.0), 3),
                  "relay_first": rng.random() < 0.5}
    elif kind in ("api_timeout_after_create", "api_timeout_after_read",
                  "api_reset_after_acted"):
        params = {"store": store}
    elif kind in ("internet_down", "relay_unavailable", "webhook_lost"):
        params = {"store": store, "requests": rng.randint(1, 12)}
    elif kind in ("api_429_burst", "api_5xx_burst"):
        params = {"gets": rng.randint(2, 8)}
    elif kind == "relay_answer_lost":
        params = {"store": store}
    elif kind == "serial_noise":
        params = {"lane": lane, "to_register": rng.random() < 0.3,
                  "noise": bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))).hex()}
    elif kind == "serial_lost_ack":
        params = {"lane": lane, "sent": rng.random() < 0.5}
    elif kind == "register_unplug":
        params = {"lane": lane, "out": round(rng.uniform(0.2, 20.0), 3)}
    elif kind == "clock_jump":
        big = rng.random() < 0.1
        seconds = rng.uniform(300.0, 3600.0) if big else rng.uniform(0.5, 90.0)
        params = {"store": store, "seconds": round(seconds * rng.choice((-1, 1)), 3)}
    else:
        params = {"lane": lane}
    return params


class Simulation:
    """One seeded run of the whole store (module docstring)."""

    def __init__(self, options: SimOptions, state_dir: Path) -> None:
        self.options = options
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        seed = options.seed
        self.loop = SimLoop(random.Random(f"{seed}:timers"), timer_lateness=TIMER_LATENESS)
        self.trace = Trace(self.loop.time, keep_all=options.keep_trace)
        self._rng = random.Random(f"{seed}:world")
        self.stores = stores_for(options.lanes)
        self.schedule = fault_schedule(
            random.Random(seed * 7919 + 1), PART_FAULT_WEIGHTS,
            mean_interval=options.fault_interval,
            horizon=SALE_SECONDS * options.sales / max(1, options.lanes) + 60.0,
            params=lambda kind, rng: fault_params(kind, rng, lanes=options.lanes,
                                                  stores=len(self.stores)),
        )
        self.tally = Tally()
        self.network = Network(self._rng, self.trace)
        self.registers: dict[int, Register] = {}
        self.cables: dict[int, Cable] = {}
        self.daemons: list[SimDaemon] = []
        self.cashiers: dict[int, Cashier] = {}
        self.cloud: CloudSimulator | None = None
        self._cloud_process = Process("cloud")
        self._relay_process: Process | None = None
        self._relay_storage: Storage | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._relay_stop: asyncio.Event | None = None
        self._relay_starts = 0
        self._auditor: httpx.AsyncClient | None = None
        self._log_errors: list[str] = []
        # Random like an installer's: no trace line and no decision depends on their value.
        self._secrets = RigSecrets.generated()

    # --- running -------------------------------------------------------------------------

    def run(self) -> SimReport:
        """Run the seed to the end; the report."""
        started = time.perf_counter()
        report = SimReport(self.options.seed, self.options.sales, "", self.schedule,
                           tally=self.tally)
        # Only the loop collects garbage, at fixed turns (``loop.GC_TURNS``).
        collecting = gc.isenabled()
        gc.disable()
        with _quiet_logs(self._log_errors):
            try:
                self.loop.run_until_complete(self._main(report))
            except SimulationError as exc:
                report.findings.append(f"simulation_stuck: {exc}")
            finally:
                # What tearing the world down leaves behind says nothing about the store.
                errors = list(self.loop.errors)
                self._close()
                if collecting:
                    gc.enable()
        report.findings += [f"daemon_logged_error: {line}" for line in self._log_errors]
        report.findings += [f"unhandled_error: {_describe(error)}" for error in errors]
        for host in self.network.hosts.values():
            report.findings += [f"server_error: {host.name} {line}" for line in host.errors]
        report.simulated_seconds = self.loop.time()
        report.wall_seconds = time.perf_counter() - started
        report.digest = self.trace.digest()
        report.trace_lines = self.trace.count
        report.trace_tail = list(self.trace.lines)
        return report

    def _close(self) -> None:
        loop = self.loop
        for process in [self._cloud_process, self._relay_process,
                        *[d.process for d in self.daemons]]:
            if process is not None:
                loop.kill(process)
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(SimulationError):
                # A killed process's task may wait on something that died with it: the
                # rest get this long (virtual) to finish their clean-up.
                loop.run_until_complete(asyncio.wait(pending, timeout=CLOSE_WITHIN))
        loop.close()
        loop.bury()

    async def _main(self, report: SimReport) -> None:
        self._build_world()
        await self._start_relay()
        self._start_cloud()
        for daemon in self.daemons:
            await self._start_daemon(daemon)
        sold = asyncio.Event()
        injector = asyncio.ensure_future(self._inject_faults(sold))
        try:
            await asyncio.gather(*(cashier.run() for cashier in self.cashiers.values()))
        finally:
            sold.set()
            await injector
        await self._restore()
        await self._settle()
        await self._stop_daemons(report)
        report.checked = await self._check()
        fired = self.cloud.world.fired if self.cloud is not None else Counter()
        for kind in SALE_FAULTS:
            self.tally.fired[kind] += fired[kind]
        for register in self.registers.values():
            self.tally.fired.update(register.fired)
        self.tally.fired.update(self.network.fired)
        self.tally.fired["api_429_burst"] += fired["api_429_burst"]
        self.tally.fired["api_5xx_burst"] += fired["api_5xx_burst"]

    # --- the world -----------------------------------------------------------------------

    def _build_world(self) -> None:
        options = self.options
        for lane in range(1, options.lanes + 1):
            register = Register(name=f"register-{lane}", on_trace=self.trace)
            cable = Cable(self.loop, lane, "serial" if lane % 2 else "lan", register,
                          rng=self._rng, trace=self.trace)
            self.registers[lane], self.cables[lane] = register, cable
            cable.start()
        for setup in self.stores:
            document = store_document(
                site=SITE,
                store_id=setup.store_id, backend=setup.backend, state_dir=self.state_dir,
                access_token=self._secrets.access_token,
                webhook_secret=self._secrets.webhook_secret,
                store_token=setup.token, cloud_url=f"https://{CLOUD_HOST}",
                relay_url=f"https://{RELAY_HOST}",
                lanes={lane: (self.cables[lane].url, device_id(lane)) for lane in setup.lanes},
            )
            daemon = SimDaemon(loop=self.loop, name=setup.store_id, state_dir=self.state_dir,
                               document=document,
                               cables={lane: self.cables[lane] for lane in setup.lanes},
                               network=self.network, rng=self._rng, epoch=EPOCH,
                               trace=self.trace, wrap_cloud=options.cloud_transport)
            self.daemons.append(daemon)
        planner = _CleanPlanner(SalePlanner(random.Random(options.seed), options.sales,
                                            options.lanes), options.clean_sales)
        desk = Desk(script=self._script, payments=self._payments,
                    control_socket=lambda lane: self._daemon_of(lane).control_socket)
        supervisor = Supervisor(desk, self.tally)
        for lane, register in self.registers.items():
            self.cashiers[lane] = Cashier(lane, register, planner=planner, desk=desk,
                                          supervisor=supervisor, tally=self.tally,
                                          timings=TIMINGS)
        self._auditor = httpx.AsyncClient(transport=self.network.transport("auditor"),
                                          timeout=60.0)

    def _daemon_of(self, lane: int) -> SimDaemon:
        for setup, daemon in zip(self.stores, self.daemons, strict=True):
            if lane in setup.lanes:
                return daemon
        raise KeyError(lane)

    def _start_cloud(self) -> None:
        world_rng = random.Random(self._rng.getrandbits(64))
        config = SimConfig(
            site=SITE,
            access_token=self._secrets.access_token,
            webhook_secret=self._secrets.webhook_secret,
            devices=tuple(SimDevice(id=device_id(lane), pos_id=lane,
                                    external_pos_id=f"LANE{lane}")
                          for lane in range(1, self.options.lanes + 1)),
            delays=Delays(),
            start_time=EPOCH,
            webhook_url=f"https://{RELAY_HOST}{INTAKE_PATH}",
            webhook_max_attempts=WEBHOOK_ATTEMPTS,
            webhook_retry_interval=WEBHOOK_RETRY,
            enforce_get_rate_limit=True,
        )
        process = self._cloud_process
        self.cloud = CloudSimulator(
            config, clock=SimClock(1.0, monotonic=self.loop.time),
            webhook_transport=self.network.transport("cloud"),
            new_uuid=lambda: uuid.UUID(int=world_rng.getrandbits(128), version=4),
        )
        self.network.host(CLOUD_HOST).serve(self.cloud.app, process)
        process.run(self.cloud.start_delivery)

    async def _start_relay(self) -> None:
        self._relay_starts += 1
        document = relay_document(sqlite_path=self.state_dir / "relay.sqlite3",
                                  stores={s.store_id: s.token for s in self.stores})
        config = relay_config(document)
        relay_secrets = RelaySecrets(webhook_secret=Secret(self._secrets.webhook_secret))
        process = Process(f"relay#{self._relay_starts}")
        storage = open_storage(config, relay_secrets)
        service = RelayService(config, relay_secrets, storage,
                               clock=lambda: EPOCH + self.loop.time())
        opened = asyncio.Event()
        stop = asyncio.Event()

        async def serve() -> None:
            async with service.running():
                self.network.host(RELAY_HOST).serve(service.app, process)
                opened.set()
                await stop.wait()
                service.begin_shutdown()

        self._relay_process, self._relay_storage = process, storage
        self._relay_stop = stop
        self._relay_task = process.spawn(serve(), "relay")
        await opened.wait()
        self.trace(f"relay started (start {self._relay_starts})")

    async def _kill_relay(self) -> bool:
        process, storage = self._relay_process, self._relay_storage
        if process is None or not process.alive:
            return False
        self.loop.kill(process)
        self.trace("relay killed")
        if storage is not None:
            await storage.close()  # the kernel closes the dead process's files
        return True

    async def _start_daemon(self, daemon: SimDaemon) -> None:
        daemon.start()
        if not await daemon.wait_ready(START_WITHIN):
            crash = daemon.crashed()
            raise SimulationError(f"{daemon.name} did not become ready: {crash!r}")

    # --- the desk ------------------------------------------------------------------------

    async def _script(self, plan: SalePlan) -> None:
        assert self.cloud is not None
        self.cloud.world.scenarios.add(parse_rule(dict(plan.scenario)))
        self.trace(f"script {plan.correlation_id} {dict(plan.scenario)}")

    async def _payments(self) -> list[Mapping[str, Any]]:
        assert self.cloud is not None
        payments: list[Mapping[str, Any]] = self.cloud.world.record()["payments"]
        return payments

    # --- faults --------------------------------------------------------------------------

    async def _inject_faults(self, sold: asyncio.Event) -> None:
        start = self.loop.time()
        for fault in self.schedule:
            if fault.index in self.options.skip_faults:
                continue
            wait = start + fault.at - self.loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await sold.wait()
            if sold.is_set():
                return
            self.tally.planned[fault.kind] += 1
            self.trace(f"fault {fault}")
            if await self._apply(fault):
                self.tally.fired[fault.kind] += 1

    async def _apply(self, fault: ScheduledFault) -> bool:
        """Carry out one fault; whether the part it aims at was hit (or the fault is armed
        and counts itself when it fires: network faults, bursts, serial knobs)."""
        kind, p = fault.kind, fault.params
        daemon = self.daemons[p["store"] % len(self.daemons)] if "store" in p else None
        if kind == "daemon_sigkill":
            assert daemon is not None
            return await self._kill_and_restart(daemon, p["down"])
        if kind == "daemon_sigkill_starting":
            assert daemon is not None
            return await self._kill_while_starting(daemon, p["into_start"])
        if kind == "daemon_sigkill_recovering":
            assert daemon is not None
            return await self._kill_while_recovering(daemon, p["after_ready"])
        if kind in ("daemon_sigkill_mid_create", "daemon_sigkill_mid_verify"):
            assert daemon is not None
            return await self._kill_mid_request(daemon, kind, p["down"])
        if kind == "relay_sigkill":
            killed = await self._kill_relay()
            await asyncio.sleep(p["down"])
            await self._start_relay()
            return killed
        if kind == "daemon_and_relay_down":
            assert daemon is not None
            both = daemon.kill() and await self._kill_relay()
            await asyncio.sleep(p["down"])
            if p["relay_first"]:
                await self._start_relay()
                await self._start_daemon(daemon)
            else:
                await self._start_daemon(daemon)
                await self._start_relay()
            return both
        if kind in ("api_timeout_after_create", "api_timeout_after_read",
                    "api_reset_after_acted"):
            assert daemon is not None
            method, path = {"api_timeout_after_create": ("POST", None),
                            "api_timeout_after_read": ("GET", None),
                            "api_reset_after_acted": (None, None)}[kind]
            self.network.arm("reset_after" if kind == "api_reset_after_acted" else
                             "timeout_after", label=kind, client=daemon.name, host=CLOUD_HOST,
                             method=method, path_part=path)
            return False
        if kind == "internet_down":
            assert daemon is not None
            self.network.arm("refused", label=kind, client=daemon.name, count=p["requests"])
            return False
        if kind == "relay_unavailable":
            self.network.arm("unavailable", label=kind, host=RELAY_HOST, count=p["requests"])
            return False
        if kind == "webhook_lost":
            self.network.arm("refused", label=kind, client="cloud", host=RELAY_HOST,
                             count=p["requests"])
            return False
        if kind == "relay_answer_lost":
            assert daemon is not None
            self.network.arm("reset_after", label=kind, client=daemon.name, host=RELAY_HOST,
                             method="GET", path_part="/events")
            return False
        if kind in ("api_429_burst", "api_5xx_burst"):
            assert self.cloud is not None
            self.cloud.world.get_faults["get_429" if kind == "api_429_burst" else "get_5xx"] \
                += p["gets"]
            return False
        if kind == "serial_noise":
            noise = bytes.fromhex(p["noise"])
            if p["to_register"]:
                return self.cables[p["lane"]].noise_to_register(noise)
            return self.registers[p["lane"]].inject_noise(noise)
        if kind == "serial_corrupt_frame":
            self.registers[p["lane"]].corrupt_next_frame()
            return False
        if kind == "serial_lost_ack":
            register = self.registers[p["lane"]]
            if p["sent"]:
                register.drop_next_ack_sent()
            else:
                register.drop_next_ack_received()
            return False
        if kind == "register_unplug":
            cable = self.cables[p["lane"]]
            pulled = cable.unplug()
            await asyncio.sleep(p["out"])
            cable.replug()
            return pulled
        if kind == "clock_jump":
            assert daemon is not None
            daemon.jump(p["seconds"])
            return True
        raise ValueError(f"unknown fault kind {kind!r}")

    async def _kill_and_restart(self, daemon: SimDaemon, down: float) -> bool:
        killed = daemon.kill()
        await asyncio.sleep(down)
        await self._start_daemon(daemon)
        return killed

    async def _kill_while_starting(self, daemon: SimDaemon, into_start: float) -> bool:
        """Kill, restart, and kill again before READY; then start for good."""
        daemon.kill()
        daemon.start()
        await asyncio.sleep(into_start)
        landed = daemon.alive and not daemon.ready
        daemon.kill()  # READY came first: killed all the same, but not while starting
        await self._start_daemon(daemon)
        return landed

    async def _kill_while_recovering(self, daemon: SimDaemon, after_ready: float) -> bool:
        """Kill, restart, and kill again while its recovery requests are in flight."""
        daemon.kill()
        await self._start_daemon(daemon)
        await asyncio.sleep(after_ready)
        landed = self.network.in_flight(daemon.name) > 0 and daemon.kill()
        if not daemon.alive:
            await self._start_daemon(daemon)
        return landed

    async def _kill_mid_request(self, daemon: SimDaemon, kind: str, down: float) -> bool:
        """Kill the daemon the moment such a request reached Mercado Pago."""
        method, path = ("POST", None) if kind.endswith("create") else ("GET", "/v1/payments/")
        crossed = asyncio.Event()

        def kill_now() -> None:
            if daemon.kill():
                crossed.set()

        self.network.trip(kind, client=daemon.name, host=CLOUD_HOST, method=method,
                          path_part=path, action=kill_now)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TRIP_WIRE_WAIT):
                await crossed.wait()
        self.network.untrip(kind)
        if not crossed.is_set():
            return False
        await asyncio.sleep(down)
        await self._start_daemon(daemon)
        return True

    async def _restore(self) -> None:
        """After the selling: every cable in, the relay and every daemon up, no fault armed."""
        for cable in self.cables.values():
            cable.replug()
        for label in PART_FAULT_WEIGHTS:
            self.network.disarm(label)
        if self._relay_process is None or not self._relay_process.alive:
            await self._start_relay()
        for daemon in self.daemons:
            if not daemon.alive:
                await self._start_daemon(daemon)

    # --- the end -------------------------------------------------------------------------

    async def _settle(self) -> None:
        for cashier in self.cashiers.values():
            await cashier.ask_lost_outcomes()
        assert self.cloud is not None
        world = self.cloud.world
        deadline = self.loop.time() + SETTLE_WITHIN
        while self.loop.time() < deadline:
            if not world.deliveries_pending() and await self._relay_drained():
                return
            await asyncio.sleep(SETTLE_LOOK)

    async def _relay_page(self, setup: StoreSetup, after: int | None) -> list[dict[str, Any]]:
        assert self._auditor is not None
        params: dict[str, Any] = {"wait": 0, "limit": 500}
        if after is not None:
            params["after"] = after
        response = await self._auditor.get(
            f"https://{RELAY_HOST}/stores/{setup.store_id}/events", params=params,
            headers={"authorization": f"Bearer {setup.token}"})
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    async def _relay_drained(self) -> bool:
        try:
            for setup in self.stores:
                page = await self._relay_page(setup, None)
                if any(event.get("kind") != "canary" for event in page):
                    return False
        except httpx.HTTPError:
            return False
        return True

    async def _stop_daemons(self, report: SimReport) -> None:
        for daemon in self.daemons:
            code = await daemon.stop(STOP_WITHIN)
            if code != 0:
                report.findings.append(
                    f"daemon_stop: {daemon.name} stopped with {code!r} "
                    f"({daemon.crashed()!r})")

    async def _check(self) -> Checked:
        assert self.cloud is not None
        record = self.cloud.world.record()
        merged = Checked()
        for setup, daemon in zip(self.stores, self.daemons, strict=True):
            stream: list[dict[str, Any]] = []
            after = 0
            while page := await self._relay_page(setup, after):
                stream += page
                after = int(page[-1]["cursor"])
            notes: list[SaleNote] = [note for lane in setup.lanes
                                     for note in self.cashiers[lane].notes]
            evidence = store_evidence(store_id=setup.store_id,
                                      record=store_record(record, setup.store_id),
                                      journal_path=daemon.journal_path, stream=stream,
                                      notes=notes, terminals=map(device_id, setup.lanes))
            checked = check(evidence)
            merged.cases.update(checked.cases)
            merged.violations += checked.violations
        return merged


class _CleanPlanner:
    """The seed's sales, with the faults of some sales left out (for shrinking)."""

    def __init__(self, inner: SalePlanner, clean: frozenset[int]) -> None:
        self._inner = inner
        self._clean = clean

    def next_for(self, lane: int) -> SalePlan | None:
        """The seed's next sale for ``lane``, without its faults if it is a clean one."""
        plan = self._inner.next_for(lane)
        if plan is None or plan.index not in self._clean:
            return plan
        return SalePlan(plan.index, plan.lane, plan.amount_cents, plan.outcome, (),
                        {"amount": plan.amount_cents, "outcome": plan.outcome})


def _describe(context: Mapping[str, Any]) -> str:
    exc = context.get("exception")
    task = context.get("task") or context.get("future")
    name = task.get_name() if isinstance(task, asyncio.Task) else ""
    return f"{context.get('message')} {name} {exc!r}".strip()


@contextlib.contextmanager
def _quiet_logs(errors: list[str]) -> Iterator[None]:
    """Drop the daemon's logs below error; keep each error line (each is a bug to look at)."""

    def keep(_logger: Any, method: str, event: Any) -> Any:
        if method in ("error", "critical", "exception"):
            errors.append(f"{event.get('event')} "
                          + " ".join(f"{k}={v}" for k, v in sorted(event.items())
                                     if k != "event"))
        raise structlog.DropEvent

    previous = structlog.get_config()
    root = logging.getLogger()
    level = root.level
    structlog.configure(processors=[structlog.stdlib.add_log_level, keep],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
                        cache_logger_on_first_use=False)
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        structlog.configure(**previous)
        root.setLevel(level)
