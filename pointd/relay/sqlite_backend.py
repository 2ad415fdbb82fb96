"""The embedded SQLite storage backend: one file, WAL, synchronous=FULL, batched commits.

sqlite3 blocks, and an fsync takes milliseconds, so the backend owns two single-thread
executors: one for the write connection (every commit is made there, one at a time) and one
for a read connection (WAL lets it read while a commit is in progress). The event loop only
awaits them; no other thread touches a connection.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import structlog

from pointd.relay.errors import NotStored, StorageError
from pointd.relay.storage import (
    EVENT_COLUMNS,
    FRAUD_TOPICS_SQL,
    KNOWN_WAITING,
    LISTINGS,
    MAX_READ_LIMIT,
    UNROUTED_CONDITION,
    Incoming,
    RouteCascade,
    Stats,
    StoredEvent,
    StoreStream,
    WriteResult,
    encode_mapping,
    event_from_row,
)

# Readers wait this long for the writer's lock before failing (WAL readers rarely wait).
BUSY_TIMEOUT = 5.0
# A checkpoint copies the WAL back into the database file and fsyncs it, which takes many
# milliseconds; left to SQLite it lands on whichever commit crosses 1000 WAL pages. The
# writer turns that off and asks a third connection, on its own thread, for a passive
# checkpoint after this many notifications (roughly 1000 pages of WAL).
CHECKPOINT_AFTER_ITEMS = 1000
# Each notification lands in indexes with random keys (content_key, request_id), so each
# dirties about one leaf page per index, and a commit writes those pages whole to the WAL:
# 1 KiB pages halve the bytes of a 32-notification commit (335 → 162 KiB) against 4 KiB.
PAGE_SIZE = 1024

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    request_id TEXT UNIQUE,
    content_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    topic TEXT,
    parse TEXT NOT NULL,
    signed INTEGER NOT NULL,
    id_source TEXT,
    signed_field TEXT,
    alerted_at REAL,
    store TEXT,
    asks TEXT,
    teaches TEXT NOT NULL,
    query TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_unrouted ON events(id) WHERE store IS NULL AND kind <> 'canary';
CREATE INDEX IF NOT EXISTS events_quarantined ON events(id)
    WHERE parse IN ('lenient', 'unparseable');
CREATE INDEX IF NOT EXISTS events_received ON events(received_at);
CREATE TABLE IF NOT EXISTS deliveries (
    store TEXT NOT NULL,
    position INTEGER NOT NULL,
    event_id INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (store, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_created ON deliveries(created_at);
CREATE TABLE IF NOT EXISTS store_heads (
    store TEXT PRIMARY KEY,
    head INTEGER NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS routes (
    key TEXT PRIMARY KEY,
    store TEXT NOT NULL,
    learned_at REAL NOT NULL
);
"""
# Columns added after the first release: (name, type) added to an older file on open.
ADDED_COLUMNS = (("signed_field", "TEXT"), ("alerted_at", "REAL"))
# Created after ADDED_COLUMNS exist: an older file has none of these columns at first.
INDEXES = f"""
CREATE INDEX IF NOT EXISTS events_waiting ON events(asks) WHERE store IS NULL;
CREATE INDEX IF NOT EXISTS events_unroutable ON events(received_at)
    WHERE store IS NULL AND alerted_at IS NULL AND topic IN {FRAUD_TOPICS_SQL};
"""

def _create_schema(connection: sqlite3.Connection) -> None:
    connection.executescript(SCHEMA)
    present = {str(row[1]) for row in connection.execute("PRAGMA table_info(events)")}
    for name, kind in ADDED_COLUMNS:
        if name not in present:
            connection.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
    connection.executescript(INDEXES)


class SqliteStorage:
    """Storage in one SQLite file; safe against power loss once a commit returned."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite-w")
        self._reader_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite-r")
        self._writer: sqlite3.Connection | None = None
        # Owned by the writer thread; None whenever it may differ from the file.
        self._counters: _Counters | None = None
        self._reader: sqlite3.Connection | None = None
        self._checkpoint_pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="relay-sqlite-c"
        )
        self._checkpointer: sqlite3.Connection | None = None
        self._since_checkpoint = 0
        self._checkpointing = False

    def __repr__(self) -> str:
        return f"SqliteStorage({self._path!r})"

    async def _on_writer(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        connection = self._writer
        if connection is None:
            raise StorageError("storage is not open")
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, work, connection)

    async def _on_reader(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        connection = self._reader
        if connection is None:
            raise StorageError("storage is not open")
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, work, connection)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT
        )
        # Only a new, empty file takes it (before WAL is on); existing files keep theirs.
        connection.execute(f"PRAGMA page_size={PAGE_SIZE}")
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns; the relay answers 2xx only after that.
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    async def open(self) -> None:
        """Open both connections and create the schema."""
        loop = asyncio.get_running_loop()
        try:
            self._writer = await loop.run_in_executor(self._writer_pool, self._connect)
            await self._on_writer(_create_schema)
            await self._on_writer(lambda c: c.execute("PRAGMA wal_autocheckpoint=0"))
            self._reader = await loop.run_in_executor(self._reader_pool, self._connect)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self._path}: {exc}") from exc

    async def close(self) -> None:
        """Close the connections and stop the executors."""
        self._checkpoint_pool.shutdown(wait=True)
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        for connection, pool in (
            (self._writer, self._writer_pool),
            (self._reader, self._reader_pool),
        ):
            if connection is not None:
                await asyncio.get_running_loop().run_in_executor(pool, connection.close)
            pool.shutdown(wait=True)
        self._writer = self._reader = None

    def on_remote_write(self, callback: Callable[[str], None]) -> None:
        """One process owns the file, so there are no other writers to hear about."""

    async def write_batch(self, items: Sequence[Incoming]) -> list[WriteResult]:
        """Write items in one transaction committed with a full fsync."""

        def work(connection: sqlite3.Connection) -> list[WriteResult]:
            connection.execute("BEGIN IMMEDIATE")
            counters, self._counters = self._counters, None
            try:
                counters = counters or _load_counters(connection)
                results, next_id, heads = _write_items(connection, items, counters)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            counters.heads.update(heads)
            counters.next_id = next_id
            self._counters = counters
            self._after_commit(len(items))
            return results

        try:
            return await self._on_writer(work)
        except sqlite3.Error as exc:
            raise NotStored(f"sqlite commit failed: {exc}") from exc

    def _after_commit(self, items: int) -> None:
        """Writer thread: ask for a checkpoint once enough WAL has accumulated."""
        self._since_checkpoint += items
        if self._since_checkpoint < CHECKPOINT_AFTER_ITEMS or self._checkpointing:
            return
        self._since_checkpoint = 0
        self._checkpointing = True
        try:
            self._checkpoint_pool.submit(self._checkpoint)
        except RuntimeError:  # closing: SQLite checkpoints when the last connection closes
            self._checkpointing = False

    def _checkpoint(self) -> None:
        """Checkpoint thread: copy what it can of the WAL into the file, without blocking
        the writer (PASSIVE)."""
        try:
            if self._checkpointer is None:
                self._checkpointer = self._connect()
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            # The WAL keeps every commit durable; a failed checkpoint only lets it grow.
            log.warning("sqlite_checkpoint_failed", path=self._path, error=str(exc))
        finally:
            self._checkpointing = False

    async def read(self, store: str, after: int, limit: int) -> list[StoredEvent]:
        """Events of one store's stream after a position."""
        limit = max(1, min(limit, MAX_READ_LIMIT))

        def work(connection: sqlite3.Connection) -> list[StoredEvent]:
            rows = connection.execute(
                f"SELECT d.position, {EVENT_COLUMNS} FROM deliveries d "  # noqa: S608
                "JOIN events e ON e.id = d.event_id "
                "WHERE d.store = ? AND d.position > ? ORDER BY d.position LIMIT ?",
                (store, after, limit),
            ).fetchall()
            return [event_from_row(row[1:], int(row[0]), store) for row in rows]

        return await self._read(work)

    async def _read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return await self._on_reader(work)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite read failed: {exc}") from exc

    async def ack(self, store: str, position: int, now: float) -> int:
        """Raise the store's acknowledged position, never beyond its head."""

        def work(connection: sqlite3.Connection) -> int:
            connection.execute(
                "UPDATE store_heads SET acked = MAX(acked, MIN(?, head)) WHERE store = ?",
                (position, store),
            )
            row = connection.execute(
                "SELECT acked FROM store_heads WHERE store = ?", (store,)
            ).fetchone()
            return int(row[0]) if row else 0

        try:
            return await self._on_writer(work)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite ack failed: {exc}") from exc

    async def acked(self, store: str) -> int:
        """The store's acknowledged position."""

        def work(connection: sqlite3.Connection) -> int:
            row = connection.execute(
                "SELECT acked FROM store_heads WHERE store = ?", (store,)
            ).fetchone()
            return int(row[0]) if row else 0

        return await self._read(work)

    async def assign(self, event_id: int, store: str, now: float) -> WriteResult | None:
        """Append an existing event to a store's stream, learn its route keys and route
        the events waiting for them."""

        def work(connection: sqlite3.Connection) -> WriteResult | None:
            connection.execute("BEGIN IMMEDIATE")
            self._counters = None  # this appends to a stream; reloaded by the next batch
            try:
                row = connection.execute(
                    "SELECT teaches FROM events WHERE id = ?", (event_id,)
                ).fetchone()
                if row is None:
                    connection.execute("ROLLBACK")
                    return None
                connection.execute("UPDATE events SET store = ? WHERE id = ?", (store, event_id))
                taught = {key: store for key in json.loads(row[0])}
                _learn(connection, taught, now)
                position = _append(connection, store, event_id, now)
                rerouted = [event for event, _root in _reroute(connection, taught, now)]
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return WriteResult(
                event_id, duplicate=False, store=store, position=position,
                rerouted=tuple(rerouted),
            )

        try:
            return await self._on_writer(work)
        except sqlite3.Error as exc:
            raise NotStored(f"sqlite assign failed: {exc}") from exc

    async def list_events(self, which: str, after: int, limit: int) -> list[StoredEvent]:
        """Unrouted, quarantined or alerted events after an event id, oldest first."""
        condition = LISTINGS[which]
        limit = max(1, min(limit, MAX_READ_LIMIT))

        def work(connection: sqlite3.Connection) -> list[StoredEvent]:
            rows = connection.execute(
                f"SELECT e.store, {EVENT_COLUMNS} FROM events e "  # noqa: S608
                f"WHERE {condition} AND e.id > ? ORDER BY e.id LIMIT ?",
                (after, limit),
            ).fetchall()
            return [event_from_row(row[1:], None, row[0]) for row in rows]

        return await self._read(work)

    async def route_waiting(self, now: float) -> list[tuple[int, str]]:
        """Route the waiting events whose route key is known."""

        def work(connection: sqlite3.Connection) -> list[tuple[int, str]]:
            connection.execute("BEGIN IMMEDIATE")
            try:
                known = dict(connection.execute(KNOWN_WAITING).fetchall())
                moved = _reroute(connection, known, now) if known else []
                if moved:
                    self._counters = None  # heads moved; reloaded by the next batch
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return [(event_id, known[root]) for event_id, root in moved]

        try:
            return await self._on_writer(work)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite routing of waiting events failed: {exc}") from exc

    async def alert_unroutable(self, before: float, now: float) -> list[StoredEvent]:
        """Mark the fraud alerts unrouted since before ``before`` as alerted."""

        def work(connection: sqlite3.Connection) -> list[StoredEvent]:
            connection.execute("BEGIN IMMEDIATE")
            try:
                rows = connection.execute(
                    f"SELECT e.store, {EVENT_COLUMNS} FROM events e "  # noqa: S608
                    f"WHERE {UNROUTED_CONDITION} AND e.alerted_at IS NULL "
                    f"AND e.topic IN {FRAUD_TOPICS_SQL} AND e.received_at < ? ORDER BY e.id",
                    (before,),
                ).fetchall()
                connection.executemany(
                    "UPDATE events SET alerted_at = ? WHERE id = ?",
                    [(now, row[1]) for row in rows],
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return [replace(event_from_row(row[1:], None, row[0]), alerted_at=now) for row in rows]

        try:
            return await self._on_writer(work)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite alert marking failed: {exc}") from exc

    async def stats(self) -> Stats:
        """Counts and per-store stream state."""

        def work(connection: sqlite3.Connection) -> Stats:
            events = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            unrouted, quarantined, alerted = (
                connection.execute(
                    f"SELECT COUNT(*) FROM events e WHERE {LISTINGS[which]}"  # noqa: S608
                ).fetchone()[0]
                for which in ("unrouted", "quarantined", "alerted")
            )
            streams = []
            for store, head, acked in connection.execute(
                "SELECT store, head, acked FROM store_heads ORDER BY store"
            ).fetchall():
                oldest = connection.execute(
                    "SELECT created_at FROM deliveries WHERE store = ? AND position > ? "
                    "ORDER BY position LIMIT 1",
                    (store, acked),
                ).fetchone()
                streams.append(StoreStream(store, head, acked, oldest[0] if oldest else None))
            return Stats(events, unrouted, quarantined, alerted, tuple(streams))

        return await self._read(work)

    async def purge(self, before: float) -> int:
        """Delete what is older than the retention cut-off."""

        def work(connection: sqlite3.Connection) -> int:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("DELETE FROM deliveries WHERE created_at < ?", (before,))
                deleted = connection.execute(
                    "DELETE FROM events WHERE received_at < ? AND id NOT IN "
                    "(SELECT event_id FROM deliveries)",
                    (before,),
                ).rowcount
                connection.execute("DELETE FROM routes WHERE learned_at < ?", (before,))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return int(deleted)

        try:
            return await self._on_writer(work)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite purge failed: {exc}") from exc

    async def check_writable(self) -> None:
        """Take and release the write lock."""

        def work(connection: sqlite3.Connection) -> None:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")

        try:
            await self._on_writer(work)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite is not writable: {exc}") from exc


_LEARN = (
    "INSERT INTO routes(key, store, learned_at) VALUES (?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET store = excluded.store, learned_at = excluded.learned_at"
)


def _learn(connection: sqlite3.Connection, taught: dict[str, str], now: float) -> None:
    if taught:  # most cascades learn nothing new; an empty executemany is still a statement
        connection.executemany(_LEARN, [(key, store, now) for key, store in taught.items()])


def _reroute(
    connection: sqlite3.Connection, taught: dict[str, str], now: float
) -> list[tuple[int, str]]:
    """Route the events waiting for a key just taught, and those waiting for what they teach
    in turn, inside the caller's transaction; return (event id, the taught key it goes back
    to) for each, in the order appended."""
    cascade = RouteCascade(taught)
    while cascade.pending:
        rows = connection.execute(
            "SELECT id, asks, teaches FROM events "  # noqa: S608 - placeholders only
            "WHERE store IS NULL AND kind <> 'canary' "
            f"AND asks IN ({_placeholders(len(cascade.pending))}) ORDER BY id",
            list(cascade.pending),
        ).fetchall()
        for event_id, asks, teaches in rows:
            store = cascade.route(int(event_id), asks, teaches)
            connection.execute("UPDATE events SET store = ? WHERE id = ?", (store, event_id))
            _append(connection, store, int(event_id), now)
        _learn(connection, cascade.learned, now)
        cascade.advance()
    return cascade.moved


def _append(connection: sqlite3.Connection, store: str, event_id: int, now: float) -> int:
    row = connection.execute(
        "INSERT INTO store_heads(store, head) VALUES (?, 1) "
        "ON CONFLICT(store) DO UPDATE SET head = head + 1 RETURNING head",
        (store,),
    ).fetchone()
    position = int(row[0])
    connection.execute(
        "INSERT INTO deliveries(store, position, event_id, created_at) VALUES (?, ?, ?, ?)",
        (store, position, event_id, now),
    )
    return position


_EVENT_INSERT_COLUMNS = (
    "id, received_at, request_id, content_key, kind, topic, parse, signed, id_source, "
    "signed_field, store, asks, teaches, query, headers, body"
)


def _insert_rows(
    connection: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]], tail: str = ""
) -> None:
    """Insert rows with multi-row VALUES statements: one sqlite3_step (and one release and
    re-acquisition of the GIL) per statement instead of one per row."""
    if not rows:
        return
    width = len(rows[0])
    per_statement = max(1, connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    placeholder = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        values = ", ".join([placeholder] * len(chunk))
        connection.execute(
            f"{head} VALUES {values} {tail}",
            [value for row in chunk for value in row],
        )


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _existing(
    connection: sqlite3.Connection, items: Sequence[Incoming]
) -> dict[tuple[str, str], tuple[int, str | None]]:
    """Stored events sharing a content key or request id with the batch, by either key."""
    keys = sorted({item.content_key for item in items})
    request_ids = sorted({item.request_id for item in items if item.request_id is not None})
    rows = connection.execute(
        "SELECT id, store, content_key, request_id FROM events "  # noqa: S608 - placeholders
        f"WHERE content_key IN ({_placeholders(len(keys))}) "
        f"OR request_id IN ({_placeholders(len(request_ids))})",
        [*keys, *request_ids],
    ).fetchall()
    existing: dict[tuple[str, str], tuple[int, str | None]] = {}
    for event_id, store, content_key, request_id in rows:
        existing[("key", content_key)] = (int(event_id), store)
        if request_id is not None:
            existing[("rid", request_id)] = (int(event_id), store)
    return existing


def _routes(connection: sqlite3.Connection, keys: Sequence[str]) -> dict[str, str]:
    """The stores that route keys already point to."""
    if not keys:
        return {}
    rows = connection.execute(
        f"SELECT key, store FROM routes WHERE key IN ({_placeholders(len(keys))})",  # noqa: S608
        list(keys),
    ).fetchall()
    return {str(key): str(store) for key, store in rows}


@dataclass(slots=True)
class _Counters:
    """The next event id and each store's head, kept in memory between batches.

    Every statement is a moment the writer thread gives up the GIL and must win it back
    from the busy event loop, so reading these once instead of once per batch shortens
    every commit. Valid because this process's writer connection is the file's only writer.
    """

    next_id: int
    heads: dict[str, int]


def _load_counters(connection: sqlite3.Connection) -> _Counters:
    row = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    heads = connection.execute("SELECT store, head FROM store_heads").fetchall()
    return _Counters(
        next_id=(int(row[0]) if row else 0) + 1,
        heads={str(store): int(head) for store, head in heads},
    )


def _write_items(
    connection: sqlite3.Connection, items: Sequence[Incoming], counters: _Counters
) -> tuple[list[WriteResult], int, dict[str, int]]:
    """Write a batch inside the caller's transaction, with a handful of statements.

    Sequential semantics are kept: an item is a duplicate of an earlier one (stored or in
    this batch) with the same request id or content key, and a route taught by an earlier
    item of the batch routes a later one; a route taught by any item also routes the events
    (stored, or earlier in this batch) that wait for it. Event ids and stream positions are
    handed out here from ``counters``, which is safe because the caller holds the write
    lock (BEGIN IMMEDIATE); the next id and the heads this batch moved are returned, for the
    caller to keep once the commit succeeded.
    """
    existing = _existing(connection, items)
    routes = _routes(
        connection, sorted({item.asks for item in items if item.store is None and item.asks})
    )
    next_id = counters.next_id
    heads: dict[str, int] = {}
    event_rows: list[tuple[Any, ...]] = []
    route_rows: dict[str, tuple[str, str, float]] = {}
    taught_by: dict[str, int] = {}  # route key -> index in results of the item teaching it
    delivery_rows: list[tuple[str, int, int, float]] = []
    results: list[WriteResult] = []
    for item in items:
        found = existing.get(("rid", item.request_id)) if item.request_id is not None else None
        found = found or existing.get(("key", item.content_key))
        if found is not None:
            results.append(WriteResult(found[0], duplicate=True, store=found[1], position=None))
            continue
        store = item.store
        if store is None and item.asks is not None:
            store = routes.get(item.asks)
        event_id, next_id = next_id, next_id + 1
        existing[("key", item.content_key)] = (event_id, store)
        if item.request_id is not None:
            existing[("rid", item.request_id)] = (event_id, store)
        event_rows.append(
            (
                event_id,
                item.received_at,
                item.request_id,
                item.content_key,
                item.kind,
                item.topic,
                item.parse,
                int(item.signed),
                item.id_source,
                item.signed_field,
                store,
                item.asks,
                json.dumps(list(item.teaches)),
                encode_mapping(item.query),
                encode_mapping(item.headers),
                item.body,
            )
        )
        if store is None:
            results.append(WriteResult(event_id, duplicate=False, store=None, position=None))
            continue
        for key in item.teaches:
            routes[key] = store
            route_rows[key] = (key, store, item.received_at)
            taught_by[key] = len(results)
        heads[store] = heads.get(store, counters.heads.get(store, 0)) + 1
        delivery_rows.append((store, heads[store], event_id, item.received_at))
        results.append(WriteResult(event_id, duplicate=False, store=store, position=heads[store]))
    _insert_rows(connection, f"INSERT INTO events({_EVENT_INSERT_COLUMNS})", event_rows)
    _insert_rows(
        connection,
        "INSERT INTO routes(key, store, learned_at)",
        list(route_rows.values()),
        "ON CONFLICT(key) DO UPDATE SET store = excluded.store, learned_at = excluded.learned_at",
    )
    _insert_rows(
        connection, "INSERT INTO deliveries(store, position, event_id, created_at)", delivery_rows
    )
    _insert_rows(
        connection,
        "INSERT INTO store_heads(store, head)",
        list(heads.items()),
        "ON CONFLICT(store) DO UPDATE SET head = excluded.head",
    )
    if route_rows:
        now = items[-1].received_at
        moved = _reroute(connection, {key: row[1] for key, row in route_rows.items()}, now)
        for event_id, root in moved:
            index = taught_by[root]
            results[index] = replace(
                results[index], rerouted=(*results[index].rerouted, event_id)
            )
        for store in {route_rows[root][1] for _event, root in moved}:
            heads[store] = int(
                connection.execute(
                    "SELECT head FROM store_heads WHERE store = ?", (store,)
                ).fetchone()[0]
            )
    return results, next_id, heads
