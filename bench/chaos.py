"""Fault injection: many randomized sales through the whole product while its parts fail.

Theory of operation
-------------------
``python bench/chaos.py --sales 500 --seed N`` starts the product the way a store runs it:

* ``pointd run`` as a real subprocess (``python -m pointd.cli run --config <toml>``), its
  readiness read from a ``NOTIFY_SOCKET`` the run owns, exactly as systemd would;
* ``pointd relay`` as a real subprocess on SQLite, the simulator's webhooks going through it;
* in this process: the Mercado Pago cloud simulator (time_scale 1, short terminal delays,
  webhook retries every few seconds), one register emulator per lane on a real pty behind a
  stable symlink (the daemon opens the symlink, as it would ``/dev/pointd/register``), and a
  TCP proxy between the daemon and the simulator that can swallow the answer to a create.

Each lane's register sells continuously. A seeded RNG draws every sale (amount, scripted
outcome, webhook quirk, create failure, stale or refused GETs) and, in a separate task,
faults against the running parts: SIGKILL of the daemon or the relay and a restart, an API
timeout after the simulator acted, 429 and 5xx bursts, serial noise, a corrupt frame, a lost
ACK, a register cable pulled and plugged back. The first sales and the first faults walk
through every kind in a seeded order, so even a short run exercises all of them.

When every sale has ended, the run waits for the notifications to settle, stops the daemon,
reads the simulator's record, the relay's store stream and the journal, and checks the
money-safety rules (``chaos_invariants``). It prints the counts and exits 1 on any violation
(2 if the product could not be run at all). Timing is real, so two runs with one seed draw
the same sales and faults but may interleave them differently; the seed is for replaying a
failure's ingredients, the violation list says which sale to look at.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.chaos_invariants import (  # noqa: E402
    RULES,
    Checked,
    Evidence,
    JournalSale,
    OverrideAudit,
    RegisterView,
    RelayEventView,
    check,
    count_by_rule,
)
from bench.run_record import describe_machine, print_machine, save_json  # noqa: E402
from pointd.cloud.sites import Site  # noqa: E402
from pointd.control.client import ControlClient  # noqa: E402
from pointd.control.errors import ControlError  # noqa: E402
from pointd.core.reference import ExternalReference, ExternalReferenceError  # noqa: E402
from pointd.core.states import FINAL_STATES, SaleState  # noqa: E402
from pointd.journal.store import Journal  # noqa: E402
from pointd.link.errors import LinkError  # noqa: E402
from pointd.logging import configure_logging  # noqa: E402
from pointd.register import messages as msg  # noqa: E402
from pointd.rig import DAEMON_STOP_TIMEOUT, RelayProcess, RigLane, StoreRig, StoreSpec  # noqa: E402
from pointd.sim.cloud import CloudSimulator  # noqa: E402
from pointd.sim.cloud.config import Delays  # noqa: E402
from pointd.sim.register import RegisterEmulator  # noqa: E402
from pointd.sim.register.emulator import DaemonRejected, EmulatorError  # noqa: E402

STORE_ID = "chaos"
SITE = Site.MLB
COLLECTOR_ID = 123456789
# Amounts are unique per sale so that a scenario selected by amount scripts exactly that
# sale (the daemon's sale ids are not known before the create) and the record maps back.
FIRST_AMOUNT = 2000

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

# One sale may ride out several daemon restarts, an abandonment and a hold.
SALE_TIMEOUT = 120.0
# A register asks for a lost sale's outcome for this long after the selling stops.
STATUS_SETTLE_TIMEOUT = 60.0
# Webhook retries and the daemon's relay consumer catch up within this after the last sale.
NOTIFICATION_SETTLE_TIMEOUT = 45.0
# How often a waiter looks again at state that has no event of its own.
LOOK_INTERVAL = 0.2
# A sale held this long has been escalated (confirmation_escalate_after is 10 s): the
# supervisor looks at it, and again this often while it stays held.
SUPERVISOR_AFTER = 12.0
SUPERVISOR_LOOK = 1.0
# How long the cashier takes to read a refusal before the next sale.
REFUSAL_PAUSE = 1.0
# A sale not held that has had no RESULT for this long is asked about with STATUS.
RESULT_QUIET = 30.0
# When STATUS already shows the outcome, a RESULT still in flight has this long to land
# before the run counts it as withheld.
RESULT_GRACE = 5.0
# How long a sale scripted to stay pending is watched for its HOLD before the lane stops.
HOLD_WATCH = 20.0

# What a register call may raise while the daemon restarts or the cable is out; the
# register then asks again, as docs/register-protocol.md tells a register vendor to.
REGISTER_TROUBLE = (EmulatorError, LinkError, OSError)

EXIT_OK = 0
EXIT_VIOLATIONS = 1
EXIT_HARNESS = 2

FAILURE_LOG_LEVELS = ('"level": "error"', '"level": "critical"')

# Scripted outcomes (docs/simulator.md) and how often a sale draws each.
OUTCOME_WEIGHTS = {
    "approved": 40,
    "finished_rejected": 8,
    "reversed": 5,
    "error": 6,
    "confirmation_approved": 8,
    "confirmation_rejected": 6,
    "canceled_on_terminal": 6,
    "abandoned": 2,
}
# Per-sale faults: the simulator misbehaves for this one sale.
SALE_FAULTS = (
    "webhook_duplicate",
    "webhook_out_of_order",
    "webhook_missing",
    "webhook_late",
    "create_5xx_after_create",
    "create_dropped_after_create",
    "stale_gets",
    "intent_get_429",
    "intent_get_5xx",
    "cashier_cancel",
)
SALE_FAULT_PROBABILITY = {
    "webhook_duplicate": 0.12,
    "webhook_out_of_order": 0.12,
    "webhook_missing": 0.12,
    "webhook_late": 0.15,
    "create_5xx_after_create": 0.05,
    "create_dropped_after_create": 0.05,
    "stale_gets": 0.08,
    "intent_get_429": 0.06,
    "intent_get_5xx": 0.06,
    "cashier_cancel": 0.06,
}
# The cashier presses cancel this long after the SALE went out: before, while and after
# the terminal takes the card (Mercado Pago allows a cancel only while the intent is OPEN).
CANCEL_AFTER = (0.0, 0.6)
# Faults against the running parts, and their relative weights.
PART_FAULT_WEIGHTS = {
    "daemon_sigkill": 4,
    "daemon_sigkill_mid_create": 1,
    "daemon_sigkill_mid_verify": 1,
    "relay_sigkill": 2,
    "api_timeout_after_create": 2,
    "api_429_burst": 1,
    "api_5xx_burst": 1,
    "serial_noise": 1,
    "serial_corrupt_frame": 1,
    "serial_lost_ack": 1,
    "register_unplug": 2,
}
# Probability that one of the last sales (one per lane at most) is scripted to stay
# CONFIRMATION_REQUIRED forever: it must end the run visibly held.
PENDING_PROBABILITY = 0.5


@dataclass(frozen=True)
class ChaosOptions:
    """What to run."""

    sales: int
    seed: int
    lanes: int = 4
    fault_interval: float = 2.5
    log_level: str = "warning"
    relay_delivery: str = "stream"  # the daemon's relay.delivery


@dataclass
class SalePlan:
    """One randomized sale: what the simulator is told to do with it."""

    index: int
    lane: int
    amount_cents: int
    outcome: str
    faults: tuple[str, ...]
    scenario: dict[str, Any]
    # Seconds after the SALE at which the cashier presses cancel; None: never.
    cancel_after: float | None = None

    @property
    def correlation_id(self) -> str:
        """The register's correlation id for this sale (unique across lanes)."""
        return f"L{self.lane}S{self.index}"


@dataclass
class SaleNote:
    """What the register saw of one sale."""

    plan: SalePlan
    outcome: str | None = None
    handover_allowed: bool | None = None
    handed_over: bool = False
    held_seen: bool = False
    error: str | None = None
    refusal: str | None = None
    # The sale's state when STATUS showed an outcome the register was never sent.
    withheld_state: str | None = None
    seconds: float = 0.0


@dataclass
class Tally:
    """Counts for the report."""

    faults: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    daemon_restart_seconds: list[float] = field(default_factory=list)
    relay_restart_seconds: list[float] = field(default_factory=list)
    stalled_creates: int = 0
    overrides: Counter[str] = field(default_factory=Counter)
    results_withheld: list[str] = field(default_factory=list)


def device_id(lane: int) -> str:
    """The simulated terminal pinned to ``lane``."""
    return f"PAX_A910__CHAOS{lane:04d}"


def chaos_spec(options: ChaosOptions) -> StoreSpec:
    """The store under fault injection: ``pointd run`` and ``pointd relay`` as processes."""
    return StoreSpec(
        store_id=STORE_ID,
        site=SITE,
        collector_id=COLLECTOR_ID,
        language="en",
        lanes=tuple(RigLane(lane, device_id(lane)) for lane in range(1, options.lanes + 1)),
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


def forced_order(rng: random.Random, kinds: tuple[str, ...]) -> Iterator[str]:
    """Every kind once in a seeded order: the guarantee that a short run sees them all."""
    order = list(kinds)
    rng.shuffle(order)
    return iter(order)


class SalePlanner:
    """Draws every sale from the seeded RNG."""

    def __init__(self, rng: random.Random, total: int, lanes: int) -> None:
        self._rng = rng
        self._total = total
        self._lanes = lanes
        self._next = 0
        self._forced = forced_order(rng, SALE_FAULTS)
        self._pending_given: set[int] = set()

    def next_for(self, lane: int) -> SalePlan | None:
        """The next sale for a lane, None when the run has sold enough."""
        if self._next >= self._total:
            return None
        index, self._next = self._next, self._next + 1
        rng = self._rng
        outcome = rng.choices(list(OUTCOME_WEIGHTS), weights=list(OUTCOME_WEIGHTS.values()))[0]
        if (
            index >= self._total - self._lanes
            and lane not in self._pending_given
            and rng.random() < PENDING_PROBABILITY
        ):
            outcome = "confirmation_pending"
            self._pending_given.add(lane)
        faults = {kind for kind in SALE_FAULTS if rng.random() < SALE_FAULT_PROBABILITY[kind]}
        forced = next(self._forced, None)
        if forced is not None:
            faults.add(forced)
        webhook = [k for k in ("webhook_duplicate", "webhook_out_of_order", "webhook_missing")
                   if k in faults]
        for extra in webhook[1:]:
            faults.discard(extra)  # one webhook quirk per intent
        create = [k for k in ("create_5xx_after_create", "create_dropped_after_create")
                  if k in faults]
        for surplus in create[1:]:
            faults.discard(surplus)
        amount = FIRST_AMOUNT + index
        scenario: dict[str, Any] = {"amount": amount, "outcome": outcome}
        if "webhook_duplicate" in faults:
            scenario["webhook"] = "duplicate"
        if "webhook_out_of_order" in faults:
            scenario["webhook"] = "out_of_order"
        if "webhook_missing" in faults:
            scenario["webhook"] = "never"
        if "webhook_late" in faults:
            scenario["webhook_delay"] = round(rng.uniform(1.0, 4.0), 2)
        if "create_5xx_after_create" in faults:
            scenario["create_failure"] = "5xx"
        if "create_dropped_after_create" in faults:
            scenario["create_failure"] = "drop"
        if "stale_gets" in faults:
            scenario["stale_gets"] = rng.randint(1, 3)
        if "intent_get_429" in faults:
            scenario["get_429"] = rng.randint(1, 2)
            scenario["retry_after"] = 1
        if "intent_get_5xx" in faults:
            scenario["get_5xx"] = rng.randint(1, 2)
        cancel_after = rng.uniform(*CANCEL_AFTER) if "cashier_cancel" in faults else None
        return SalePlan(index, lane, amount, outcome, tuple(sorted(faults)), scenario,
                        cancel_after)


class StallingProxy:
    """TCP between the daemon and the simulator; can swallow an answer or trip a wire.

    A swallowed create reached the simulator, which created the intent and answered; the
    daemon hears nothing until its read timeout, which is the "timeout after the server
    acted" that rule 3 is about. A trip wire reports the moment a chosen request has been
    passed on, so that the daemon can be killed while that request is in flight.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._armed = 0
        self._wires: list[tuple[bytes, bytes, asyncio.Future[None]]] = []
        self.stalled = 0
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def arm(self) -> None:
        """Swallow the answer to the next create."""
        self._armed += 1

    def trip_wire(self, method: bytes, path_part: bytes) -> asyncio.Future[None]:
        """A future done once the next such request has been passed to the simulator."""
        wire: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wires.append((method, path_part, wire))
        return wire

    def _trip(self, request_line: bytes) -> None:
        for method, path_part, wire in list(self._wires):
            if request_line.startswith(method + b" ") and path_part in request_line:
                self._wires.remove((method, path_part, wire))
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
                if (self._armed and request_line.startswith(b"POST ")
                        and b"/payment-intents" in request_line):
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


class ChaosRun:
    """The product under fault injection, and the evidence it leaves."""

    def __init__(self, options: ChaosOptions, state_dir: Path) -> None:
        self.options = options
        self.state_dir = state_dir
        self.rng = random.Random(options.seed)
        # Sales and faults draw from separate streams so that adding a fault kind does not
        # change which sales a seed makes.
        self.fault_rng = random.Random(options.seed * 7919 + 1)
        self.planner = SalePlanner(self.rng, options.sales, options.lanes)
        self.tally = Tally()
        self.notes: list[SaleNote] = []
        self.proxy: StallingProxy | None = None
        self.rig = StoreRig(state_dir, chaos_spec(options))
        self._sold = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self._stack = contextlib.AsyncExitStack()

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
        await self.rig.__aenter__()
        upstream = int(self.sim.base_url.rsplit(":", 1)[1])
        self.proxy = StallingProxy(upstream)
        await self.proxy.start()
        await self.rig.start_daemon(cloud_url=f"http://127.0.0.1:{self.proxy.port}")

    async def __aexit__(self, *exc_info: object) -> None:
        await self.rig.aclose()
        if self.proxy is not None:
            await self.proxy.close()
        await self._stack.aclose()

    @property
    def sim(self) -> CloudSimulator:
        """The cloud simulator."""
        return self.rig.sim

    @property
    def registers(self) -> dict[int, RegisterEmulator]:
        """Each lane's register emulator."""
        return self.rig.registers

    @property
    def relay(self) -> RelayProcess:
        """The ``pointd relay`` process."""
        relay = self.rig.relay
        assert isinstance(relay, RelayProcess)
        return relay

    def _lanes(self) -> range:
        return range(1, self.options.lanes + 1)

    async def _start_daemon(self) -> float:
        started = time.monotonic()
        await self.rig.start_daemon()
        return time.monotonic() - started

    async def _start_relay(self) -> float:
        started = time.monotonic()
        await self.relay.start()
        return time.monotonic() - started

    # --- the simulator's control API ------------------------------------------------------

    async def _sim(self, method: str, path: str, body: Any = None) -> Any:
        assert self._http is not None
        response = await self._http.request(method, f"{self.sim.base_url}{path}", json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    # --- selling --------------------------------------------------------------------------

    async def sell(self) -> None:
        """Run every lane's sales while the faults run; return when all sales ended."""
        faults = asyncio.ensure_future(self._inject_faults())
        try:
            await asyncio.gather(*(self._lane_worker(lane) for lane in self._lanes()))
        finally:
            self._sold.set()
            await faults

    async def _lane_worker(self, lane: int) -> None:
        while (plan := self.planner.next_for(lane)) is not None:
            note = SaleNote(plan)
            self.notes.append(note)
            for fault in plan.faults:
                self.tally.faults[fault] += 1
            await self._sim("POST", "/_sim/scenarios", plan.scenario)
            started = time.monotonic()
            if plan.outcome == "confirmation_pending":
                await self._pending_sale(note)
                note.seconds = time.monotonic() - started
                self.tally.outcomes["held (scripted pending)"] += 1
                return  # the lane stays held: a supervisor would have to decide
            await self._one_sale(note)
            note.seconds = time.monotonic() - started
            label = note.outcome or "no outcome"
            if note.refusal:
                label = f"{label} ({note.refusal})"
                # A cashier reads the refusal before trying again.
                await asyncio.sleep(REFUSAL_PAUSE)
            self.tally.outcomes[label] += 1

    async def _one_sale(self, note: SaleNote) -> None:
        plan = note.plan
        emulator = self.registers[plan.lane]
        cid = plan.correlation_id
        task = asyncio.ensure_future(
            emulator.sale(plan.amount_cents, cid, within=SALE_TIMEOUT)
        )
        canceling = None
        if plan.cancel_after is not None:
            canceling = asyncio.ensure_future(self._cashier_cancel(note, plan.cancel_after))
        held_since: float | None = None
        asked_at = time.monotonic()
        while not task.done():
            await asyncio.wait({task}, timeout=SUPERVISOR_LOOK)
            now = time.monotonic()
            if cid not in emulator.held and now - asked_at >= RESULT_QUIET:
                asked_at = now
                if await self._result_withheld(note, task):
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                    break
            if cid not in emulator.held:
                held_since = None
            elif held_since is None:
                held_since = now
            elif now - held_since >= SUPERVISOR_AFTER:
                await self._supervise(note)
                held_since = now
        if canceling is not None:
            await canceling
        if note.withheld_state is not None:
            note.outcome = _register_outcome(note.withheld_state)
            if note.outcome == "approved":
                await self._hand_over(note)
            return
        try:
            outcome = task.result()
        except DaemonRejected as exc:
            note.error = f"rejected: {exc}"
            return
        except REGISTER_TROUBLE as exc:
            note.error = f"{type(exc).__name__}: {exc}"
            return
        note.outcome = outcome.outcome.value
        if outcome.outcome is msg.Outcome.REFUSED:
            note.refusal = outcome.reason
        if outcome.outcome is msg.Outcome.APPROVED:
            await self._hand_over(note)

    async def _result_withheld(self, note: SaleNote, result: asyncio.Future[Any]) -> bool:
        """Whether the daemon holds an outcome for this sale that it never sent as RESULT.

        A register waits up to 20 minutes for a RESULT (docs/register-protocol.md §8); the
        run asks STATUS sooner so that a withheld RESULT is counted instead of stalling
        the lane. The outcome then comes from STATUS, as the register's own timeout would,
        and the checker fails the run for it (rule ``result_withheld``).
        """
        try:
            status = await self.registers[note.plan.lane].status(note.plan.correlation_id)
        except REGISTER_TROUBLE:
            return False
        if status.state not in FINAL_VALUES and status.state != SaleState.APPROVED.value:
            return False
        await asyncio.wait({result}, timeout=RESULT_GRACE)
        if result.done():
            return False
        note.withheld_state = status.state
        self.tally.results_withheld.append(note.plan.correlation_id)
        return True

    async def _cashier_cancel(self, note: SaleNote, after: float) -> None:
        await asyncio.sleep(after)
        try:
            await self.registers[note.plan.lane].cancel(note.plan.correlation_id)
        except REGISTER_TROUBLE as exc:
            note.error = f"cancel: {type(exc).__name__}: {exc}"

    async def _supervise(self, note: SaleNote) -> None:
        """A supervisor settles an escalated sale after looking at the account itself.

        Release if Mercado Pago shows an approved payment of the sale's amount that names
        this sale, void otherwise: the decision a careful supervisor would take, so that an
        override never hides a violation the daemon itself made (the checker holds every
        release to the same proof, rule ``override_unproven``).
        """
        plan = note.plan
        try:
            async with await ControlClient.connect(self.state_dir / "control.sock") as client:
                listed = await client.call("sales", {"lane": str(plan.lane),
                                                     "state": SaleState.ESCALATED.value})
                matches = [s for s in listed["sales"] if s["amount_cents"] == plan.amount_cents]
                if not matches:
                    return
                sale_id = matches[0]["sale_id"]
                record = await self._sim("GET", "/_sim/record")
                paid = any(p["amount"] == plan.amount_cents and p["status"] == "approved"
                           and _names_sale(p["external_reference"], sale_id)
                           for p in record["payments"])
                decision = "release" if paid else "void"
                await client.call("override", {
                    "sale_id": sale_id,
                    "decision": decision,
                    "reason": "chaos supervisor checked the payment at Mercado Pago",
                })
        except (ControlError, OSError) as exc:
            note.error = f"override: {type(exc).__name__}: {exc}"
            return
        self.tally.overrides[decision] += 1

    async def _hand_over(self, note: SaleNote) -> None:
        """Ask whether the goods may leave; confirm they left until the daemon knows it."""
        emulator = self.registers[note.plan.lane]
        cid = note.plan.correlation_id
        deadline = time.monotonic() + SALE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if note.handover_allowed is None:
                    reply = await emulator.handover_check(cid)
                    note.handover_allowed = reply.allowed
                    if not reply.allowed:
                        return
                await emulator.handover_done(cid)
                status = await emulator.status(cid)
            except REGISTER_TROUBLE as exc:
                note.error = f"handover: {type(exc).__name__}: {exc}"
                await asyncio.sleep(LOOK_INTERVAL)
                continue
            if status.state in (SaleState.HANDED_OVER.value, SaleState.OVERRIDDEN.value,
                                SaleState.HANDOVER_UNCONFIRMED.value):
                note.handed_over = True
                return
            await asyncio.sleep(LOOK_INTERVAL)

    async def _pending_sale(self, note: SaleNote) -> None:
        emulator = self.registers[note.plan.lane]
        cid = note.plan.correlation_id
        task = asyncio.ensure_future(
            emulator.sale(note.plan.amount_cents, cid, within=SALE_TIMEOUT)
        )
        deadline = time.monotonic() + HOLD_WATCH
        while time.monotonic() < deadline and not task.done():
            if cid in emulator.held:
                note.held_seen = True
                break
            await asyncio.sleep(LOOK_INTERVAL)
        if task.done():
            with contextlib.suppress(Exception):
                note.outcome = task.result().outcome.value
        else:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    # --- faults against the running parts -----------------------------------------------

    async def _inject_faults(self) -> None:
        rng = self.fault_rng
        forced = forced_order(rng, tuple(PART_FAULT_WEIGHTS))
        actions: dict[str, Callable[[], Awaitable[bool | None]]] = {
            "daemon_sigkill": self._kill_daemon,
            "daemon_sigkill_mid_create": self._kill_daemon_mid_create,
            "daemon_sigkill_mid_verify": self._kill_daemon_mid_verify,
            "relay_sigkill": self._kill_relay,
            "api_timeout_after_create": self._stall_create,
            "api_429_burst": self._burst_429,
            "api_5xx_burst": self._burst_5xx,
            "serial_noise": self._serial_noise,
            "serial_corrupt_frame": self._corrupt_frame,
            "serial_lost_ack": self._lost_ack,
            "register_unplug": self._unplug,
        }
        while True:
            pause = rng.expovariate(1.0 / self.options.fault_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sold.wait(), pause)
            if self._sold.is_set():
                return
            kind = next(forced, None) or rng.choices(
                list(PART_FAULT_WEIGHTS), weights=list(PART_FAULT_WEIGHTS.values())
            )[0]
            if await actions[kind]() is not False:
                self.tally.faults[kind] += 1

    async def _kill_daemon(self) -> None:
        await self.rig.latest_run.kill()
        await asyncio.sleep(self.fault_rng.uniform(0.0, 1.5))
        self.tally.daemon_restart_seconds.append(await self._start_daemon())

    async def _kill_daemon_mid_create(self) -> bool:
        return await self._kill_daemon_on(b"POST", b"/payment-intents")

    async def _kill_daemon_mid_verify(self) -> bool:
        return await self._kill_daemon_on(b"GET", b"/v1/payments/")

    async def _kill_daemon_on(self, method: bytes, path_part: bytes) -> bool:
        """SIGKILL the daemon just after it sent such a request, before it hears the answer."""
        assert self.proxy is not None
        wire = self.proxy.trip_wire(method, path_part)
        try:
            await asyncio.wait_for(asyncio.shield(wire), TRIP_WIRE_WAIT)
        except TimeoutError:
            wire.cancel()
            return False
        await self._kill_daemon()
        return True

    async def _kill_relay(self) -> None:
        await self.relay.kill()
        await asyncio.sleep(self.fault_rng.uniform(0.5, 4.0))
        self.tally.relay_restart_seconds.append(await self._start_relay())

    async def _stall_create(self) -> None:
        assert self.proxy is not None
        self.proxy.arm()

    async def _burst_429(self) -> None:
        await self._sim("POST", "/_sim/faults",
                        {"get_429": self.fault_rng.randint(2, 8), "retry_after": 1})

    async def _burst_5xx(self) -> None:
        await self._sim("POST", "/_sim/faults", {"get_5xx": self.fault_rng.randint(2, 8)})

    def _some_register(self) -> RegisterEmulator:
        return self.registers[self.fault_rng.choice(list(self._lanes()))]

    async def _serial_noise(self) -> None:
        noise = bytes(self.fault_rng.randrange(256) for _ in range(self.fault_rng.randint(1, 64)))
        self._some_register().inject_noise(noise)

    async def _corrupt_frame(self) -> None:
        self._some_register().corrupt_next_frame()

    async def _lost_ack(self) -> None:
        emulator = self._some_register()
        if self.fault_rng.random() < 0.5:
            emulator.drop_next_ack_sent()
        else:
            emulator.drop_next_ack_received()

    async def _unplug(self) -> None:
        emulator = self._some_register()
        await emulator.unplug()
        await asyncio.sleep(self.fault_rng.uniform(0.2, 2.0))
        await emulator.replug()

    # --- settling and evidence -------------------------------------------------------------

    async def settle(self) -> None:
        """Let lost outcomes be asked for and notifications arrive, then stop the daemon."""
        await self._ask_lost_outcomes()
        await self._await_webhooks()
        await self._await_relay_drained()
        self.tally.stalled_creates = self.proxy.stalled if self.proxy else 0
        code = await self.rig.stop_daemon(DAEMON_STOP_TIMEOUT)
        if code != 0:
            raise RuntimeError(f"pointd run stopped with {code}:\n{self.rig.latest_run.log_tail()}")

    async def _ask_lost_outcomes(self) -> None:
        deadline = time.monotonic() + STATUS_SETTLE_TIMEOUT
        for note in self.notes:
            if note.outcome is not None or note.plan.outcome == "confirmation_pending":
                continue
            emulator = self.registers[note.plan.lane]
            while time.monotonic() < deadline:
                try:
                    status = await emulator.status(note.plan.correlation_id)
                except REGISTER_TROUBLE:
                    await asyncio.sleep(LOOK_INTERVAL)
                    continue
                state = status.state
                if state in FINAL_VALUES or state == SaleState.APPROVED.value:
                    note.outcome = _register_outcome(state)
                    if note.outcome == "approved" and not note.handed_over:
                        await self._hand_over(note)
                    break
                if state in {SaleState.HELD.value, SaleState.ESCALATED.value,
                             SaleState.BLOCKED.value, msg.UNKNOWN_STATE}:
                    break
                await asyncio.sleep(LOOK_INTERVAL)

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
            await asyncio.sleep(LOOK_INTERVAL * 5)

    async def _await_relay_drained(self) -> None:
        """Until the daemon has acknowledged every event of its store's stream."""
        deadline = time.monotonic() + NOTIFICATION_SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            page = await self._relay_page(after=None)
            if all(event.get("kind") == "canary" for event in page):
                return
            await asyncio.sleep(LOOK_INTERVAL * 5)

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

    async def evidence(self) -> Evidence:
        """Read the simulator's record, the relay's stream and the (stopped) daemon's journal."""
        record = await self._sim("GET", "/_sim/record")
        stream: list[RelayEventView] = []
        after = 0
        while page := await self._relay_page(after):
            for event in page:
                stream.append(_relay_view(event))
            after = int(page[-1]["cursor"])
        journal = Journal.open(self.state_dir / "journal.sqlite3")
        try:
            rows = journal.sales(limit=10 * self.options.sales + 100)
            sales = [
                JournalSale(row.sale_id, row.lane, row.correlation_id, row.state,
                            row.amount_cents, row.payment_id, row.terminal_id, row.refusal)
                for row in rows
            ]
            journaled = frozenset(e.event_id for e in stream
                                  if journal.notification_seen(f"relay:{e.event_id}"))
            overrides = [
                OverrideAudit(str(entry.args.get("sale_id")), str(entry.args.get("decision")),
                              entry.outcome)
                for entry in journal.audit_log(limit=10 * self.options.sales + 100)
                if entry.method == "override"
            ]
        finally:
            journal.close()
        register = [
            RegisterView(n.plan.correlation_id, n.plan.lane, n.plan.amount_cents, n.outcome,
                         n.handover_allowed, result_withheld=n.withheld_state is not None)
            for n in self.notes
        ]
        terminals = frozenset(device_id(lane) for lane in range(1, self.options.lanes + 1))
        return Evidence(STORE_ID, record, sales, stream, journaled, register, terminals,
                        overrides)


FINAL_VALUES = frozenset(state.value for state in FINAL_STATES)


def _register_outcome(state: str) -> str:
    mapping = {
        SaleState.APPROVED.value: "approved",
        SaleState.HANDED_OVER.value: "approved",
        SaleState.OVERRIDDEN.value: "approved",
        SaleState.HANDOVER_UNCONFIRMED.value: "approved",
        SaleState.DECLINED.value: "declined",
        SaleState.CANCELED.value: "canceled",
        SaleState.FAILED.value: "error",
        SaleState.ABANDONED.value: "abandoned",
    }
    return mapping[state]


def _names_sale(reference: object, sale_id: str) -> bool:
    try:
        return ExternalReference.parse(str(reference)).sale == sale_id
    except ExternalReferenceError:
        return False


def _relay_view(event: Mapping[str, Any]) -> RelayEventView:
    data_id: str | None = None
    state: str | None = None
    try:
        body = json.loads(base64.b64decode(event.get("body_b64") or b""))
    except ValueError:
        body = None
    if isinstance(body, dict):
        data_id = None if body.get("id") is None else str(body.get("id"))
        state = None if body.get("state") is None else str(body.get("state"))
    return RelayEventView(int(event["id"]), str(event.get("kind")), data_id, state)


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
    durations = sorted(n.seconds for n in run.notes)
    return {
        "benchmark": "chaos",
        "options": asdict(options),
        "wall_seconds": round(wall, 1),
        "sales": len(run.notes),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "faults": dict(sorted(tally.faults.items())),
        "creates_stalled_by_proxy": tally.stalled_creates,
        "supervisor_overrides": dict(sorted(tally.overrides.items())),
        "results_withheld": tally.results_withheld,
        "daemon_restarts": len(tally.daemon_restart_seconds),
        "daemon_restart_to_ready_mean_s": round(_mean(tally.daemon_restart_seconds), 2),
        "relay_restarts": len(tally.relay_restart_seconds),
        "sale_seconds_p50": round(durations[len(durations) // 2], 2) if durations else 0.0,
        "sale_seconds_max": round(durations[-1], 2) if durations else 0.0,
        "checked": {rule: checked.cases[rule] for rule in RULES},
        "unexercised_rules": list(checked.unexercised),
        "passed": checked.passed,
        "violations_by_rule": count_by_rule(checked.violations),
        "violations": [str(v) for v in checked.violations],
        "daemon_error_lines": len(failures),
        "daemon_error_samples": failures[:5],
        "sale_errors": [f"{n.plan.correlation_id}: {n.error}" for n in run.notes if n.error][:10],
    }


def print_report(figures: dict[str, Any]) -> None:
    """The counts, then every violation."""
    print(f"\nsales: {figures['sales']} in {figures['wall_seconds']} s "
          f"(p50 {figures['sale_seconds_p50']} s, max {figures['sale_seconds_max']} s per sale)")
    print("outcomes:   " + ", ".join(f"{k} {v}" for k, v in figures["outcomes"].items()))
    print("faults:     " + ", ".join(f"{k} {v}" for k, v in figures["faults"].items()))
    print(f"            creates stalled by the proxy {figures['creates_stalled_by_proxy']}, "
          f"daemon restarts {figures['daemon_restarts']} (READY after "
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
        evidence = await run.evidence()
    checked = check(evidence)
    return report(options, run, checked, time.monotonic() - started,
                  [line for daemon in run.rig.runs for line in daemon_failures(daemon.log_path)])


def main(argv: list[str]) -> int:
    """``python bench/chaos.py --sales N --seed S``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sales", type=int, default=500, help="sales to make (default 500)")
    parser.add_argument("--seed", type=int, default=1, help="RNG seed for sales and faults")
    parser.add_argument("--lanes", type=int, default=4, help="checkout lanes (default 4)")
    parser.add_argument("--fault-interval", type=float, default=2.5,
                        help="mean seconds between faults against the parts (default 2.5)")
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
    options = ChaosOptions(args.sales, args.seed, args.lanes, args.fault_interval,
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
          f"lanes {options.lanes}  relay delivery {options.relay_delivery}")
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
