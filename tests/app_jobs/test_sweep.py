"""The stale-sale sweep: which sales it re-recovers, with which effects, and how often."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from pointd.app.engine import Engine
from pointd.app.jobs import (
    CREATING_STALE_AFTER,
    STALE_AFTER,
    DaemonJobs,
    longest_quiet_interval,
    stale_sales,
)
from pointd.cloud.port import IntentView
from pointd.core.effects import (
    CreateIntent,
    FetchIntent,
    FetchPayment,
    ReconcileAttempt,
    ScheduleTimer,
    TellRegister,
    subject_of,
)
from pointd.core.events import (
    HandoverConfirmed,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    PaymentVerified,
    SaleRequested,
    TimerKind,
)
from pointd.core.machine import Step
from pointd.core.recovery import recover
from pointd.core.states import SaleState
from tests.app_jobs.conftest import (
    COLLECTOR,
    POLICY,
    STORE,
    TZ,
    FakeEngine,
    Store,
    payment,
    ref,
)
from tests.support.clock import ManualClock
from tests.support.cloud import FakeCloud

T0 = 1_773_000_000.0
POLL = ObservationSource.POLL


def four_sales(store: Store) -> None:
    """OPEN (S1), HELD (S2), APPROVED awaiting handover (S3), HANDED_OVER (S4), all at T0."""
    store.feed(T0, [SaleRequested("S1", 1, "c1", 1000, "T1", None), IntentCreated("S1", 1, "I1")])
    store.feed(T0, [
        SaleRequested("S2", 2, "c2", 1000, "T2", None), IntentCreated("S2", 1, "I2"),
        IntentObserved("I2", "CONFIRMATION_REQUIRED", "P2", None, POLL, ref("S2", 2)),
    ])
    for sale, lane in (("S3", 3), ("S4", 4)):
        store.feed(T0, [
            SaleRequested(sale, lane, f"c{lane}", 1000, f"T{lane}", None),
            IntentCreated(sale, 1, f"I{lane}"),
            IntentObserved(f"I{lane}", "FINISHED", f"P{lane}", None, POLL, ref(sale, lane)),
            PaymentVerified(f"P{lane}", "approved", None, 1000, "BRL", COLLECTOR,
                            ref(sale, lane)),
        ])
    store.feed(T0 + 5, [HandoverConfirmed("S4")])


def build(store: Store, now: float) -> tuple[DaemonJobs, FakeEngine]:
    engine = FakeEngine(store.state, store.journal)
    clock = ManualClock(now)
    return DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=clock, timezone=TZ), \
        engine, clock


async def test_only_live_sales_with_timers_quiet_too_long_are_recovered(store: Store) -> None:
    four_sales(store)
    states = {s.sale_id: s.state for s in store.state.sales.values()}
    assert states == {"S1": SaleState.OPEN, "S2": SaleState.HELD, "S3": SaleState.APPROVED,
                      "S4": SaleState.HANDED_OVER}
    jobs, engine, clock = build(store, T0 + STALE_AFTER + 10)

    result = await jobs.sweep_stale_sales()

    # S3 waits for its register's HANDOVER_DONE, with time to spare before it counts.
    assert result == {"swept": ["S1", "S2"]}
    expected = [e for e in recover(store.state, clock.now, POLICY)
                if subject_of(e) in {"S1", "S2"}]
    assert engine.ran == expected
    assert FetchIntent("S1", "I1") in engine.ran
    assert FetchPayment("S2", "P2") in engine.ran
    assert {type(e) for e in engine.ran} >= {TellRegister, ScheduleTimer}


async def test_an_approved_sale_whose_handover_wait_was_lost_is_recovered(
        store: Store) -> None:
    four_sales(store)
    late = T0 + STALE_AFTER + POLICY.handover_confirm_after + 10
    jobs, engine, _clock = build(store, late)
    assert "S3" in (await jobs.sweep_stale_sales())["swept"]
    [rearmed] = [e for e in engine.ran if isinstance(e, ScheduleTimer) and e.owner == "S3"]
    assert rearmed.kind is TimerKind.HANDOVER
    assert rearmed.at <= late  # long past due: it fires at once and frees the lane


async def test_recently_updated_sales_are_left_alone(store: Store) -> None:
    four_sales(store)
    jobs, engine, _clock = build(store, T0 + STALE_AFTER - 1)

    assert await jobs.sweep_stale_sales() == {"swept": []}
    assert engine.ran == []


async def test_a_stuck_sale_is_swept_once_per_stale_period(store: Store) -> None:
    store.feed(T0, [SaleRequested("S1", 1, "c1", 1000, "T1", None), IntentCreated("S1", 1, "I1")])
    jobs, engine, clock = build(store, T0 + STALE_AFTER + 10)

    assert (await jobs.sweep_stale_sales())["swept"] == ["S1"]
    clock.now += 60
    assert (await jobs.sweep_stale_sales())["swept"] == []
    clock.now += STALE_AFTER
    assert (await jobs.sweep_stale_sales())["swept"] == ["S1"]
    assert sum(isinstance(e, FetchIntent) for e in engine.ran) == 2


async def test_a_sale_that_moves_again_is_not_swept(store: Store) -> None:
    store.feed(T0, [SaleRequested("S1", 1, "c1", 1000, "T1", None), IntentCreated("S1", 1, "I1")])
    jobs, engine, clock = build(store, T0 + STALE_AFTER + 10)
    await jobs.sweep_stale_sales()
    engine.ran.clear()

    clock.now += STALE_AFTER + 1
    store.feed(clock.now - 1, [IntentObserved("I1", "ON_TERMINAL", None, None, POLL, None)])
    engine.state = store.state

    assert (await jobs.sweep_stale_sales())["swept"] == []
    assert engine.ran == []


def test_stale_sales_is_pure_and_respects_the_sweep_memory(store: Store) -> None:
    store.feed(T0, [SaleRequested("S1", 1, "c1", 1000, "T1", None)])
    now = T0 + 1000
    assert [s.sale_id for s in stale_sales(store.state, now, 300)] == ["S1"]
    assert stale_sales(store.state, now, 300, {"S1": now - 10}) == ()


def test_a_threshold_that_would_sweep_healthy_sales_is_refused(store: Store) -> None:
    engine = FakeEngine(store.state, store.journal)
    quiet = longest_quiet_interval(POLICY)
    with pytest.raises(ValueError, match="stale_after"):
        DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=ManualClock(T0), timezone=TZ,
                   stale_after=quiet)
    slow = dataclasses.replace(POLICY, reconcile_max_backoff=600.0)
    with pytest.raises(ValueError, match="600"):
        DaemonJobs(engine=FakeEngine(store.state, store.journal, policy=slow),
                   cloud=FakeCloud(), wall_clock=ManualClock(T0), timezone=TZ)


@pytest.mark.parametrize("name", ["sweep_interval", "stale_after", "device_refresh_interval",
                                  "relay_health_interval", "retention_interval"])
@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "60"])
def test_bad_intervals_are_refused_by_name(store: Store, name: str, bad: object) -> None:
    engine = FakeEngine(store.state, store.journal)
    with pytest.raises(ValueError, match=name):
        DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=ManualClock(T0), timezone=TZ,
                   **{name: bad})  # type: ignore[arg-type]


class SilentRegister:
    """Collects what the engine tells the register."""

    def __init__(self) -> None:
        self.told: list[TellRegister] = []

    async def tell(self, effect: TellRegister) -> None:
        self.told.append(effect)


async def test_a_sale_with_lost_timers_reaches_the_truth_through_the_real_engine(
        store: Store) -> None:
    store.feed(T0, [SaleRequested("S1", 1, "c1", 1000, "T1", None), IntentCreated("S1", 1, "I1")])
    # The intent finished and its payment is approved at Mercado Pago.
    cloud = FakeCloud(
        intents={"I1": IntentView("I1", "FINISHED", "P1", "approved", ref("S1", 1), 1000)},
        payments={"P1": payment("P1", "approved", 1000, ref("S1", 1))},
    )
    clock = ManualClock(T0 + STALE_AFTER + 10)
    approved = asyncio.Event()

    def on_step(event: object, result: Step) -> None:
        sale = result.state.sales.get("S1")
        if sale is not None and sale.state is SaleState.APPROVED:
            approved.set()

    # Built from the journal without running recovery: the sale's timers are lost.
    engine = Engine(journal=store.journal, state=store.journal.rebuild(STORE, POLICY),
                    policy=POLICY, cloud=cloud, register=SilentRegister(), wall_clock=clock,
                    on_step=on_step)
    jobs = DaemonJobs(engine=engine, cloud=cloud, wall_clock=clock, timezone=TZ)
    try:
        assert engine.pending_timers() == []
        assert (await jobs.sweep_stale_sales())["swept"] == ["S1"]
        await asyncio.wait_for(approved.wait(), 10)
    finally:
        await engine.stop()

    assert engine.state.sales["S1"].state is SaleState.APPROVED
    assert store.journal.sales()[0].state is SaleState.APPROVED
    assert cloud.calls[:2] == [("get_state", "I1"), ("get_payment", "P1")]


async def test_a_creating_sale_is_reconciled_only_long_after_its_create_could_end(
        store: Store) -> None:
    store.feed(T0, [SaleRequested("S1", 1, "c1", 1000, "T1", None)])
    assert store.state.sales["S1"].state is SaleState.CREATING
    jobs, engine, clock = build(store, T0 + STALE_AFTER + 10)

    assert (await jobs.sweep_stale_sales())["swept"] == []
    clock.now = T0 + CREATING_STALE_AFTER + 1
    assert (await jobs.sweep_stale_sales())["swept"] == ["S1"]
    assert [type(e) for e in engine.ran if isinstance(e, ReconcileAttempt)] == [ReconcileAttempt]
    assert not any(isinstance(e, CreateIntent) for e in engine.ran)
