"""The PostgreSQL storage backend: several relay replicas sharing one database.

Theory of operation. The tables are the truth. A group commit is one transaction made of
a handful of pipelined statements: look up route keys, insert events (duplicates fall out
on the unique keys), learn route keys, reserve each store's positions by bumping its row in
``store_heads`` (stores in sorted order, so two replicas never deadlock; the row lock
makes positions of one store commit in order), insert deliveries, and ``pg_notify`` the
stores touched. LISTEN/NOTIFY is only a wake-up for long-polls on other replicas: a lost
notification delays a read until the long-poll's periodic re-check, it never loses data.
A replica skips the notifications of its own writer connections: what it commits itself
its service pushes to its streams at once (pointd.relay.feed), without reading it back.

Re-routing across replicas: one replica may store an event waiting for a route key while
another learns that key. Under READ COMMITTED neither would see the other's uncommitted
row, and the event would wait; so each commit first takes a transaction-scoped advisory
lock on every route key it asks for or teaches (in hash order, so two commits never
deadlock), and the second of two such commits sees what the first committed. Keys taught
by events re-routed in the same commit are not locked (taking a lock after the commit
holds row locks could deadlock); ``route_waiting``, run periodically, routes whatever such
a race left waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import psycopg
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

log = structlog.get_logger(__name__)

CHANNEL = "pointd_relay"
# A TCP connect to the database should be immediate; give a loaded server some slack.
CONNECT_TIMEOUT = 10.0
# Back-off before re-opening a lost LISTEN connection.
LISTEN_RETRY_DELAY = 1.0
_SCHEMA_LOCK = 748_201_001

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL,
    request_id TEXT UNIQUE,
    content_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    topic TEXT,
    parse TEXT NOT NULL,
    signed BOOLEAN NOT NULL,
    id_source TEXT,
    signed_field TEXT,
    alerted_at DOUBLE PRECISION,
    store TEXT,
    asks TEXT,
    teaches TEXT NOT NULL,
    query TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS events_unrouted ON events(id) WHERE store IS NULL AND kind <> 'canary';
CREATE INDEX IF NOT EXISTS events_quarantined ON events(id)
    WHERE parse IN ('lenient', 'unparseable');
CREATE INDEX IF NOT EXISTS events_received ON events(received_at);
CREATE TABLE IF NOT EXISTS deliveries (
    store TEXT NOT NULL,
    position BIGINT NOT NULL,
    event_id BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (store, position)
);
CREATE INDEX IF NOT EXISTS deliveries_created ON deliveries(created_at);
CREATE TABLE IF NOT EXISTS store_heads (
    store TEXT PRIMARY KEY,
    head BIGINT NOT NULL,
    acked BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS routes (
    key TEXT PRIMARY KEY,
    store TEXT NOT NULL,
    learned_at DOUBLE PRECISION NOT NULL
);
ALTER TABLE events ADD COLUMN IF NOT EXISTS signed_field TEXT;
ALTER TABLE events ADD COLUMN IF NOT EXISTS alerted_at DOUBLE PRECISION;
CREATE INDEX IF NOT EXISTS events_waiting ON events(asks) WHERE store IS NULL;
CREATE INDEX IF NOT EXISTS events_unroutable ON events(received_at)
    WHERE store IS NULL AND alerted_at IS NULL AND topic IN {FRAUD_TOPICS_SQL};
"""

class PostgresStorage:
    """Storage in a PostgreSQL database shared by every relay replica."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._writer: psycopg.AsyncConnection[Any] | None = None
        self._reader: psycopg.AsyncConnection[Any] | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._callbacks: list[Callable[[str], None]] = []
        self._listener: asyncio.Task[None] | None = None
        # Server process ids of this replica's writer connections, whose notifications
        # announce its own commits.
        self._own_pids: set[int] = set()

    def __repr__(self) -> str:
        # The DSN may hold a password; never show it.
        return "PostgresStorage(dsn='***')"

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
            )
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {type(exc).__name__}") from None

    async def _writer_connection(self) -> psycopg.AsyncConnection[Any]:
        if self._writer is None or self._writer.closed or self._writer.broken:
            self._writer = await self._connect()
            self._own_pids.add(self._writer.info.backend_pid)
        return self._writer

    async def _reader_connection(self) -> psycopg.AsyncConnection[Any]:
        if self._reader is None or self._reader.closed or self._reader.broken:
            self._reader = await self._connect()
        return self._reader

    async def open(self) -> None:
        """Connect, create the schema once across replicas, and start listening."""
        connection = await self._writer_connection()
        try:
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await connection.execute(SCHEMA)
        except psycopg.Error as exc:
            raise StorageError(f"cannot create the relay schema: {exc}") from exc
        await self._reader_connection()
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="pg-listen")

    async def close(self) -> None:
        """Stop listening and close connections."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        for connection in (self._writer, self._reader):
            if connection is not None:
                await connection.close()
        self._writer = self._reader = None

    def on_remote_write(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(store)`` when another replica appended to a store's stream."""
        self._callbacks.append(callback)

    async def _listen(self) -> None:
        while True:
            try:
                connection = await self._connect()
                async with connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    async for notify in connection.notifies():
                        if notify.pid in self._own_pids:
                            continue
                        for callback in self._callbacks:
                            callback(notify.payload)
            except (StorageError, psycopg.Error) as exc:
                log.warning("postgres_listen_lost", error=type(exc).__name__)
            await asyncio.sleep(LISTEN_RETRY_DELAY)

    async def write_batch(self, items: Sequence[Incoming]) -> list[WriteResult]:
        """Write items in one committed transaction."""
        async with self._write_lock:
            try:
                connection = await self._writer_connection()
                async with connection.transaction():
                    return await _write_batch(connection, items)
            except (psycopg.Error, StorageError) as exc:
                raise NotStored(f"postgres commit failed: {type(exc).__name__}: {exc}") from exc

    async def read(self, store: str, after: int, limit: int) -> list[StoredEvent]:
        """Events of one store's stream after a position."""
        limit = max(1, min(limit, MAX_READ_LIMIT))
        rows = await self._fetch(
            f"SELECT d.position, {EVENT_COLUMNS} FROM deliveries d "  # noqa: S608
            "JOIN events e ON e.id = d.event_id "
            "WHERE d.store = %s AND d.position > %s ORDER BY d.position LIMIT %s",
            (store, after, limit),
        )
        return [event_from_row(row[1:], int(row[0]), store) for row in rows]

    async def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._read_lock:
            try:
                connection = await self._reader_connection()
                cursor = await connection.execute(query, params)
                return await cursor.fetchall()
            except psycopg.Error as exc:
                raise StorageError(f"postgres read failed: {type(exc).__name__}") from exc

    async def ack(self, store: str, position: int, now: float) -> int:
        """Raise the store's acknowledged position, never beyond its head."""
        async with self._write_lock:
            try:
                connection = await self._writer_connection()
                cursor = await connection.execute(
                    "UPDATE store_heads SET acked = GREATEST(acked, LEAST(%s, head)) "
                    "WHERE store = %s RETURNING acked",
                    (position, store),
                )
                row = await cursor.fetchone()
            except psycopg.Error as exc:
                raise StorageError(f"postgres ack failed: {type(exc).__name__}") from exc
        return int(row[0]) if row else 0

    async def acked(self, store: str) -> int:
        """The store's acknowledged position."""
        rows = await self._fetch("SELECT acked FROM store_heads WHERE store = %s", (store,))
        return int(rows[0][0]) if rows else 0

    async def assign(self, event_id: int, store: str, now: float) -> WriteResult | None:
        """Append an existing event to a store's stream, learn its route keys and route
        the events waiting for them."""
        async with self._write_lock:
            try:
                connection = await self._writer_connection()
                async with connection.transaction():
                    cursor = await connection.execute(
                        "SELECT teaches FROM events WHERE id = %s", (event_id,)
                    )
                    row = await cursor.fetchone()
                    if row is None:
                        return None
                    taught = {key: store for key in json.loads(row[0])}
                    await _lock_keys(connection, list(taught))
                    await connection.execute(
                        "UPDATE events SET store = %s WHERE id = %s", (store, event_id)
                    )
                    await _learn(connection, list(taught.items()), now)
                    heads = await _reserve(connection, Counter({store: 1}))
                    position = heads[store]
                    await connection.execute(
                        "INSERT INTO deliveries(store, position, event_id, created_at) "
                        "VALUES (%s, %s, %s, %s)",
                        (store, position, event_id, now),
                    )
                    moved = await _reroute(connection, taught, now)
                    await connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, store))
            except psycopg.Error as exc:
                raise NotStored(f"postgres assign failed: {type(exc).__name__}") from exc
        return WriteResult(
            event_id,
            duplicate=False,
            store=store,
            position=position,
            rerouted=tuple(event for event, _root in moved),
        )

    async def list_events(self, which: str, after: int, limit: int) -> list[StoredEvent]:
        """Unrouted, quarantined or alerted events after an event id, oldest first."""
        rows = await self._fetch(
            f"SELECT e.store, {EVENT_COLUMNS} FROM events e "  # noqa: S608
            f"WHERE {LISTINGS[which]} AND e.id > %s ORDER BY e.id LIMIT %s",
            (after, max(1, min(limit, MAX_READ_LIMIT))),
        )
        return [event_from_row(row[1:], None, row[0]) for row in rows]

    async def route_waiting(self, now: float) -> list[tuple[int, str]]:
        """Route the waiting events whose route key is known; with several replicas, an
        event's row lock lets exactly one of them route it."""
        async with self._write_lock:
            try:
                connection = await self._writer_connection()
                async with connection.transaction():
                    cursor = await connection.execute(KNOWN_WAITING)
                    known = {str(key): str(store) for key, store in await cursor.fetchall()}
                    moved = await _reroute(connection, known, now) if known else []
                    for store in sorted({known[root] for _event, root in moved}):
                        await connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, store))
            except psycopg.Error as exc:
                raise StorageError(f"postgres routing of waiting events failed: {exc}") from exc
        return [(event_id, known[root]) for event_id, root in moved]

    async def alert_unroutable(self, before: float, now: float) -> list[StoredEvent]:
        """Mark the fraud alerts unrouted since before ``before`` as alerted; with several
        replicas, the row lock lets exactly one of them mark (and report) each."""
        async with self._write_lock:
            try:
                connection = await self._writer_connection()
                cursor = await connection.execute(
                    f"UPDATE events AS e SET alerted_at = %s WHERE {UNROUTED_CONDITION} "  # noqa: S608
                    f"AND e.alerted_at IS NULL AND e.topic IN {FRAUD_TOPICS_SQL} "
                    f"AND e.received_at < %s RETURNING e.store, {EVENT_COLUMNS}",
                    (now, before),
                )
                rows = await cursor.fetchall()
            except psycopg.Error as exc:
                raise StorageError(f"postgres alert marking failed: {type(exc).__name__}") from exc
        return sorted(
            (event_from_row(row[1:], None, row[0]) for row in rows),
            key=lambda event: event.event_id,
        )

    async def stats(self) -> Stats:
        """Counts and per-store stream state."""
        counts = await self._fetch(
            "SELECT COUNT(*), "  # noqa: S608 - fixed conditions
            f"COUNT(*) FILTER (WHERE {LISTINGS['unrouted']}), "
            f"COUNT(*) FILTER (WHERE {LISTINGS['quarantined']}), "
            f"COUNT(*) FILTER (WHERE {LISTINGS['alerted']}) FROM events e"
        )
        streams = await self._fetch(
            "SELECT h.store, h.head, h.acked, (SELECT d.created_at FROM deliveries d "
            "WHERE d.store = h.store AND d.position > h.acked ORDER BY d.position LIMIT 1) "
            "FROM store_heads h ORDER BY h.store"
        )
        events, unrouted, quarantined, alerted = counts[0]
        return Stats(
            int(events),
            int(unrouted),
            int(quarantined),
            int(alerted),
            tuple(StoreStream(row[0], int(row[1]), int(row[2]), row[3]) for row in streams),
        )

    async def purge(self, before: float) -> int:
        """Delete what is older than the retention cut-off."""
        async with self._write_lock:
            try:
                connection = await self._writer_connection()
                async with connection.transaction():
                    await connection.execute(
                        "DELETE FROM deliveries WHERE created_at < %s", (before,)
                    )
                    cursor = await connection.execute(
                        "DELETE FROM events e WHERE e.received_at < %s AND NOT EXISTS "
                        "(SELECT 1 FROM deliveries d WHERE d.event_id = e.id)",
                        (before,),
                    )
                    deleted = cursor.rowcount
                    await connection.execute("DELETE FROM routes WHERE learned_at < %s", (before,))
            except psycopg.Error as exc:
                raise StorageError(f"postgres purge failed: {type(exc).__name__}") from exc
        return int(deleted)

    async def check_writable(self) -> None:
        """Run a write transaction that changes nothing."""
        async with self._write_lock:
            try:
                connection = await self._writer_connection()
                async with connection.transaction():
                    await connection.execute("SELECT txid_current()")
            except psycopg.Error as exc:
                raise StorageError(f"postgres is not writable: {type(exc).__name__}") from exc


async def _learn(
    connection: psycopg.AsyncConnection[Any], pairs: Sequence[tuple[str, str]], now: float
) -> None:
    if not pairs:
        return
    async with connection.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO routes(key, store, learned_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET "
            "store = EXCLUDED.store, learned_at = EXCLUDED.learned_at",
            [(key, store, now) for key, store in pairs],
        )


async def _lock_keys(connection: psycopg.AsyncConnection[Any], keys: Sequence[str]) -> None:
    """Take this transaction's advisory lock on each route key, in hash order."""
    if keys:
        await connection.execute(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(k, 0) AS h "
            "FROM unnest(%s::text[]) AS k) AS hashes ORDER BY h",
            (sorted(set(keys)),),
        )


async def _reroute(
    connection: psycopg.AsyncConnection[Any], taught: dict[str, str], now: float
) -> list[tuple[int, str]]:
    """Route the events waiting for a key just taught, and those waiting for what they teach
    in turn, inside the caller's transaction; return (event id, the taught key it goes back
    to) for each, in the order appended."""
    cascade = RouteCascade(taught)
    while cascade.pending:
        cursor = await connection.execute(
            "UPDATE events SET store = t.store "
            "FROM unnest(%s::text[], %s::text[]) AS t(key, store) "
            "WHERE events.store IS NULL AND events.kind <> 'canary' AND events.asks = t.key "
            "RETURNING events.id, events.asks, events.teaches",
            (list(cascade.pending), list(cascade.pending.values())),
        )
        stores = [
            (int(event_id), cascade.route(int(event_id), asks, teaches))
            for event_id, asks, teaches in sorted(await cursor.fetchall())
        ]
        if stores:
            counts = Counter(store for _event, store in stores)
            heads = await _reserve(connection, counts)
            position = {store: heads[store] - counts[store] + 1 for store in counts}
            deliveries: list[tuple[str, int, int, float]] = []
            for event_id, store in stores:
                deliveries.append((store, position[store], event_id, now))
                position[store] += 1
            async with connection.cursor() as insert:
                await insert.executemany(
                    "INSERT INTO deliveries(store, position, event_id, created_at) "
                    "VALUES (%s, %s, %s, %s)",
                    deliveries,
                )
        await _learn(connection, list(cascade.learned.items()), now)
        cascade.advance()
    return cascade.moved


async def _reserve(
    connection: psycopg.AsyncConnection[Any], counts: Counter[str]
) -> dict[str, int]:
    """Bump each store's head by its count, in store order; return each store's new head."""
    heads: dict[str, int] = {}
    stores = sorted(counts)
    async with connection.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO store_heads(store, head) VALUES (%s, %s) ON CONFLICT (store) "
            "DO UPDATE SET head = store_heads.head + EXCLUDED.head RETURNING head",
            [(store, counts[store]) for store in stores],
            returning=True,
        )
        index = 0
        async for result in cursor.results():
            row = await result.fetchone()
            if row is None:
                raise StorageError("store_heads did not return a head")
            heads[stores[index]] = int(row[0])
            index += 1
    return heads


async def _write_batch(
    connection: psycopg.AsyncConnection[Any], items: Sequence[Incoming]
) -> list[WriteResult]:
    asks = sorted({item.asks for item in items if item.store is None and item.asks is not None})
    await _lock_keys(connection, [*asks, *(key for item in items for key in item.teaches)])
    known: dict[str, str] = {}
    if asks:
        cursor = await connection.execute(
            "SELECT key, store FROM routes WHERE key = ANY(%s)", (asks,)
        )
        known = {key: store for key, store in await cursor.fetchall()}
    # Route keys taught by earlier items of this batch count for later ones, as they would
    # had the items arrived in separate commits.
    stores: list[str | None] = []
    for item in items:
        store = item.store if item.store is not None else known.get(item.asks or "")
        if store is not None:
            for key in item.teaches:
                known[key] = store
        stores.append(store)
    inserted: list[int | None] = []
    async with connection.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO events(received_at, request_id, content_key, kind, topic, parse, signed, "
            "id_source, signed_field, store, asks, teaches, query, headers, body) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING id",
            [
                (
                    item.received_at,
                    item.request_id,
                    item.content_key,
                    item.kind,
                    item.topic,
                    item.parse,
                    item.signed,
                    item.id_source,
                    item.signed_field,
                    store,
                    item.asks,
                    json.dumps(list(item.teaches)),
                    encode_mapping(item.query),
                    encode_mapping(item.headers),
                    item.body,
                )
                for item, store in zip(items, stores, strict=True)
            ],
            returning=True,
        )
        async for result in cursor.results():
            row = await result.fetchone()
            inserted.append(int(row[0]) if row else None)
    duplicates: dict[str, tuple[int, str | None]] = {}
    missing = [item for item, event_id in zip(items, inserted, strict=True) if event_id is None]
    if missing:
        cursor = await connection.execute(
            "SELECT id, store, request_id, content_key FROM events "
            "WHERE content_key = ANY(%s) OR request_id = ANY(%s)",
            (
                [item.content_key for item in missing],
                [item.request_id for item in missing if item.request_id is not None],
            ),
        )
        for event_id, store, request_id, content_key in await cursor.fetchall():
            duplicates[f"c:{content_key}"] = (int(event_id), store)
            if request_id is not None:
                duplicates[f"r:{request_id}"] = (int(event_id), store)
    taught: dict[str, str] = {}
    taught_by: dict[str, int] = {}
    for index, (item, store, event_id) in enumerate(zip(items, stores, inserted, strict=True)):
        if event_id is not None and store is not None:
            for key in item.teaches:
                taught[key] = store
                taught_by[key] = index
    now = items[-1].received_at if items else 0.0
    await _learn(connection, list(taught.items()), now)
    routed = Counter(
        store
        for store, event_id in zip(stores, inserted, strict=True)
        if event_id is not None and store is not None
    )
    heads = await _reserve(connection, routed) if routed else {}
    next_position = {store: heads[store] - count + 1 for store, count in routed.items()}
    results: list[WriteResult] = []
    deliveries: list[tuple[str, int, int, float]] = []
    for item, store, event_id in zip(items, stores, inserted, strict=True):
        if event_id is None:
            found = duplicates.get(f"c:{item.content_key}") or duplicates.get(
                f"r:{item.request_id}"
            )
            if found is None:
                raise StorageError("a conflicting event vanished inside its transaction")
            results.append(WriteResult(found[0], duplicate=True, store=found[1], position=None))
            continue
        position = None
        if store is not None:
            position = next_position[store]
            next_position[store] += 1
            deliveries.append((store, position, event_id, item.received_at))
        results.append(WriteResult(event_id, duplicate=False, store=store, position=position))
    if deliveries:
        async with connection.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO deliveries(store, position, event_id, created_at) "
                "VALUES (%s, %s, %s, %s)",
                deliveries,
            )
    rerouted: dict[int, list[int]] = {}
    for event_id, root in await _reroute(connection, taught, now) if taught else []:
        rerouted.setdefault(taught_by[root], []).append(event_id)
    for index, moved in rerouted.items():
        results[index] = replace(results[index], rerouted=tuple(moved))
    for store in sorted(routed):
        await connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, store))
    return results
