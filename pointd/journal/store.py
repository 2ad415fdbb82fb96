"""The write-ahead journal: one SQLite file of append-only events plus derived tables.

Theory of operation
-------------------
The engine appends each event together with the core state after it, in ONE transaction
that is committed and fsynced before ``append`` returns (WAL with ``synchronous=FULL``: a
commit survives power loss, not only a crash of the process). Only then does the engine run
the step's effects, so an effect never happens without its cause on disk. The transaction
also updates the ``sales`` projection (one row per sale, for fast views) and, when given,
the notification dedupe key, so "journaled" and "acknowledged" can never disagree. A batch
of relayed notifications that became no core event is recorded with the relay cursor it
reached in one transaction too (``record_relay_batch``): one fsync per batch, not per
notification.

Events are the truth and are never updated or deleted (triggers refuse it); everything else
is derived or auxiliary. ``rebuild`` replays the events through ``pointd.core.machine.step``
with the policy that was in force when each was appended (``record_policy``), so a restart
reproduces the decisions the live daemon made even after the configuration changed.

Snapshots keep start-up quick on a journal years long: ``write_snapshot`` stores the JSON
of the core state as it stood after one seq (``CoreState.to_json``), and ``rebuild`` starts
from the newest snapshot it can read and replays only the later events, with the policies
recorded for their seqs. A snapshot is derived data: one that is unreadable, names another
store id or lies past the last event is skipped (logged) and an older one, or the whole
log, is replayed instead. The state stays small because the core forgets settled sales
through a journaled event (``SettledSalesForgotten``), which a replay repeats exactly.

Events keep the meaning the daemon gave them when they were journaled: when the core's
rules change, ``rebuild`` reads older events through ``pointd.journal.upgrades`` (bounded
by the seqs in ``event_upgrades``) so that a replay still decides as that daemon did.

``prune`` is the retention hook: it deletes notification dedupe keys older than a time and
nothing else; events, the ``sales`` projection (every sale ever, for views and exports),
the audit trail and the policies are kept for good.

Opening checks the file (``PRAGMA quick_check``), refuses a schema newer than this program,
and applies the ordered migrations of ``pointd.journal.schema``, each in its own
transaction together with its ``user_version``.

SQLite calls block; one append costs one fsync (milliseconds on an SSD), which the engine
accepts on its single thread because nothing may proceed before the write anyway.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pointd.core import snapshot
from pointd.core.errors import CoreError, StateDecodeError
from pointd.core.events import Event, event_from_json, event_sale_id
from pointd.core.machine import CoreState, step
from pointd.core.policy import Policy
from pointd.core.refunds import REFUND_EVENT_KINDS
from pointd.core.states import SaleState
from pointd.journal.errors import (
    JournalCorrupt,
    JournalError,
    JournalTooNew,
    JournalWriteFailed,
)
from pointd.journal.schema import LATEST_VERSION, MIGRATIONS
from pointd.journal.upgrades import (
    NOTIFICATION_OBSERVATIONS,
    notification_observation_as_decided,
    refunds_through_snapshot,
)

log = structlog.get_logger(__name__)

# How long a second connection (e.g. a technician's read-only tool) may hold the write
# lock before an append gives up; appends are short, so this only bites on a stuck reader.
LOCK_TIMEOUT = 5.0
_REPLAY_BATCH = 500
# Start-up reads the newest snapshot; one older is kept so that a newest one that cannot be
# read costs a replay from the previous day, not from the first event.
SNAPSHOTS_KEPT = 2
_SALE_COLUMNS = (
    "sale_id, lane, correlation_id, state, refusal, amount_cents, terminal_id, attempt, "
    "intent_id, payment_id, requested_at, updated_at, last_seq, detail"
)
_NEWEST_FIRST = "updated_at DESC, last_seq DESC"


@dataclass(frozen=True, slots=True)
class SaleRow:
    """One sale as the projection shows it."""

    sale_id: str
    lane: int
    correlation_id: str
    state: SaleState
    refusal: str | None
    amount_cents: int
    terminal_id: str
    attempt: int
    intent_id: str | None
    payment_id: str | None
    requested_at: float
    updated_at: float
    last_seq: int
    detail: str


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One journaled event of a sale."""

    seq: int
    at: float
    kind: str
    event: Event
    # The sale's state after the event; None for events journaled before schema 5.
    state: SaleState | None = None


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One stored snapshot: after which event, that event's time, its JSON size."""

    seq: int
    at: float | None  # None for a snapshot taken before any event
    size: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded mutating request (e.g. a supervisor override)."""

    id: int
    at: float
    uid: int
    method: str
    args: dict[str, Any]
    outcome: str


class Journal:
    """The daemon's durable record; open with ``Journal.open(path)``."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._commit_observer: Callable[[float], None] | None = None

    def observe_commits(self, observer: Callable[[float], None]) -> None:
        """Tell ``observer`` the seconds each write transaction took, BEGIN to fsynced COMMIT."""
        self._commit_observer = observer

    @classmethod
    def open(cls, path: str | Path) -> Journal:
        """Open (creating if needed), check and migrate the journal at ``path``."""
        path = Path(path)
        try:
            # One caller at a time, but possibly from a worker thread (asyncio.to_thread).
            db = sqlite3.connect(path, isolation_level=None, timeout=LOCK_TIMEOUT,
                                 check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from None
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"journal {path}: WAL mode refused (got {mode})")
            db.execute("PRAGMA synchronous = FULL")
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise JournalCorrupt(f"journal {path} fails its check: {problems[:5]}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > LATEST_VERSION:
                raise JournalTooNew(f"journal {path} has schema {version}; this pointd "
                                    f"knows up to {LATEST_VERSION}")
            for number in range(version, LATEST_VERSION):
                _migrate(db, number)
                log.info("journal_migrated", path=str(path), to_version=number + 1)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise JournalCorrupt(f"journal {path} is not a readable database: {exc}") from None
        except JournalError:
            db.close()
            raise
        return cls(db, path)

    def close(self) -> None:
        """Close the file; every acknowledged append is already durable."""
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- events --------------------------------------------------------------------------

    def append(self, event: Event, now: float, state_after: CoreState, *,
               sale_id: str | None = None, notification_key: str | None = None) -> int:
        """Durably record an event and its sale's new projection; return its seq.

        ``sale_id`` is the sale the core routed the event to (``Step.sale_id``); events
        that name their sale need not pass it. ``notification_key`` marks a relayed
        notification as seen in the same transaction.
        """
        sale_id = sale_id or event_sale_id(event)
        sale = state_after.sales.get(sale_id) if sale_id is not None else None
        with self._transaction("append"):
            cursor = self._db.execute(
                "INSERT INTO events (at, kind, sale_id, json, state) VALUES (?, ?, ?, ?, ?)",
                (now, type(event).__name__, sale_id, event.to_json(),
                 sale.state.value if sale is not None else None),
            )
            seq = cursor.lastrowid
            assert seq is not None
            if sale is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO sales (sale_id, lane, correlation_id, state, "
                    "refusal, amount_cents, terminal_id, attempt, intent_id, payment_id, "
                    "requested_at, updated_at, last_seq, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sale.sale_id, sale.lane, sale.correlation_id, sale.state.value,
                     sale.refusal.value if sale.refusal else None, sale.amount_cents,
                     sale.terminal_id, sale.attempt, sale.intent_id, sale.payment_id,
                     sale.requested_at, sale.updated_at, seq, sale.detail),
                )
            if notification_key is not None:
                self._db.execute(
                    "INSERT OR IGNORE INTO seen_notifications (key, seq, seen_at) "
                    "VALUES (?, ?, ?)",
                    (notification_key, seq, now),
                )
        return seq

    def last_seq(self) -> int:
        """The seq of the newest event, 0 for an empty journal."""
        row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def replay(self, after_seq: int = 0) -> Iterator[tuple[int, float, Event]]:
        """Every event after ``after_seq`` in order, as (seq, at, event)."""
        cursor = self._db.execute(
            "SELECT seq, at, json FROM events WHERE seq > ? ORDER BY seq", (after_seq,))
        while rows := cursor.fetchmany(_REPLAY_BATCH):
            for seq, at, text in rows:
                yield seq, at, _decode(seq, text)

    def replay_kinds(self, kinds: Iterable[str]) -> Iterator[tuple[int, float, Event]]:
        """Every event of these kinds, in order, from the first."""
        wanted = json.dumps(sorted(set(kinds)))
        cursor = self._db.execute(
            "SELECT seq, at, json FROM events WHERE kind IN (SELECT value FROM json_each(?)) "
            "ORDER BY seq", (wanted,))
        while rows := cursor.fetchmany(_REPLAY_BATCH):
            for seq, at, text in rows:
                yield seq, at, _decode(seq, text)

    def rebuild(self, store_id: str, policy: Policy, *,
                from_snapshot: bool = True) -> CoreState:
        """The core state the journaled events lead to (``policy`` where none is recorded).

        Starts from the newest usable snapshot and replays the events after it;
        ``from_snapshot=False`` replays every event from the first.
        """
        policies = self._recorded_policies()
        in_force, next_policy = policy, 0
        start = self._snapshot_start(store_id) if from_snapshot else None
        after_seq, state = 0, CoreState.empty(store_id)
        if start is not None:
            after_seq, state, has_refunds = start
            if not has_refunds:  # an older format (pointd.journal.upgrades)
                refund_events = ((at, event) for seq, at, event
                                 in self.replay_kinds(REFUND_EVENT_KINDS) if seq <= after_seq)
                state = refunds_through_snapshot(state, refund_events, policy)
        old_notifications_through = self._upgrade_through(NOTIFICATION_OBSERVATIONS)
        for seq, at, event in self.replay(after_seq):
            while next_policy < len(policies) and policies[next_policy][0] <= seq:
                in_force = policies[next_policy][1]
                next_policy += 1
            decided = (notification_observation_as_decided(event)
                       if seq <= old_notifications_through else event)
            state = step(state, decided, now=at, policy=in_force).state
        return state

    def _upgrade_through(self, name: str) -> int:
        row = self._db.execute(
            "SELECT through_seq FROM event_upgrades WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row is not None else 0

    def record_policy(self, policy: Policy) -> None:
        """Record the policy in force from the next event on (no-op when unchanged)."""
        text = json.dumps(policy.as_dict(), sort_keys=True)
        latest = self._db.execute(
            "SELECT json FROM policies ORDER BY from_seq DESC LIMIT 1").fetchone()
        if latest is not None and latest[0] == text:
            return
        with self._transaction("record_policy"):
            self._db.execute("INSERT OR REPLACE INTO policies (from_seq, json) VALUES (?, ?)",
                             (self.last_seq() + 1, text))

    def write_snapshot(self, state: CoreState, seq: int) -> None:
        """Durably store ``state`` as the core state right after event ``seq``.

        The caller reads the engine's state and ``last_seq`` together (no await between),
        so that the pair is exact. Only the newest SNAPSHOTS_KEPT snapshots are kept.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"snapshot seq must be a whole number >= 0, not {seq!r}")
        last = self.last_seq()
        if seq > last:
            raise ValueError(f"snapshot at seq {seq}, but the journal ends at seq {last}")
        text = state.to_json()
        with self._transaction("write_snapshot"):
            self._db.execute(
                "INSERT OR REPLACE INTO snapshots (seq, store_id, json) VALUES (?, ?, ?)",
                (seq, state.store_id, text))
            self._db.execute(
                "DELETE FROM snapshots WHERE seq NOT IN "
                "(SELECT seq FROM snapshots ORDER BY seq DESC LIMIT ?)", (SNAPSHOTS_KEPT,))
        log.info("journal.snapshot_written", seq=seq, sales=len(state.sales), size=len(text))

    def snapshots(self) -> list[SnapshotInfo]:
        """The stored snapshots, newest first."""
        rows = self._db.execute(
            "SELECT s.seq, e.at, length(s.json) FROM snapshots AS s "
            "LEFT JOIN events AS e ON e.seq = s.seq ORDER BY s.seq DESC")
        return [SnapshotInfo(int(seq), None if at is None else float(at), int(size))
                for seq, at, size in rows]

    def _snapshot_start(self, store_id: str) -> tuple[int, CoreState, bool] | None:
        """The newest usable snapshot: its seq, its state, and whether it holds refunds."""
        last = self.last_seq()
        rows = self._db.execute(
            "SELECT seq, store_id, json FROM snapshots ORDER BY seq DESC").fetchall()
        for seq, snapshot_store, text in rows:
            if seq > last:
                log.error("journal.snapshot_skipped", seq=seq, reason="past the last event")
                continue
            if snapshot_store != store_id:
                log.warning("journal.snapshot_skipped", seq=seq, reason="another store id")
                continue
            try:
                decoded = snapshot.decode(text)
            except StateDecodeError as exc:
                log.error("journal.snapshot_skipped", seq=seq, reason=str(exc)[:200])
                continue
            state = decoded.state
            if state.store_id != store_id:
                log.error("journal.snapshot_skipped", seq=seq, reason="store id mismatch")
                continue
            log.info("journal.snapshot_loaded", seq=seq, sales=len(state.sales))
            return int(seq), state, decoded.has_refunds
        return None

    def _recorded_policies(self) -> list[tuple[int, Policy]]:
        recorded = []
        for from_seq, text in self._db.execute(
                "SELECT from_seq, json FROM policies ORDER BY from_seq"):
            try:
                recorded.append((int(from_seq), Policy.from_dict(json.loads(text))))
            except (ValueError, CoreError) as exc:
                raise JournalCorrupt(f"policy recorded at seq {from_seq}: {exc}") from None
        return recorded

    # --- views ---------------------------------------------------------------------------

    def sale(self, sale_id: str) -> SaleRow | None:
        """One sale from the projection (also those the core already forgot), or None."""
        query = f"SELECT {_SALE_COLUMNS} FROM sales WHERE sale_id = ?"  # noqa: S608
        row = self._db.execute(query, (sale_id,)).fetchone()
        return None if row is None else SaleRow(row[0], row[1], row[2], SaleState(row[3]), *row[4:])

    def sales(self, *, states: Iterable[SaleState] | None = None, lane: int | None = None,
              since: float | None = None, limit: int = 100) -> list[SaleRow]:
        """Sales from the projection, newest update first, filtered as asked."""
        clauses: list[str] = []
        params: list[object] = []
        if states is not None:
            wanted = [SaleState(s).value for s in states]
            clauses.append(f"state IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        if lane is not None:
            clauses.append("lane = ?")
            params.append(lane)
        if since is not None:
            clauses.append("updated_at >= ?")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # Only fixed column names and ? placeholders are interpolated; values are bound.
        query = f"SELECT {_SALE_COLUMNS} FROM sales {where} ORDER BY {_NEWEST_FIRST} LIMIT ?"  # noqa: S608
        rows = self._db.execute(query, (*params, max(0, limit))).fetchall()
        return [SaleRow(r[0], r[1], r[2], SaleState(r[3]), *r[4:]) for r in rows]

    def timeline(self, sale_id: str) -> list[TimelineEntry]:
        """Every journaled event routed to this sale, in order."""
        rows = self._db.execute(
            "SELECT seq, at, kind, json, state FROM events WHERE sale_id = ? ORDER BY seq",
            (sale_id,))
        return [
            TimelineEntry(seq, at, kind, _decode(seq, text),
                          SaleState(state) if state is not None else None)
            for seq, at, kind, text, state in rows
        ]

    # --- relay cursor and notification dedupe --------------------------------------------

    def relay_cursor(self) -> str | None:
        """The relay delivery cursor last stored, if any."""
        row = self._db.execute("SELECT cursor FROM relay_cursor WHERE id = 1").fetchone()
        return None if row is None else str(row[0])

    def record_relay_batch(self, keys: Iterable[str], cursor: int, *,
                           at: float | None = None) -> list[bool]:
        """Durably record a delivered batch in one transaction: each notification dedupe key
        (those that became no core event) and the relay cursor the batch reached. Returns,
        per key, True when it was not seen before. ``at`` dates the keys for ``prune``
        (default now)."""
        seen_at = time.time() if at is None else at
        fresh: list[bool] = []
        with self._transaction("record_relay_batch"):
            for key in keys:
                inserted = self._db.execute(
                    "INSERT OR IGNORE INTO seen_notifications (key, seq, seen_at) "
                    "VALUES (?, NULL, ?)", (key, seen_at))
                fresh.append(inserted.rowcount == 1)
            self._db.execute("INSERT OR REPLACE INTO relay_cursor (id, cursor) VALUES (1, ?)",
                             (str(cursor),))
        return fresh

    def mark_notification_seen(self, key: str, seq: int | None = None, *,
                               at: float | None = None) -> bool:
        """Record a notification dedupe key; True when it was not seen before.

        ``at`` (wall-clock seconds) dates the key for ``prune``; by default the time of
        event ``seq`` when given, else now.
        """
        if at is None and seq is not None:
            row = self._db.execute("SELECT at FROM events WHERE seq = ?", (seq,)).fetchone()
            at = None if row is None else float(row[0])
        seen_at = time.time() if at is None else at
        with self._transaction("mark_notification_seen"):
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO seen_notifications (key, seq, seen_at) VALUES (?, ?, ?)",
                (key, seq, seen_at))
        return cursor.rowcount == 1

    def notification_seen(self, key: str) -> bool:
        """True when this dedupe key was recorded."""
        row = self._db.execute("SELECT 1 FROM seen_notifications WHERE key = ?", (key,))
        return row.fetchone() is not None

    def prune(self, before: float) -> int:
        """Delete notification dedupe keys recorded before ``before``; return how many.

        The retention hook (``pointd.app.jobs.RetentionTarget``). Nothing else is ever
        deleted: events, sales, audit entries and policies stay. A key only has to outlive
        the relay's redelivery of its notification (days), so pruning after the retention
        period loses no protection.
        """
        if isinstance(before, bool) or not isinstance(before, int | float) \
                or not math.isfinite(before):
            raise ValueError(f"prune needs a finite time in seconds, not {before!r}")
        with self._transaction("prune"):
            cursor = self._db.execute("DELETE FROM seen_notifications WHERE seen_at < ?",
                                      (before,))
        return cursor.rowcount

    # --- audit ---------------------------------------------------------------------------

    def record_audit(self, *, uid: int, method: str, args: Mapping[str, Any], outcome: str,
                     now: float) -> int:
        """Durably record who called a mutating method, with what, and the outcome."""
        text = json.dumps(dict(args), sort_keys=True, default=str)
        with self._transaction("record_audit"):
            cursor = self._db.execute(
                "INSERT INTO audit (at, uid, method, args, outcome) VALUES (?, ?, ?, ?, ?)",
                (now, uid, method, text, outcome))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries first."""
        rows = self._db.execute(
            "SELECT id, at, uid, method, args, outcome FROM audit ORDER BY id DESC LIMIT ?",
            (max(0, limit),))
        return [AuditEntry(i, at, uid, m, json.loads(a), o) for i, at, uid, m, a, o in rows]

    def integrity_problems(self) -> list[str]:
        """A full ``PRAGMA integrity_check``: empty when the file is sound (slow on big files)."""
        problems = [str(row[0]) for row in self._db.execute("PRAGMA integrity_check")]
        return [] if problems == ["ok"] else problems

    # --- internals -----------------------------------------------------------------------

    def _transaction(self, what: str) -> _Transaction:
        return _Transaction(self._db, what, self._commit_observer)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back and reported as JournalWriteFailed on error."""

    def __init__(self, db: sqlite3.Connection, what: str,
                 observer: Callable[[float], None] | None) -> None:
        self._db = db
        self._what = what
        self._observer = observer
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise JournalWriteFailed(f"{self._what}: cannot start a transaction: {exc}") from None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as commit_error:
                self._rollback()
                raise JournalWriteFailed(f"{self._what}: commit failed: {commit_error}") from None
            if self._observer is not None:
                self._observer(time.perf_counter() - self._started)
            return
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise JournalWriteFailed(f"{self._what}: {exc}") from None

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _migrate(db: sqlite3.Connection, number: int) -> None:
    script = MIGRATIONS[number]
    try:
        db.executescript(
            f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number + 1};\nCOMMIT;")
    except sqlite3.Error as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise JournalError(f"migration to schema {number + 1} failed: {exc}") from None


def _decode(seq: int, text: str) -> Event:
    try:
        return event_from_json(text)
    except CoreError as exc:
        raise JournalCorrupt(f"event {seq}: {exc}") from None
