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
  see ``ReconciliationExport`` and docs/reconciliation-export.md.

A job that fails is logged and recorded in ``status()``; it runs again at its next time.
Jobs read the time from the injected wall clock; only their firing follows the real clock.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import io
import json
import math
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import structlog
import tzlocal
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from pointd.cloud.errors import CloudError, NotFound
from pointd.cloud.models import Payment
from pointd.core.effects import Effect
from pointd.core.events import (
    Event,
    IntentObserved,
    OverrideDecision,
    OverrideGiven,
    PaymentsFound,
    PaymentVerified,
    SettledSalesForgotten,
)
from pointd.core.machine import OWNED_TIMERS, CoreState, Sale, Step, forgettable, step
from pointd.core.policy import Policy
from pointd.core.recovery import recover
from pointd.core.reference import ExternalReference, ExternalReferenceError
from pointd.core.states import SaleState
from pointd.journal.store import Journal, SaleRow, TimelineEntry

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
EXPORT_DIR_MODE = 0o750
EXPORT_FILE_MODE = 0o640
# journal.sales needs a limit; this is far beyond what one store sells in a day.
EXPORT_SALES_LIMIT = 100_000
# After this many Mercado Pago calls in a row fail, the rest of the export is marked unknown
# instead of waiting for every remaining call's timeouts (an offline store has hundreds).
EXPORT_FAILURES_BEFORE_GIVING_UP = 3
# A cron run delayed this long (loop busy, clock stepped) still runs; later it is skipped
# and the next night's run rewrites the day anyway.
EXPORT_MISFIRE_GRACE = 3600
EXPORT_FORMAT = "pointd-reconciliation/1"
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

# Sales whose goods may have left: Mercado Pago must show exactly one approved payment.
_RELEASED_STATES = frozenset({S.APPROVED, S.HANDED_OVER, S.OVERRIDDEN, S.HANDOVER_UNCONFIRMED})
# Sales that ended without goods leaving: no payment of theirs may be approved.
_ENDED_UNPAID_STATES = frozenset({S.DECLINED, S.CANCELED, S.FAILED, S.ABANDONED})
_HOLD_STATES = frozenset({S.HELD, S.ESCALATED})
_APPROVED = "approved"
# Spreadsheets run cells that start with these as formulas; free text is neutralised.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


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


class PaymentLookup(Protocol):
    """The two ``CloudPort`` calls the export makes (any CloudPort is one)."""

    async def find_payments(self, external_reference: str) -> list[Payment]:
        """Payments carrying this external_reference (GET /v1/payments/search)."""
        ...

    async def get_payment(self, payment_id: str) -> Payment:
        """One payment by id (GET /v1/payments/{id})."""
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
    return tuple(e for e in recover(state, now, policy) if e.sale_id in wanted)


def longest_quiet_interval(policy: Policy) -> float:
    """The longest a live sale with working timers goes without changing."""
    return max(policy.poll_fallback_after, policy.verify_max_backoff,
               policy.reconcile_max_backoff, policy.create_retry_after)


# --- reconciliation export -----------------------------------------------------------------


class Match(StrEnum):
    """How one export line compares with Mercado Pago."""

    OK = "ok"  # the payment exists with the journal's amount and a consistent status
    MISMATCH = "mismatch"  # it exists but amount, currency or status disagree
    MISSING = "missing_at_mercado_pago"  # the journal names it; Mercado Pago says 404
    UNKNOWN = "unknown"  # Mercado Pago could not be asked
    EXTRA = "extra"  # found at Mercado Pago for this sale's references; the journal lacks it
    NO_PAYMENT = "no_payment"  # no payment in the journal and none at Mercado Pago


@dataclass(frozen=True, slots=True)
class OverrideRecord:
    """A supervisor override the core accepted for a sale."""

    decision: OverrideDecision
    reason: str
    uid: int
    at: float


@dataclass(frozen=True, slots=True)
class PaymentLine:
    """One payment of a sale (or its absence) compared with Mercado Pago."""

    payment_id: str | None
    journal_status: str | None
    mp_status: str | None
    mp_amount_cents: int | None
    mp_currency: str | None
    mp_refunded_cents: int | None
    matched: Match
    differences: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SaleRecord:
    """One sale of the day with its history and its payments' comparison."""

    sale_id: str
    lane: int
    correlation_id: str
    requested_at: float
    updated_at: float
    amount_cents: int
    state: SaleState
    refusal: str | None
    attempts: int
    intent_id: str | None
    payment_id: str | None
    held: bool
    overrides: tuple[OverrideRecord, ...]
    payments: tuple[PaymentLine, ...]


@dataclass(frozen=True, slots=True)
class DayReport:
    """Everything one day's export files contain."""

    store_id: str
    day: dt.date
    timezone: str
    currency: str
    generated_at: float
    complete: bool  # every Mercado Pago question was answered
    truncated: bool  # the day had more sales than EXPORT_SALES_LIMIT
    sales: tuple[SaleRecord, ...]

    def counts(self) -> dict[str, int]:
        """How many lines of each Match value the day has."""
        totals = dict.fromkeys((m.value for m in Match), 0)
        for sale in self.sales:
            for line in sale.payments:
                totals[line.matched.value] += 1
        return totals


@dataclass(frozen=True, slots=True)
class _History:
    held: bool
    overrides: tuple[OverrideRecord, ...]
    journal_status: dict[str, str | None]  # every payment id the journal ties to the sale


def sale_history(entries: Sequence[TimelineEntry], sale_id: str, store_id: str,
                 policy: Policy, fraud_alerts: frozenset[str] = frozenset()) -> _History:
    """Replay one sale's timeline alone: was it ever held, its overrides, its payments.

    The events are replayed through the core exactly as journaled, against a state that
    holds only this sale (plus the fraud alerts, which the journal files under no sale), so
    the states it passed through and the overrides the core accepted come out as decided.
    """
    state = dataclasses.replace(CoreState.empty(store_id), fraud_alerts=fraud_alerts)
    held = False
    overrides: list[OverrideRecord] = []
    statuses: dict[str, str | None] = {}
    for entry in entries:
        event = entry.event
        result = step(state, event, now=entry.at, policy=policy)
        state = result.state
        sale = state.sales.get(sale_id)
        if sale is not None:
            held = held or sale.state in _HOLD_STATES
            if sale.payment_id is not None:
                statuses.setdefault(sale.payment_id, None)
        if isinstance(event, OverrideGiven) and result.rejection is None:
            overrides.append(OverrideRecord(event.decision, event.reason, event.uid, entry.at))
        elif isinstance(event, PaymentVerified):
            statuses[event.payment_id] = event.status.strip().lower()
        elif isinstance(event, PaymentsFound):
            for found in event.payments:
                if statuses.get(found.payment_id) is None:
                    statuses[found.payment_id] = found.status.strip().lower()
        elif isinstance(event, IntentObserved) and event.payment_id:
            statuses.setdefault(event.payment_id, None)
    return _History(held, tuple(overrides), statuses)


def judge_line(*, sale_state: SaleState, amount_cents: int, currency: str,
               settling_payment_id: str | None, journal_status: str | None,
               payment: Payment) -> PaymentLine:
    """Compare one payment the journal knows with Mercado Pago's record of it."""
    differences: list[str] = []
    mp_status = payment.status.strip().lower()
    if payment.amount_cents != amount_cents:
        differences.append("amount")
    if payment.currency_id is not None and payment.currency_id != currency:
        differences.append("currency")
    if journal_status is not None and journal_status != mp_status:
        differences.append("status")
    refunded = sum(r.amount_cents or 0 for r in payment.refunds)
    if refunded:
        differences.append("refunded")
    approved = mp_status == _APPROVED
    if sale_state in _RELEASED_STATES:
        if payment.id == settling_payment_id and not approved:
            differences.append("released_without_approved_payment")
        elif payment.id != settling_payment_id and approved:
            differences.append("second_approved_payment")
    elif sale_state in _ENDED_UNPAID_STATES and approved:
        differences.append("approved_without_handover")
    return PaymentLine(
        payment_id=payment.id,
        journal_status=journal_status,
        mp_status=mp_status,
        mp_amount_cents=payment.amount_cents,
        mp_currency=payment.currency_id,
        mp_refunded_cents=refunded,
        matched=Match.MISMATCH if differences else Match.OK,
        differences=tuple(differences),
    )


def _extra_line(payment: Payment) -> PaymentLine:
    return PaymentLine(
        payment_id=payment.id, journal_status=None, mp_status=payment.status.strip().lower(),
        mp_amount_cents=payment.amount_cents, mp_currency=payment.currency_id,
        mp_refunded_cents=sum(r.amount_cents or 0 for r in payment.refunds),
        matched=Match.EXTRA, differences=("not_in_journal",),
    )


def _unanswered(payment_id: str | None, journal_status: str | None,
                matched: Match) -> PaymentLine:
    return PaymentLine(payment_id, journal_status, None, None, None, None, matched)


class ExportError(Exception):
    """The reconciliation export could not be written (nothing partial was left behind)."""


class _GaveUp(Exception):
    """Mercado Pago failed too many times in a row during one export."""


class _Asker:
    """Asks Mercado Pago for one export, giving up after repeated failures."""

    def __init__(self, cloud: PaymentLookup) -> None:
        self._cloud = cloud
        self._failures = 0
        self.complete = True

    async def _ask(self, call: Callable[[], Awaitable[Any]]) -> Any:
        if self._failures >= EXPORT_FAILURES_BEFORE_GIVING_UP:
            self.complete = False
            raise _GaveUp
        try:
            answer = await call()
        except NotFound:
            self._failures = 0
            raise
        except CloudError as exc:
            self._failures += 1
            self.complete = False
            log.warning("export.cloud_failed", error=f"{type(exc).__name__}: {exc}"[:200])
            raise
        self._failures = 0
        return answer

    async def search(self, reference: str) -> list[Payment]:
        result: list[Payment] = await self._ask(lambda: self._cloud.find_payments(reference))
        return result

    async def payment(self, payment_id: str) -> Payment:
        result: Payment = await self._ask(lambda: self._cloud.get_payment(payment_id))
        return result


class ReconciliationExport:
    """Writes one day's sales, compared with Mercado Pago, as CSV and JSON files.

    A day is the store's local calendar day (``timezone``); a sale belongs to the day it
    was requested. The files are ``reconciliation-<store>-<YYYY-MM-DD>.csv`` and ``.json``
    in ``directory``, each replaced atomically, so a reader never sees half a file.
    """

    def __init__(
        self,
        *,
        journal: Journal,
        cloud: PaymentLookup,
        policy: Policy,
        store_id: str,
        directory: Path,
        timezone: dt.tzinfo,
        clock: Callable[[], float],
        fraud_alerts: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        self._journal = journal
        self._cloud = cloud
        self._policy = policy
        self._store_id = store_id
        self.directory = Path(directory)
        self._tz = timezone
        self._clock = clock
        self._fraud_alerts = fraud_alerts

    def paths(self, day: dt.date) -> tuple[Path, Path]:
        """Where the day's CSV and JSON files go."""
        stem = f"reconciliation-{self._store_id}-{day.isoformat()}"
        return self.directory / f"{stem}.csv", self.directory / f"{stem}.json"

    def today(self) -> dt.date:
        """The store's local date now."""
        return dt.datetime.fromtimestamp(self._clock(), self._tz).date()

    async def export_day(self, day: dt.date) -> tuple[Path, Path]:
        """Build the day's report and write both files; return (csv_path, json_path)."""
        report = await self.build(day)
        return self.write(report)

    async def build(self, day: dt.date) -> DayReport:
        """Compare the day's journaled sales with Mercado Pago."""
        self._check_day(day)
        start = dt.datetime.combine(day, dt.time.min, self._tz).timestamp()
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, self._tz).timestamp()
        rows = self._journal.sales(since=start, limit=EXPORT_SALES_LIMIT)
        truncated = len(rows) >= EXPORT_SALES_LIMIT
        if truncated:
            log.warning("export.truncated", day=day.isoformat(), limit=EXPORT_SALES_LIMIT)
        day_rows = sorted((r for r in rows if start <= r.requested_at < end),
                          key=lambda r: (r.requested_at, r.sale_id))
        asker = _Asker(self._cloud)
        fraud_alerts = self._fraud_alerts()
        sales = [await self._record(row, asker, fraud_alerts) for row in day_rows]
        return DayReport(
            store_id=self._store_id, day=day, timezone=str(self._tz),
            currency=self._policy.currency, generated_at=self._clock(),
            complete=asker.complete, truncated=truncated, sales=tuple(sales),
        )

    def write(self, report: DayReport) -> tuple[Path, Path]:
        """Write the report's CSV and JSON files atomically; return their paths."""
        csv_path, json_path = self.paths(report.day)
        try:
            _ensure_directory(self.directory)
            _write_atomically(csv_path, report_csv(report, self._tz).encode())
            _write_atomically(json_path, report_json(report, self._tz).encode())
        except OSError as exc:
            raise ExportError(f"cannot write the export for {report.day}: {exc}") from None
        log.info("export.written", day=report.day.isoformat(), sales=len(report.sales),
                 complete=report.complete, csv=str(csv_path), **report.counts())
        return csv_path, json_path

    def _check_day(self, day: object) -> None:
        if isinstance(day, dt.datetime) or not isinstance(day, dt.date):
            raise ValueError(f"day must be a date, not {type(day).__name__}")
        if day > self.today():
            raise ValueError(f"day {day.isoformat()} is in the future")

    async def _record(self, row: SaleRow, asker: _Asker,
                      fraud_alerts: frozenset[str]) -> SaleRecord:
        history = sale_history(self._journal.timeline(row.sale_id), row.sale_id,
                               self._store_id, self._policy, fraud_alerts)
        if row.payment_id is not None:
            history.journal_status.setdefault(row.payment_id, None)
        lines = await self._compare(row, history.journal_status, asker)
        return SaleRecord(
            sale_id=row.sale_id, lane=row.lane, correlation_id=row.correlation_id,
            requested_at=row.requested_at, updated_at=row.updated_at,
            amount_cents=row.amount_cents, state=row.state, refusal=row.refusal,
            attempts=row.attempt, intent_id=row.intent_id, payment_id=row.payment_id,
            held=history.held or row.state in _HOLD_STATES,
            overrides=history.overrides, payments=tuple(lines),
        )

    async def _compare(self, row: SaleRow, known: Mapping[str, str | None],
                       asker: _Asker) -> list[PaymentLine]:
        found: dict[str, Payment] = {}
        searched = True
        for reference in self._references(row):
            try:
                for hit in await asker.search(reference):
                    found.setdefault(hit.id, hit)
            except (CloudError, _GaveUp):
                searched = False
        lines: list[PaymentLine] = []
        for payment_id, status in known.items():
            payment: Payment | None = found.get(payment_id)
            if payment is None:
                # The search index lags behind the payment itself: ask by id before
                # calling a payment missing.
                try:
                    payment = await asker.payment(payment_id)
                except NotFound:
                    lines.append(_unanswered(payment_id, status, Match.MISSING))
                    continue
                except (CloudError, _GaveUp):
                    lines.append(_unanswered(payment_id, status, Match.UNKNOWN))
                    continue
            lines.append(judge_line(
                sale_state=row.state, amount_cents=row.amount_cents,
                currency=self._policy.currency, settling_payment_id=row.payment_id,
                journal_status=status, payment=payment,
            ))
        lines.extend(_extra_line(p) for pid, p in found.items() if pid not in known)
        if not lines:
            lines.append(_unanswered(None, None, Match.NO_PAYMENT if searched
                                     else Match.UNKNOWN))
        return lines

    def _references(self, row: SaleRow) -> list[str]:
        references = []
        for attempt in range(1, row.attempt + 1):
            try:
                references.append(str(ExternalReference(self._store_id, row.lane,
                                                        row.sale_id, attempt)))
            except ExternalReferenceError:
                log.warning("export.bad_reference", sale_id=row.sale_id, attempt=attempt)
        return references


CSV_COLUMNS = (
    "store_id", "day", "sale_id", "lane", "correlation_id", "requested_at", "amount_cents",
    "currency", "state", "refusal", "attempts", "intent_id", "sale_payment_id", "held",
    "override_decision", "override_reason", "override_uid", "payment_id", "journal_status",
    "mp_status", "mp_amount_cents", "mp_refunded_cents", "matched", "differences",
)


def report_csv(report: DayReport, tz: dt.tzinfo) -> str:
    """The report as CSV: one row per (sale, payment line), header first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for sale in report.sales:
        last = sale.overrides[-1] if sale.overrides else None
        for line in sale.payments:
            writer.writerow([
                report.store_id, report.day.isoformat(), sale.sale_id, sale.lane,
                _cell(sale.correlation_id), _local(sale.requested_at, tz), sale.amount_cents,
                report.currency, sale.state.value, sale.refusal or "", sale.attempts,
                sale.intent_id or "", sale.payment_id or "", "yes" if sale.held else "no",
                last.decision.value if last else "", _cell(last.reason) if last else "",
                last.uid if last else "", line.payment_id or "", line.journal_status or "",
                line.mp_status or "", _blank(line.mp_amount_cents),
                _blank(line.mp_refunded_cents), line.matched.value,
                " ".join(line.differences),
            ])
    return out.getvalue()


def report_json(report: DayReport, tz: dt.tzinfo) -> str:
    """The report as one JSON document (format ``pointd-reconciliation/1``)."""
    body = {
        "format": EXPORT_FORMAT,
        "store_id": report.store_id,
        "day": report.day.isoformat(),
        "timezone": report.timezone,
        "currency": report.currency,
        "generated_at": _local(report.generated_at, tz),
        "complete": report.complete,
        "truncated": report.truncated,
        "counts": report.counts(),
        "sales": [
            {
                "sale_id": s.sale_id,
                "lane": s.lane,
                "correlation_id": s.correlation_id,
                "requested_at": _local(s.requested_at, tz),
                "updated_at": _local(s.updated_at, tz),
                "amount_cents": s.amount_cents,
                "state": s.state.value,
                "refusal": s.refusal,
                "attempts": s.attempts,
                "intent_id": s.intent_id,
                "payment_id": s.payment_id,
                "held": s.held,
                "overrides": [
                    {"decision": o.decision.value, "reason": o.reason, "uid": o.uid,
                     "at": _local(o.at, tz)}
                    for o in s.overrides
                ],
                "payments": [
                    {
                        "payment_id": p.payment_id,
                        "journal_status": p.journal_status,
                        "mp_status": p.mp_status,
                        "mp_amount_cents": p.mp_amount_cents,
                        "mp_currency": p.mp_currency,
                        "mp_refunded_cents": p.mp_refunded_cents,
                        "matched": p.matched.value,
                        "differences": list(p.differences),
                    }
                    for p in s.payments
                ],
            }
            for s in report.sales
        ],
    }
    return json.dumps(body, indent=1, ensure_ascii=False) + "\n"


def _local(at: float, tz: dt.tzinfo) -> str:
    return dt.datetime.fromtimestamp(at, tz).isoformat(timespec="seconds")


def _cell(text: str) -> str:
    return f"'{text}" if text.startswith(_FORMULA_PREFIXES) else text


def _blank(value: int | None) -> str | int:
    return "" if value is None else value


def _ensure_directory(directory: Path) -> None:
    if directory.is_dir():
        return
    directory.mkdir(mode=EXPORT_DIR_MODE, parents=True)
    # mkdir's mode is filtered by the umask; the export directory must be exactly 0750.
    directory.chmod(EXPORT_DIR_MODE)


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), EXPORT_FILE_MODE)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


# --- the scheduler -------------------------------------------------------------------------


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
        self.scheduler = AsyncIOScheduler(timezone=self.timezone)
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
        if not self.scheduler.running:
            return
        self.scheduler.shutdown(wait=False)
        # AsyncIOScheduler stops on the loop's next turn; wait, so that nothing fires after.
        for _ in range(_SHUTDOWN_TURNS):
            if not self.scheduler.running:
                return
            await asyncio.sleep(0)

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
