"""DaemonJobs' scheduler: the triggers it registers, the injected jobs, failures, a real run."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from pointd.app.jobs import (
    COMPACTION_INTERVAL,
    COMPACTION_JOB,
    DEVICE_REFRESH_INTERVAL,
    DEVICE_REFRESH_JOB,
    EXPORT_CATCH_UP_JOB,
    EXPORT_JOB,
    RELAY_HEALTH_INTERVAL,
    RELAY_HEALTH_JOB,
    RETENTION_DAYS,
    RETENTION_INTERVAL,
    RETENTION_JOB,
    SWEEP_INTERVAL,
    SWEEP_JOB,
    DaemonJobs,
)
from pointd.app.reconciliation_export import (
    DayReport,
)
from tests.app_jobs.conftest import DAY, TZ, FakeEngine, Store, local
from tests.support.clock import ManualClock
from tests.support.cloud import FakeCloud

NOW = local(DAY, 12)


class Pruner:
    """A RetentionTarget that remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def prune(self, before: float) -> int:
        self.asked.append(before)
        return 7


class Recorder:
    """Injected refresh/evaluate callables that count calls and note the calling thread."""

    def __init__(self) -> None:
        self.refreshed = 0
        self.evaluated = 0
        self.threads: set[int] = set()
        self.evaluated_event = asyncio.Event()
        self.fail_refresh = False

    async def refresh(self) -> bool:
        self.refreshed += 1
        if self.fail_refresh:
            raise RuntimeError("device list unavailable")
        return True

    def evaluate(self) -> object:
        self.evaluated += 1
        self.threads.add(threading.get_ident())
        self.evaluated_event.set()
        return type("Health", (), {"state": "connected"})()


def full(store: Store, recorder: Recorder, pruner: Pruner, **options: Any) -> DaemonJobs:
    return DaemonJobs(engine=FakeEngine(store.state, store.journal), cloud=FakeCloud(),
                      wall_clock=ManualClock(NOW), refresh_devices=recorder.refresh,
                      evaluate_relay=recorder.evaluate, retention=pruner, timezone=TZ,
                      **options)


def test_every_job_has_its_trigger(store: Store) -> None:
    jobs = full(store, Recorder(), Pruner())
    by_id = {job.id: job for job in jobs.scheduler.get_jobs()}

    assert set(by_id) == {SWEEP_JOB, DEVICE_REFRESH_JOB, RELAY_HEALTH_JOB, RETENTION_JOB,
                          COMPACTION_JOB, EXPORT_JOB}
    for job_id, seconds in ((SWEEP_JOB, SWEEP_INTERVAL),
                            (COMPACTION_JOB, COMPACTION_INTERVAL),
                            (DEVICE_REFRESH_JOB, DEVICE_REFRESH_INTERVAL),
                            (RELAY_HEALTH_JOB, RELAY_HEALTH_INTERVAL),
                            (RETENTION_JOB, RETENTION_INTERVAL)):
        trigger = by_id[job_id].trigger
        assert isinstance(trigger, IntervalTrigger)
        assert trigger.interval == dt.timedelta(seconds=seconds)
    export = by_id[EXPORT_JOB].trigger
    assert isinstance(export, CronTrigger)
    fields = {f.name: str(f) for f in export.fields}
    assert (fields["hour"], fields["minute"], fields["second"]) == ("23", "55", "0")
    assert export.timezone == TZ
    # Never two runs of one job at once, and a late run happens once, not in a burst.
    assert all(job.coalesce and job.max_instances == 1 for job in by_id.values())
    # Every job runs on the loop (coroutine), never in apscheduler's thread pool.
    assert all(asyncio.iscoroutinefunction(job.func) for job in by_id.values())


def test_configured_intervals_and_export_time_are_used(store: Store) -> None:
    jobs = full(store, Recorder(), Pruner(), sweep_interval=30, relay_health_interval=5,
                export_at=dt.time(22, 30))
    by_id = {job.id: job for job in jobs.scheduler.get_jobs()}
    assert by_id[SWEEP_JOB].trigger.interval == dt.timedelta(seconds=30)
    assert by_id[RELAY_HEALTH_JOB].trigger.interval == dt.timedelta(seconds=5)
    fields = {f.name: str(f) for f in by_id[EXPORT_JOB].trigger.fields}
    assert (fields["hour"], fields["minute"]) == ("22", "30")


def test_optional_jobs_are_absent_without_their_parts(store: Store) -> None:
    jobs = DaemonJobs(engine=FakeEngine(store.state, store.journal), cloud=FakeCloud(),
                      wall_clock=ManualClock(NOW), timezone=TZ)
    assert {job.id for job in jobs.scheduler.get_jobs()} == {SWEEP_JOB, COMPACTION_JOB,
                                                             EXPORT_JOB}


def test_an_export_time_that_is_not_a_time_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="export_at"):
        full(store, Recorder(), Pruner(), export_at="23:55")


@pytest.mark.parametrize("bad", [0, -5, True, 1.5])
def test_bad_retention_days_are_refused(store: Store, bad: object) -> None:
    with pytest.raises(ValueError, match="retention_days"):
        full(store, Recorder(), Pruner(), retention_days=bad)


async def test_injected_jobs_call_their_parts(store: Store) -> None:
    recorder, pruner = Recorder(), Pruner()
    jobs = full(store, recorder, pruner)

    assert await jobs.refresh_devices() == {"result": True}
    assert await jobs.evaluate_relay() == {"state": "connected"}
    assert await jobs.prune_journal() == {"pruned": 7}

    assert (recorder.refreshed, recorder.evaluated) == (1, 1)
    assert pruner.asked == [NOW - RETENTION_DAYS * 86400]


async def test_a_failing_job_is_recorded_and_runs_again(store: Store) -> None:
    recorder = Recorder()
    recorder.fail_refresh = True
    jobs = full(store, recorder, Pruner())
    run = jobs.scheduler.get_job(DEVICE_REFRESH_JOB).func

    await run()  # must not raise: apscheduler would only log it without context
    record = jobs.records[DEVICE_REFRESH_JOB]
    assert record.last_error == "RuntimeError: device list unavailable"
    assert record.last_ok_at is None

    recorder.fail_refresh = False
    await run()
    assert (record.runs, record.last_error, record.last_ok_at) == (2, None, NOW)
    status = {row["id"]: row for row in jobs.status()}
    assert status[DEVICE_REFRESH_JOB]["last_result"] == {"result": True}


async def test_the_real_scheduler_runs_jobs_on_the_loop_thread(store: Store) -> None:
    recorder = Recorder()
    jobs = full(store, recorder, Pruner())
    written = asyncio.Event()
    write = jobs.exporter.write

    def write_and_tell(report: DayReport) -> tuple[Path, Path]:
        paths = write(report)
        written.set()
        return paths

    jobs.exporter.write = write_and_tell  # type: ignore[method-assign]
    jobs.start()
    try:
        assert jobs.scheduler.running
        # Yesterday's export was never written: start() queued a catch-up run.
        catch_up = jobs.records[EXPORT_CATCH_UP_JOB]
        jobs.scheduler.get_job(RELAY_HEALTH_JOB).modify(next_run_time=dt.datetime.now(TZ))
        await asyncio.wait_for(recorder.evaluated_event.wait(), 10)
        await asyncio.wait_for(written.wait(), 10)
        status = {row["id"]: row for row in jobs.status()}
    finally:
        await jobs.shutdown()

    assert recorder.threads == {threading.get_ident()}
    assert catch_up.last_error is None
    assert all(path.exists() for path in jobs.exporter.paths(DAY - dt.timedelta(days=1)))
    assert status[SWEEP_JOB]["next_run"] is not None
    assert not jobs.scheduler.running


async def test_no_catch_up_when_yesterday_is_already_exported(store: Store) -> None:
    jobs = full(store, Recorder(), Pruner())
    await jobs.export_day(DAY - dt.timedelta(days=1))
    jobs.start()
    try:
        assert jobs.scheduler.get_job(EXPORT_CATCH_UP_JOB) is None
    finally:
        await jobs.shutdown()
