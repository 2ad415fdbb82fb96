"""The core-compaction job: forget old settled sales through the engine, then snapshot."""

from __future__ import annotations

import pytest

from pointd.app.engine import Engine
from pointd.app.jobs import (
    COMPACTION_CATCH_UP_JOB,
    FORGET_AFTER_DAYS,
    DaemonJobs,
)
from pointd.core.effects import TellRegister
from pointd.core.events import (
    HandoverConfirmed,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    PaymentVerified,
    SaleRequested,
    SettledSalesForgotten,
)
from pointd.core.states import Refusal, SaleState
from tests.app_jobs.conftest import (
    COLLECTOR,
    POLICY,
    STORE,
    TZ,
    FakeEngine,
    Store,
    ref,
)
from tests.app_jobs.test_sweep import SilentRegister
from tests.support.clock import ManualClock
from tests.support.cloud import FakeCloud

T0 = 1_773_000_000.0
DAY = 86400.0
POLL = ObservationSource.POLL


def paid(store: Store, at: float, sale_id: str, lane: int) -> None:
    intent, payment_id = f"I{sale_id}", f"P{sale_id}"
    store.feed(at, [
        SaleRequested(sale_id, lane, f"c{sale_id}", 1000, f"T{lane}", None),
        IntentCreated(sale_id, 1, intent),
        IntentObserved(intent, "FINISHED", payment_id, None, POLL, ref(sale_id, lane)),
        PaymentVerified(payment_id, "approved", None, 1000, "BRL", COLLECTOR,
                        ref(sale_id, lane)),
        HandoverConfirmed(sale_id),
    ])


def a_store_week(store: Store) -> None:
    """S01 settled 5 days ago, S02 settled 1 day ago, S03 open since 5 days ago."""
    paid(store, T0 - 5 * DAY, "S01", 1)
    store.feed(T0 - 5 * DAY, [SaleRequested("S03", 3, "cS03", 1000, "T3", None),
                              IntentCreated("S03", 1, "IS03")])
    paid(store, T0 - DAY, "S02", 2)


def real_engine(store: Store, clock: ManualClock) -> Engine:
    return Engine(journal=store.journal, state=store.journal.rebuild(STORE, POLICY),
                  policy=POLICY, cloud=FakeCloud(), register=SilentRegister(),  # type: ignore[arg-type]
                  wall_clock=clock)


async def test_old_settled_sales_leave_memory_and_a_snapshot_is_written(store: Store) -> None:
    a_store_week(store)
    clock = ManualClock(T0)
    engine = real_engine(store, clock)
    jobs = DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=clock, timezone=TZ)
    try:
        result = await jobs.compact_core()
    finally:
        await engine.stop()

    assert set(engine.state.sales) == {"S02", "S03"}  # S01 forgotten; S03 unfinished, kept
    assert engine.state.lanes == {3: "S03"}
    assert engine.state.forgotten_through == "S01"
    last = store.journal.last_seq()
    assert result == {"forgotten": 1, "kept": 2, "snapshot_seq": last}
    ((_seq, _at, event),) = store.journal.replay(last - 1)
    assert event == SettledSalesForgotten(T0 - FORGET_AFTER_DAYS * DAY)
    assert store.journal.snapshots()[0].seq == last
    # A start replays from the snapshot; a replay from scratch forgets at the same event.
    assert store.journal.rebuild(STORE, POLICY) == engine.state
    assert store.journal.rebuild(STORE, POLICY, from_snapshot=False) == engine.state
    # Views and exports still find the forgotten sale in the projection and the events.
    assert {row.sale_id for row in store.journal.sales()} == {"S01", "S02", "S03"}
    assert len(store.journal.timeline("S01")) == 5


async def test_after_compaction_the_live_engine_refuses_a_forgotten_id(store: Store) -> None:
    a_store_week(store)
    clock = ManualClock(T0)
    engine = real_engine(store, clock)
    jobs = DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=clock, timezone=TZ)
    try:
        await jobs.compact_core()
        result = await engine.submit(SaleRequested("S01", 5, "c-again", 1000, "T5", None))
    finally:
        await engine.stop()
    assert result.rejection is not None
    assert "S01" not in engine.state.sales
    (told,) = [e for e in result.effects if isinstance(e, TellRegister)]
    assert (told.state, told.refusal) == (SaleState.FAILED, Refusal.INVALID_REQUEST)


async def test_forget_after_days_is_honoured(store: Store) -> None:
    a_store_week(store)
    engine = FakeEngine(store.state, store.journal, clock=ManualClock(T0))
    jobs = DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=ManualClock(T0), timezone=TZ,
                      forget_after_days=7)
    assert (await jobs.compact_core())["forgotten"] == 0
    jobs = DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=ManualClock(T0), timezone=TZ,
                      forget_after_days=1)
    assert (await jobs.compact_core())["forgotten"] == 1  # S01; S02 ended 1 day - 4 s ago
    assert set(engine.state.sales) == {"S02", "S03"}
    clock = ManualClock(T0 + DAY)
    jobs = DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=clock, timezone=TZ,
                      forget_after_days=1)
    engine.clock = clock
    assert (await jobs.compact_core())["forgotten"] == 1
    assert set(engine.state.sales) == {"S03"}
    assert len(store.journal.snapshots()) == 2


@pytest.mark.parametrize("bad", [0, 0.5, -1, float("nan"), float("inf"), True, "2"])
def test_bad_forget_after_days_is_refused(store: Store, bad: object) -> None:
    with pytest.raises(ValueError, match="forget_after_days"):
        DaemonJobs(engine=FakeEngine(store.state, store.journal), cloud=FakeCloud(),
                   wall_clock=ManualClock(T0), timezone=TZ, forget_after_days=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -5.0, float("inf"), True])
def test_bad_compaction_interval_is_refused(store: Store, bad: object) -> None:
    with pytest.raises(ValueError, match="compaction_interval"):
        DaemonJobs(engine=FakeEngine(store.state, store.journal), cloud=FakeCloud(),
                   wall_clock=ManualClock(T0), timezone=TZ, compaction_interval=bad)  # type: ignore[arg-type]


async def test_start_catches_up_when_the_newest_snapshot_is_a_day_old(store: Store) -> None:
    """A store PC switched off every night never runs a day: start-up compacts instead."""
    a_store_week(store)
    engine = FakeEngine(store.state, store.journal, clock=ManualClock(T0))
    clock = ManualClock(T0)
    jobs = DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=clock, timezone=TZ)
    jobs.start()
    try:
        assert jobs.scheduler.get_job(COMPACTION_CATCH_UP_JOB) is not None  # no snapshot yet
    finally:
        await jobs.shutdown()
    await jobs.compact_core()

    clock.now = T0 + DAY - 60
    fresh = DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=clock, timezone=TZ)
    fresh.start()
    try:
        assert fresh.scheduler.get_job(COMPACTION_CATCH_UP_JOB) is None
    finally:
        await fresh.shutdown()

    clock.now = T0 + DAY
    stale = DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=clock, timezone=TZ)
    stale.start()
    try:
        assert stale.scheduler.get_job(COMPACTION_CATCH_UP_JOB) is not None
    finally:
        await stale.shutdown()
