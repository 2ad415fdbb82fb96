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
from pathlib import Path
from typing import Any, TypeVar

from pointd.relay.errors import NotStored, StorageError
from pointd.relay.storage import (
    MAX_READ_LIMIT,
    Incoming,
    Stats,
    StoredEvent,
    StoreStream,
    WriteResult,
    decode_mapping,
    encode_mapping,
)

# Readers wait this long for the writer's lock before failing (WAL readers rarely wait).
BUSY_TIMEOUT = 5.0

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

_EVENT_COLUMNS = (
    "e.id, e.received_at, e.kind, e.topic, e.parse, e.signed, e.id_source, e.query, e.headers, "
    "e.body"
)


def _row_to_event(row: Sequence[Any], position: int | None, store: str | None) -> StoredEvent:
    return StoredEvent(
        event_id=int(row[0]),
        position=position,
        store=store,
        received_at=float(row[1]),
        kind=str(row[2]),
        topic=row[3],
        parse=str(row[4]),
        signed=bool(row[5]),
        id_source=row[6],
        query=decode_mapping(row[7]),
        headers=decode_mapping(row[8]),
        body=bytes(row[9]),
    )


class SqliteStorage:
    """Storage in one SQLite file; safe against power loss once a commit returned."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite-w")
        self._reader_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite-r")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

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
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns; the relay answers 2xx only after that.
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    async def open(self) -> None:
        """Open both connections and create the schema."""
        loop = asyncio.get_running_loop()
        try:
            self._writer = await loop.run_in_executor(self._writer_pool, self._connect)
            await self._on_writer(lambda c: c.executescript(SCHEMA))
            self._reader = await loop.run_in_executor(self._reader_pool, self._connect)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self._path}: {exc}") from exc

    async def close(self) -> None:
        """Close both connections and stop the executors."""
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
            try:
                results = [_write_one(connection, item) for item in items]
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return results

        try:
            return await self._on_writer(work)
        except sqlite3.Error as exc:
            raise NotStored(f"sqlite commit failed: {exc}") from exc

    async def read(self, store: str, after: int, limit: int) -> list[StoredEvent]:
        """Events of one store's stream after a position."""
        limit = max(1, min(limit, MAX_READ_LIMIT))

        def work(connection: sqlite3.Connection) -> list[StoredEvent]:
            rows = connection.execute(
                f"SELECT d.position, {_EVENT_COLUMNS} FROM deliveries d "  # noqa: S608
                "JOIN events e ON e.id = d.event_id "
                "WHERE d.store = ? AND d.position > ? ORDER BY d.position LIMIT ?",
                (store, after, limit),
            ).fetchall()
            return [_row_to_event(row[1:], int(row[0]), store) for row in rows]

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
        """Append an existing event to a store's stream and learn its route keys."""

        def work(connection: sqlite3.Connection) -> WriteResult | None:
            connection.execute("BEGIN IMMEDIATE")
            try:
                row = connection.execute(
                    "SELECT teaches FROM events WHERE id = ?", (event_id,)
                ).fetchone()
                if row is None:
                    connection.execute("ROLLBACK")
                    return None
                connection.execute("UPDATE events SET store = ? WHERE id = ?", (store, event_id))
                _learn(connection, json.loads(row[0]), store, now)
                position = _append(connection, store, event_id, now)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            return WriteResult(event_id, duplicate=False, store=store, position=position)

        try:
            return await self._on_writer(work)
        except sqlite3.Error as exc:
            raise NotStored(f"sqlite assign failed: {exc}") from exc

    async def list_events(self, which: str, limit: int) -> list[StoredEvent]:
        """Newest unrouted or quarantined events."""
        condition = {
            "unrouted": "e.store IS NULL AND e.kind <> 'canary'",
            "quarantined": "e.parse IN ('lenient', 'unparseable')",
        }[which]
        limit = max(1, min(limit, MAX_READ_LIMIT))

        def work(connection: sqlite3.Connection) -> list[StoredEvent]:
            rows = connection.execute(
                f"SELECT e.store, {_EVENT_COLUMNS} FROM events e "  # noqa: S608
                f"WHERE {condition} ORDER BY e.id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [_row_to_event(row[1:], None, row[0]) for row in rows]

        return await self._read(work)

    async def stats(self) -> Stats:
        """Counts and per-store stream state."""

        def work(connection: sqlite3.Connection) -> Stats:
            events = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            unrouted = connection.execute(
                "SELECT COUNT(*) FROM events WHERE store IS NULL AND kind <> 'canary'"
            ).fetchone()[0]
            quarantined = connection.execute(
                "SELECT COUNT(*) FROM events WHERE parse IN ('lenient', 'unparseable')"
            ).fetchone()[0]
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
            return Stats(events, unrouted, quarantined, tuple(streams))

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


def _learn(connection: sqlite3.Connection, keys: Sequence[str], store: str, now: float) -> None:
    for key in keys:
        connection.execute(
            "INSERT INTO routes(key, store, learned_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET "
            "store = excluded.store, learned_at = excluded.learned_at",
            (key, store, now),
        )


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


def _write_one(connection: sqlite3.Connection, item: Incoming) -> WriteResult:
    store = item.store
    if store is None and item.asks is not None:
        row = connection.execute("SELECT store FROM routes WHERE key = ?", (item.asks,)).fetchone()
        store = row[0] if row else None
    cursor = connection.execute(
        "INSERT OR IGNORE INTO events(received_at, request_id, content_key, kind, topic, parse, "
        "signed, id_source, store, asks, teaches, query, headers, body) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            item.received_at,
            item.request_id,
            item.content_key,
            item.kind,
            item.topic,
            item.parse,
            int(item.signed),
            item.id_source,
            store,
            item.asks,
            json.dumps(list(item.teaches)),
            encode_mapping(item.query),
            encode_mapping(item.headers),
            item.body,
        ),
    )
    if cursor.rowcount == 0:
        existing = connection.execute(
            "SELECT id, store FROM events WHERE content_key = ? OR request_id = ? LIMIT 1",
            (item.content_key, item.request_id),
        ).fetchone()
        return WriteResult(int(existing[0]), duplicate=True, store=existing[1], position=None)
    event_id = int(cursor.lastrowid or 0)
    if store is None:
        return WriteResult(event_id, duplicate=False, store=None, position=None)
    _learn(connection, item.teaches, store, item.received_at)
    position = _append(connection, store, event_id, item.received_at)
    return WriteResult(event_id, duplicate=False, store=store, position=position)
