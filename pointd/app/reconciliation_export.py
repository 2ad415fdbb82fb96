"""The reconciliation export: each store day's sales compared with Mercado Pago's payments.

``ReconciliationExport`` builds one day's ``DayReport`` from the journal's sales and their
timelines, asks Mercado Pago for each sale's payments (by external reference, and by id
where the journal knows one), has the core judge every line
(``pointd.core.reconciliation.judge_line``) and writes the day as CSV and JSON atomically,
readable by the store's accountant. ``pointd.app.jobs`` schedules it;
docs/reconciliation-export.md describes the files.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from pointd.cloud.errors import CloudError, NotFound
from pointd.cloud.models import Payment
from pointd.core.events import (
    IntentObserved,
    OverrideDecision,
    OverrideGiven,
    PaymentsFound,
    PaymentVerified,
)
from pointd.core.machine import CoreState, step
from pointd.core.policy import Policy
from pointd.core.reconciliation import (
    Match,
    PaymentLine,
    PaymentRecord,
    extra_line,
    judge_line,
    unanswered_line,
)
from pointd.core.reference import ExternalReference, ExternalReferenceError
from pointd.core.states import UNVERIFIED_HOLD_STATES, SaleState
from pointd.journal.store import Journal, SaleRow, TimelineEntry

log = structlog.get_logger(__name__)

# After this many Mercado Pago calls in a row fail, the rest of the export is marked unknown
# instead of waiting for every remaining call's timeouts (an offline store has hundreds).
EXPORT_FAILURES_BEFORE_GIVING_UP = 3
EXPORT_DIR_MODE = 0o750
EXPORT_FILE_MODE = 0o640
# journal.sales needs a limit; this is far beyond what one store sells in a day.
EXPORT_SALES_LIMIT = 100_000
EXPORT_FORMAT = "pointd-reconciliation/1"

# Spreadsheets run cells that start with these as formulas; free text is neutralised.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class PaymentLookup(Protocol):
    """The two ``CloudPort`` calls the export makes (any CloudPort is one)."""

    async def find_payments(self, external_reference: str) -> list[Payment]:
        """Payments carrying this external_reference (GET /v1/payments/search)."""
        ...

    async def get_payment(self, payment_id: str) -> Payment:
        """One payment by id (GET /v1/payments/{id})."""
        ...


@dataclass(frozen=True, slots=True)
class OverrideRecord:
    """A supervisor override the core accepted for a sale."""

    decision: OverrideDecision
    reason: str
    uid: int
    at: float


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
            held = held or sale.state in UNVERIFIED_HOLD_STATES
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


def payment_record(payment: Payment) -> PaymentRecord:
    """What a line compares of one of Mercado Pago's payments."""
    return PaymentRecord(
        payment_id=payment.id, status=payment.status.strip().lower(),
        amount_cents=payment.amount_cents, currency=payment.currency_id,
        refunded_cents=sum(r.amount_cents or 0 for r in payment.refunds),
    )


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
            held=history.held or row.state in UNVERIFIED_HOLD_STATES,
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
                    lines.append(unanswered_line(payment_id, status, Match.MISSING))
                    continue
                except (CloudError, _GaveUp):
                    lines.append(unanswered_line(payment_id, status, Match.UNKNOWN))
                    continue
            lines.append(judge_line(
                sale_state=row.state, amount_cents=row.amount_cents,
                currency=self._policy.currency, settling_payment_id=row.payment_id,
                journal_status=status, payment=payment_record(payment),
            ))
        lines.extend(extra_line(payment_record(p)) for pid, p in found.items()
                     if pid not in known)
        if not lines:
            lines.append(unanswered_line(None, None, Match.NO_PAYMENT if searched
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
