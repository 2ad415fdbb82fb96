"""The daemon's periodic jobs: stale-sale sweep, device refresh, relay health, retention, export.

Theory of operation
-------------------
``DaemonJobs`` owns one apscheduler ``AsyncIOScheduler`` and registers every job when it is
built, so the triggers can be inspected before the loop runs; ``start`` starts the
scheduler on the running loop and ``shutdown`` stops it. Every job is a coroutine function
on purpose: apscheduler runs plain functions in a thread pool, and the engine (timers,
tasks) and the journal's connection belong to the loop's thread.

- **Stale-sale sweep** (interval). A sale with timers is updated at least every few minutes
  while it lives (each timer firing changes it). One that has not been updated for
  ``stale_after`` seconds has lost its timers (an effect task died, a timer handle was
  dropped), so the core's own restart recovery (``pointd.core.recovery.recover``) is run
  for that sale alone: it re-asks Mercado Pago and re-arms its timers. Each sale is swept
  at most once per ``stale_after``, so a sale that stays stuck costs one fetch per period.
  Sales waiting for a person (BLOCKED) own no timers and are left alone; a CREATING sale
  waits longer (``CREATING_STALE_AFTER``), since its create may be in flight, and an
  APPROVED one its register's ``handover_confirm_after`` longer (its one timer is that).
- **Device-list refresh** and **relay health** (intervals) call what the runtime injects.
- **Journal retention** (interval) calls ``prune(before)`` on a ``RetentionTarget`` (the
  runtime passes the ``Journal``); events are append-only, so only the notification dedupe
  keys are pruned there.
- **Core compaction** (interval, and once at start when the newest snapshot is older than
  the interval or missing, because a store PC switched off every night never reaches a
  day of uptime). It submits ``SettledSalesForgotten`` through the engine, so final sales
  older than ``forget_after_days`` leave the live state exactly as a replay will drop them,
  then snapshots the state with its seq. Memory then holds the unfinished sales and a few
  days of settled ones, and a start replays only the events after the snapshot. Forgotten
  sales stay in the journal's ``sales`` projection and events (pointctl, exports).
- **Reconciliation export** (cron, local time). At ``export_at`` the day so far and the
  previous day are written (yesterday again, complete and with its late outcomes settled);
  the export itself is ``pointd.app.reconciliation_export`` (docs/reconciliation-export.md).

A job that fails is logged and recorded in ``status()``; it runs again at its next time.
Jobs read the time from the injected wall clock; their firing follows the scheduler's clock
(apscheduler's: the real one, unless the caller hands in another ``JobScheduler``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
import tzlocal
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from pointd.app.reconciliation_export import PaymentLookup, ReconciliationExport
from pointd.core.effects import Effect, subject_of
from pointd.core.events import (
    Event,
    SettledSalesForgotten,
)
from pointd.core.machine import OWNED_TIMERS, CoreState, Sale, Step, forgettable
from pointd.core.policy import Policy
from pointd.core.recovery import recover
from pointd.core.states import SaleState
from pointd.journal.store import Journal

log = structlog.get_logger(__name__)

S = SaleState

# The sweep only reads the in-memory state, so once a minute is cheap; a sale whose timers
# were lost waits at most STALE_AFTER + SWEEP_INTERVAL before it is re-asked.
SWEEP_INTERVAL = 60.0
# A live sale's timers change it at least every max(poll_fallback_after, verify_max_backoff,
# reconcile_max_backoff, create_retry_after) seconds (120 s with the default policy);
# more than twice that without a change means its timers are gone.
STALE_AFTER = 300.0
# A CREATING sale may have its create in flight, and reconciling it then could prove "not
# found" too early and start a second attempt. The HTTP client's timeouts add up to 360 s
# at their configured maxima, so after 900 s (also when Mercado Pago abandons an untaken
# intent) the create is certainly over and reconciling it is safe.
CREATING_STALE_AFTER = 900.0
# Same as the default [terminals] refresh_interval: the account's device list rarely changes.
DEVICE_REFRESH_INTERVAL = 300.0
# The relay canary must come back within 30 s; evaluating every 10 s reports a silent
# relay within a third of that window, so the daemon falls back to polling promptly.
RELAY_HEALTH_INTERVAL = 10.0
# Pruning is idempotent and the tables grow slowly: once a day is enough.
RETENTION_INTERVAL = 24 * 3600.0
# As the default [journal] retention_days: a dispute up to a year old can still be answered.
RETENTION_DAYS = 400
# Settled sales stay in memory this long after their last change; then only the journal
# has them (sales projection, events). Two days: registers and cashiers ask about today's
# sales, the reconciliation export reads the journal, and the engine's reconciliation
# looks back about 48 hours at most (whole days plus a day's margin), so the intents it
# meets there still belong to known sales.
FORGET_AFTER_DAYS = 2.0
# Never less: a sale must stay known at least for the rest of its store day.
MIN_FORGET_AFTER_DAYS = 1.0
# A day of sales is what the state grows by between runs, and what a start replays at most.
COMPACTION_INTERVAL = 24 * 3600.0
# Five minutes before midnight, so the file is on disk when the store's day is closed; the
# next night's run rewrites it complete (see ReconciliationExport).
EXPORT_AT = dt.time(23, 55)
# A cron run delayed this long (loop busy, clock stepped) still runs; later it is skipped
# and the next night's run rewrites the day anyway.
EXPORT_MISFIRE_GRACE = 3600
# The scheduler's stop is queued on the loop; it takes one turn, a few are allowed.
_SHUTDOWN_TURNS = 10

SWEEP_JOB = "stale-sale-sweep"
DEVICE_REFRESH_JOB = "device-refresh"
RELAY_HEALTH_JOB = "relay-health"
RETENTION_JOB = "journal-retention"
EXPORT_JOB = "reconciliation-export"
COMPACTION_JOB = "core-compaction"
COMPACTION_CATCH_UP_JOB = "core-compaction-catch-up"
EXPORT_CATCH_UP_JOB = "reconciliation-export-catch-up"



class JobsEngine(Protocol):
    """What the jobs need from the engine (``pointd.app.engine.Engine`` has it)."""

    @property
    def state(self) -> CoreState:
        """The core state after the last journaled event."""
        ...

    @property
    def policy(self) -> Policy:
        """The decision parameters in force."""
        ...

    @property
    def journal(self) -> Journal:
        """The journal the engine writes."""
        ...

    def run_effects(self, effects: Iterable[Effect]) -> None:
        """Start effects in order."""
        ...

    async def submit(self, event: Event) -> Step:
        """Decide, journal, then run the effects of one event."""
        ...




class RetentionTarget(Protocol):
    """Something with auxiliary records that may be pruned by age."""

    def prune(self, before: float) -> int:
        """Delete prunable records older than ``before`` (wall-clock seconds); return how many."""
        ...


# --- stale-sale sweep ----------------------------------------------------------------------


def stale_sales(state: CoreState, now: float, stale_after: float,
                swept: Mapping[str, float] | None = None,
                handover_wait: float = 0.0) -> tuple[Sale, ...]:
    """Unfinished sales with timers, unchanged (and unswept) for more than ``stale_after``.

    CREATING sales wait at least CREATING_STALE_AFTER: their create may still be in flight.
    APPROVED sales wait ``handover_wait`` more: their register may take that long.
    """
    swept = swept or {}

    def threshold(sale: Sale) -> float:
        if sale.state is S.CREATING:
            return max(stale_after, CREATING_STALE_AFTER)
        if sale.state is S.APPROVED:
            return stale_after + handover_wait
        return stale_after

    return tuple(
        sale for sale in state.unfinished()
        if sale.state in OWNED_TIMERS
        and now - max(sale.updated_at, swept.get(sale.sale_id, -math.inf)) > threshold(sale)
    )


def recovery_effects(state: CoreState, sales: Iterable[Sale], now: float,
                     policy: Policy) -> tuple[Effect, ...]:
    """The core's restart-recovery effects for these sales only."""
    wanted = {sale.sale_id for sale in sales}
    return tuple(e for e in recover(state, now, policy) if subject_of(e) in wanted)


def longest_quiet_interval(policy: Policy) -> float:
    """The longest a live sale with working timers goes without changing."""
    return max(policy.poll_fallback_after, policy.verify_max_backoff,
               policy.reconcile_max_backoff, policy.create_retry_after)


# --- the scheduler -------------------------------------------------------------------------


class JobScheduler(Protocol):
    """What the jobs need of a scheduler (apscheduler's ``AsyncIOScheduler`` is one)."""

    @property
    def running(self) -> bool:
        """Whether it has started and not yet shut down."""
        ...

    def add_job(self, func: Callable[..., Any], trigger: Any = None, **kwargs: Any) -> Any:
        """Register a job (``trigger`` None: run it once, as soon as started)."""
        ...

    def start(self) -> None:
        """Start firing jobs on the running loop."""
        ...

    def shutdown(self, wait: bool = True) -> None:
        """Stop firing jobs."""
        ...

    def get_jobs(self) -> list[Any]:
        """The jobs, each with ``id``, ``trigger`` and ``next_run_time``."""
        ...


@dataclass(slots=True)
class JobRecord:
    """The last outcome of one job, for the technician's view."""

    runs: int = 0
    last_started_at: float | None = None
    last_ok_at: float | None = None
    last_error: str | None = None
    last_result: dict[str, Any] = field(default_factory=dict)


class DaemonJobs:
    """Owns the daemon's scheduler and its periodic jobs; see the module docstring."""

    def __init__(
        self,
        *,
        engine: JobsEngine,
        cloud: PaymentLookup,
        wall_clock: Callable[[], float],
        refresh_devices: Callable[[], Awaitable[object]] | None = None,
        evaluate_relay: Callable[[], object] | None = None,
        retention: RetentionTarget | None = None,
        timezone: dt.tzinfo | None = None,
        export_dir: Path | None = None,
        export_at: dt.time = EXPORT_AT,
        sweep_interval: float = SWEEP_INTERVAL,
        stale_after: float = STALE_AFTER,
        device_refresh_interval: float = DEVICE_REFRESH_INTERVAL,
        relay_health_interval: float = RELAY_HEALTH_INTERVAL,
        retention_interval: float = RETENTION_INTERVAL,
        retention_days: int = RETENTION_DAYS,
        compaction_interval: float = COMPACTION_INTERVAL,
        forget_after_days: float = FORGET_AFTER_DAYS,
        scheduler: Callable[[dt.tzinfo], JobScheduler] | None = None,
    ) -> None:
        for name, value in (("sweep_interval", sweep_interval), ("stale_after", stale_after),
                            ("device_refresh_interval", device_refresh_interval),
                            ("relay_health_interval", relay_health_interval),
                            ("retention_interval", retention_interval),
                            ("compaction_interval", compaction_interval)):
            _check_seconds(name, value)
        if isinstance(forget_after_days, bool) \
                or not isinstance(forget_after_days, int | float) \
                or not math.isfinite(forget_after_days) \
                or forget_after_days < MIN_FORGET_AFTER_DAYS:
            raise ValueError(f"forget_after_days must be a number of days of at least "
                             f"{MIN_FORGET_AFTER_DAYS:g}")
        if isinstance(retention_days, bool) or not isinstance(retention_days, int) \
                or retention_days < 1:
            raise ValueError("retention_days must be a positive whole number of days")
        if not isinstance(export_at, dt.time):
            raise ValueError("export_at must be a datetime.time")
        quiet = longest_quiet_interval(engine.policy)
        if stale_after <= quiet:
            raise ValueError(f"stale_after ({stale_after:g} s) must exceed the longest quiet "
                             f"interval of a live sale ({quiet:g} s): healthy sales would "
                             "be swept")
        self._engine = engine
        self._clock = wall_clock
        self._refresh_devices = refresh_devices
        self._evaluate_relay = evaluate_relay
        self._retention = retention
        self._stale_after = float(stale_after)
        self._retention_days = retention_days
        self._compaction_interval = float(compaction_interval)
        self._forget_after_days = float(forget_after_days)
        self._swept: dict[str, float] = {}
        self.timezone: dt.tzinfo = timezone if timezone is not None else tzlocal.get_localzone()
        if export_dir is None:
            export_dir = engine.journal.path.parent / "exports"
        self.exporter = ReconciliationExport(
            journal=engine.journal,
            cloud=cloud,
            policy=engine.policy,
            store_id=engine.state.store_id,
            directory=export_dir,
            timezone=self.timezone,
            clock=wall_clock,
            fraud_alerts=lambda: engine.state.fraud_alerts,
        )
        self.records: dict[str, JobRecord] = {}
        self.scheduler: JobScheduler = (
            scheduler(self.timezone) if scheduler is not None
            else AsyncIOScheduler(timezone=self.timezone)
        )
        self._add(SWEEP_JOB, self.sweep_stale_sales, IntervalTrigger(seconds=sweep_interval))
        if refresh_devices is not None:
            self._add(DEVICE_REFRESH_JOB, self.refresh_devices,
                      IntervalTrigger(seconds=device_refresh_interval))
        if evaluate_relay is not None:
            self._add(RELAY_HEALTH_JOB, self.evaluate_relay,
                      IntervalTrigger(seconds=relay_health_interval))
        if retention is not None:
            self._add(RETENTION_JOB, self.prune_journal,
                      IntervalTrigger(seconds=retention_interval))
        self._add(COMPACTION_JOB, self.compact_core,
                  IntervalTrigger(seconds=compaction_interval))
        self._add(EXPORT_JOB, self.export_closing_days,
                  CronTrigger(hour=export_at.hour, minute=export_at.minute,
                              second=export_at.second, timezone=self.timezone),
                  misfire_grace_time=EXPORT_MISFIRE_GRACE)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler on the running loop; catch up yesterday's export if missing."""
        yesterday = self.exporter.today() - dt.timedelta(days=1)
        if not all(path.exists() for path in self.exporter.paths(yesterday)):
            # The daemon was down at export time: write the missing day once, now.
            self.scheduler.add_job(self._recorded(EXPORT_CATCH_UP_JOB, self._catch_up),
                                   id=EXPORT_CATCH_UP_JOB, replace_existing=True)
        if self._snapshot_is_due():
            self.scheduler.add_job(self._recorded(COMPACTION_CATCH_UP_JOB, self.compact_core),
                                   id=COMPACTION_CATCH_UP_JOB, replace_existing=True)
        self.scheduler.start()

    async def shutdown(self) -> None:
        """Stop the scheduler; a job in progress is cancelled (an export leaves no file)."""
        if not self._running():
            return
        self.scheduler.shutdown(wait=False)
        # AsyncIOScheduler stops on the loop's next turn; wait, so that nothing fires after.
        for _ in range(_SHUTDOWN_TURNS):
            if not self._running():
                return
            await asyncio.sleep(0)

    def _running(self) -> bool:
        # A method, not the attribute: shutdown() changes it between two reads.
        return self.scheduler.running

    def status(self) -> list[dict[str, Any]]:
        """Each job's trigger, next run and last outcome, JSON-able."""
        rows = []
        for job in self.scheduler.get_jobs():
            record = self.records.get(job.id, JobRecord())
            next_run = getattr(job, "next_run_time", None)
            rows.append({
                "id": job.id,
                "trigger": str(job.trigger),
                "next_run": next_run.isoformat() if next_run is not None else None,
                "runs": record.runs,
                "last_started_at": record.last_started_at,
                "last_ok_at": record.last_ok_at,
                "last_error": record.last_error,
                "last_result": record.last_result,
            })
        return rows

    # --- the jobs ----------------------------------------------------------------------------

    async def sweep_stale_sales(self) -> dict[str, Any]:
        """Re-run recovery for live sales unchanged for longer than ``stale_after``."""
        now = self._clock()
        state = self._engine.state
        stale = stale_sales(state, now, self._stale_after, self._swept,
                            self._engine.policy.handover_confirm_after)
        live = {sale.sale_id for sale in state.unfinished()}
        self._swept = {sid: at for sid, at in self._swept.items() if sid in live}
        if stale:
            for sale in stale:
                self._swept[sale.sale_id] = now
                log.warning("jobs.stale_sale", sale_id=sale.sale_id, state=sale.state.value,
                            quiet_for=round(now - sale.updated_at))
            self._engine.run_effects(recovery_effects(state, stale, now, self._engine.policy))
        return {"swept": [sale.sale_id for sale in stale]}

    async def refresh_devices(self) -> dict[str, Any]:
        """Refresh the account's device list through the injected callable."""
        if self._refresh_devices is None:
            return {}
        result = await self._refresh_devices()
        return {"result": result if isinstance(result, bool | int | str) else None}

    async def evaluate_relay(self) -> dict[str, Any]:
        """Re-evaluate the relay's health (canary, silence) through the injected callable."""
        if self._evaluate_relay is None:
            return {}
        health = self._evaluate_relay()
        state = getattr(health, "state", None)
        return {"state": str(state) if state is not None else None}

    async def prune_journal(self) -> dict[str, Any]:
        """Prune the journal's auxiliary records older than ``retention_days``."""
        if self._retention is None:
            return {}
        before = self._clock() - self._retention_days * 86400.0
        pruned = self._retention.prune(before)
        log.info("jobs.journal_pruned", before=before, pruned=pruned)
        return {"pruned": pruned}

    async def compact_core(self) -> dict[str, Any]:
        """Forget settled sales older than ``forget_after_days``, then snapshot the state."""
        before = self._clock() - self._forget_after_days * 86400.0
        # Final sales never change, so the ones counted here are the ones the step drops.
        forgotten = len(forgettable(self._engine.state, before))
        result = await self._engine.submit(SettledSalesForgotten(before=before))
        if result.rejection is not None:
            log.warning("jobs.forget_refused", reason=result.rejection.reason)
            forgotten = 0
        # The state and its seq are read together with no await between: no event slips in.
        state = self._engine.state
        journal = self._engine.journal
        seq = journal.last_seq()
        journal.write_snapshot(state, seq)
        log.info("jobs.core_compacted", forgotten=forgotten, kept=len(state.sales),
                 unfinished=len(state.unfinished()), snapshot_seq=seq)
        return {"forgotten": forgotten, "kept": len(state.sales), "snapshot_seq": seq}

    async def export_closing_days(self) -> dict[str, Any]:
        """Write yesterday's export again (complete now) and today's so far."""
        today = self.exporter.today()
        written = []
        for day in (today - dt.timedelta(days=1), today):
            csv_path, _json_path = await self.exporter.export_day(day)
            written.append(csv_path.name)
        return {"written": written}

    async def export_day(self, day: dt.date) -> tuple[Path, Path]:
        """Export one day now (pointctl, tests); return (csv_path, json_path)."""
        return await self.exporter.export_day(day)

    async def _catch_up(self) -> dict[str, Any]:
        yesterday = self.exporter.today() - dt.timedelta(days=1)
        csv_path, _json_path = await self.exporter.export_day(yesterday)
        return {"written": [csv_path.name]}

    # --- internals ---------------------------------------------------------------------------

    def _snapshot_is_due(self) -> bool:
        snapshots = self._engine.journal.snapshots()
        newest = snapshots[0].at if snapshots else None
        return newest is None or self._clock() - newest >= self._compaction_interval

    def _add(self, job_id: str, work: Callable[[], Awaitable[dict[str, Any]]], trigger: Any,
             *, misfire_grace_time: int | None = None) -> None:
        grace = misfire_grace_time
        if grace is None:
            # An interval job that missed its time runs once late rather than being
            # dropped; coalescing keeps a stalled loop from running it several times.
            grace = max(1, int(trigger.interval.total_seconds()))
        self.scheduler.add_job(self._recorded(job_id, work), trigger, id=job_id, name=job_id,
                               coalesce=True, max_instances=1, misfire_grace_time=grace,
                               replace_existing=True)

    def _recorded(self, job_id: str,
                  work: Callable[[], Awaitable[dict[str, Any]]]) -> Callable[[], Awaitable[None]]:
        record = self.records.setdefault(job_id, JobRecord())

        async def run() -> None:
            record.runs += 1
            record.last_started_at = self._clock()
            try:
                record.last_result = await work()
            except Exception as exc:
                record.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("jobs.failed", job=job_id)
                return
            record.last_ok_at = self._clock()
            record.last_error = None

        return run


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds")
