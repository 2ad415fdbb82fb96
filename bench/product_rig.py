"""The whole product for end-to-end benchmarks: a real ``pointd run`` among simulators.

``ProductRig`` is the store rig (``pointd.rig.StoreRig``) with the daemon and the relay as
subprocesses: the Mercado Pago cloud simulator and one register emulator per lane on a real
pty run in the benchmark's own event loop, and, exactly as they are deployed, ``pointd
relay`` on SQLite (unless the rig runs without a relay) and the daemon, ``python -m
pointd.cli run --config <generated TOML>``. The daemon therefore has a process
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
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pointd.cloud.sites import Site  # noqa: E402
from pointd.register import messages as msg  # noqa: E402
from pointd.rig import DAEMON_START_TIMEOUT, RigLane, StoreRig, StoreSpec  # noqa: E402
from pointd.sim.cloud import CloudSimulator, SimConfig  # noqa: E402
from pointd.sim.cloud.config import Delays  # noqa: E402
from pointd.sim.cloud.world import Delivery, SimIntent  # noqa: E402
from pointd.sim.register import RegisterEmulator  # noqa: E402

STORE_ID = "bench-store"
SITE = Site.MLB
FINAL_INTENT_STATES = frozenset({"FINISHED", "CANCELED", "ERROR", "ABANDONED"})


def device_id(lane: int) -> str:
    """The simulated terminal pinned to ``lane``."""
    return f"PAX_A910__BENCH{lane:04d}"


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
        daemon_config: dict[str, Any] = {"logging": {"level": options.log_level,
                                                     "format": "json"}}
        if options.timers:
            daemon_config["timers"] = dict(options.timers)
        if options.relay:
            daemon_config["relay"] = {"canary_interval": options.canary_interval,
                                      "silence_alarm": max(180.0, 3 * options.canary_interval)}
        spec = StoreSpec(
            store_id=STORE_ID,
            site=SITE,
            language="es",
            lanes=tuple(RigLane(lane, device_id(lane)) for lane in range(1, options.lanes + 1)),
            relay="process" if options.relay else "none",
            daemon="process",
            sim={"delays": options.delays, "time_scale": 1.0},
            daemon_config=daemon_config,
        )
        self.rig = StoreRig(
            state_dir,
            spec,
            sim_factory=lambda config: TimedCloudSimulator(
                config, customer_delay=options.customer_delay
            ),
        )

    @property
    def sim(self) -> TimedCloudSimulator:
        """The timing cloud simulator."""
        sim = self.rig.sim
        assert isinstance(sim, TimedCloudSimulator)
        return sim

    @property
    def registers(self) -> dict[int, RegisterEmulator]:
        """Each lane's register emulator."""
        return self.rig.registers

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.rig.latest_run.pid

    @property
    def running(self) -> bool:
        """Whether the daemon process still lives."""
        return self.rig.latest_run.running

    def daemon_log_tail(self, lines: int = 20) -> str:
        """The end of the daemon's output, for an error message."""
        return self.rig.latest_run.log_tail(lines)

    async def __aenter__(self) -> ProductRig:
        await self.rig.__aenter__()
        try:
            await self.rig.hello_all(DAEMON_START_TIMEOUT)
        except BaseException:
            await self.rig.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.rig.aclose()


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
