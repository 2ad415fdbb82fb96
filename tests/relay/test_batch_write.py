"""One group commit of many items: duplicates and routes inside a batch, positions and ids
across batches, assignments and restarts, on both backends."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from pointd.relay import sqlite_backend
from pointd.relay.errors import NotStored
from pointd.relay.notification import intent_key, payment_key
from pointd.relay.storage import Incoming, Storage
from tests.relay.harness import make_settings, open_storage


def item(
    n: int,
    *,
    store: str | None = "store-a",
    request_id: str | None = None,
    asks: str | None = None,
    teaches: tuple[str, ...] = (),
    body: bytes | None = None,
) -> Incoming:
    """A notification as intake would hand it to storage."""
    body = body if body is not None else f'{{"n": {n}}}'.encode()
    return Incoming(
        received_at=1_763_000_000.0 + n,
        request_id=request_id if request_id is not None else f"rq-{n}",
        content_key=hashlib.sha256(body).hexdigest(),
        kind="intent",
        topic="point_integration_wh",
        parse="json",
        signed=True,
        id_source="body",
        signed_field="id",
        store=store,
        asks=asks,
        teaches=teaches,
        query={},
        headers={"x-request-id": request_id or f"rq-{n}"},
        body=body,
    )


@pytest.fixture
async def storage(tmp_path: Path, backend: tuple[str, str | None]) -> AsyncIterator[Storage]:
    """An open storage of either backend."""
    name, dsn = backend
    opened = open_storage(make_settings(tmp_path, name, dsn))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_repeat_inside_one_batch_is_a_duplicate_of_the_first(storage: Storage) -> None:
    same_request = item(2, request_id="rq-1")
    same_body = item(3, body=b'{"n": 1}')
    results = await storage.write_batch([item(1), same_request, same_body, item(4)])
    assert [r.duplicate for r in results] == [False, True, True, False]
    assert results[1].event_id == results[2].event_id == results[0].event_id
    assert [r.position for r in results] == [1, None, None, 2]
    assert [e.event_id for e in await storage.read("store-a", 0, 10)] == [
        results[0].event_id,
        results[3].event_id,
    ]


async def test_a_repeat_of_a_stored_event_is_a_duplicate(storage: Storage) -> None:
    (first,) = await storage.write_batch([item(1, store="store-b")])
    again = await storage.write_batch([item(9, request_id="rq-1"), item(1, request_id="other")])
    assert [(r.event_id, r.duplicate, r.store) for r in again] == [
        (first.event_id, True, "store-b"),
        (first.event_id, True, "store-b"),
    ]


async def test_a_route_taught_in_a_batch_routes_its_items_before_and_after(
    storage: Storage,
) -> None:
    teacher = item(1, store="store-b", teaches=(intent_key("i1"), payment_key("p1")))
    asker = item(2, store=None, asks=payment_key("p1"))
    stranger = item(3, store=None, asks=payment_key("unknown"))
    asker_again = replace(asker, request_id="rq-2b", content_key="later")
    results = await storage.write_batch([asker, teacher, asker_again, stranger])
    assert results[0].store is None  # asked before anything taught the route ...
    assert results[1].store == "store-b"
    assert results[1].rerouted == (results[0].event_id,)  # ... and routed by the teacher
    assert results[2].store == "store-b"
    assert results[2].position == 2
    assert results[3].store is None
    assert results[3].position is None
    events = await storage.read("store-b", 0, 10)
    assert [e.event_id for e in events] == [r.event_id for r in results[1:3]] + [
        results[0].event_id
    ]
    assert [e.position for e in events] == [1, 2, 3]
    (later,) = await storage.write_batch([item(4, store=None, asks=intent_key("i1"))])
    assert (later.store, later.position) == ("store-b", 4)


async def test_positions_and_ids_continue_across_batches_assignments_and_restarts(
    tmp_path: Path, backend: tuple[str, str | None]
) -> None:
    name, dsn = backend
    settings = make_settings(tmp_path, name, dsn)
    first = open_storage(settings)
    await first.open()
    try:
        a = await first.write_batch([item(1), item(2, store="store-b"), item(3, store=None)])
        assigned = await first.assign(a[2].event_id, "store-a", 1_763_000_100.0)
        assert assigned is not None
        assert assigned.position == 2
        b = await first.write_batch([item(4), item(5, store="store-b")])
    finally:
        await first.close()
    assert [r.position for r in a] == [1, 1, None]
    assert [r.position for r in b] == [3, 2]
    second = open_storage(settings)
    await second.open()
    try:
        c = await second.write_batch([item(6), item(7, store="store-b")])
        assert [r.position for r in c] == [4, 3]
        ids = [r.event_id for r in (*a, *b, *c)]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        assert [e.position for e in await second.read("store-a", 0, 10)] == [1, 2, 3, 4]
    finally:
        await second.close()


async def test_a_failed_batch_leaves_no_trace_and_the_next_one_continues(
    tmp_path: Path, backend: tuple[str, str | None]
) -> None:
    name, dsn = backend
    storage = open_storage(make_settings(tmp_path, name, dsn))
    await storage.open()
    try:
        await storage.write_batch([item(1)])
        poisoned = item(2, body=b'{"n": 2}')
        # A body that is not bytes makes the driver fail mid-batch, after ids were handed out.
        broken = replace(poisoned, body=object())
        with pytest.raises(NotStored):
            await storage.write_batch([item(3), broken])
        results = await storage.write_batch([item(3), item(4)])
        assert [r.position for r in results] == [2, 3]
        assert [e.position for e in await storage.read("store-a", 0, 10)] == [1, 2, 3]
    finally:
        await storage.close()


async def test_sqlite_checkpoints_off_the_writer_once_enough_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "relay.sqlite3"
    storage = sqlite_backend.SqliteStorage(path)
    await storage.open()
    try:
        await storage.write_batch([item(n) for n in range(1, 4)])
        # SQLite's own checkpoint is off: the main file has not grown from the WAL yet.
        untouched = path.stat().st_size
        monkeypatch.setattr(sqlite_backend, "CHECKPOINT_AFTER_ITEMS", 3)
        await storage.write_batch([item(n) for n in range(4, 7)])
        storage._checkpoint_pool.submit(lambda: None).result(timeout=10)
        assert path.stat().st_size > untouched
        assert len(await storage.read("store-a", 0, 10)) == 6
    finally:
        await storage.close()


async def test_a_new_sqlite_file_uses_small_pages_and_an_old_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(old)) as connection:
        connection.execute("PRAGMA page_size=4096")
        connection.execute("CREATE TABLE keep (x)")
    for path, expected in ((tmp_path / "new.sqlite3", sqlite_backend.PAGE_SIZE), (old, 4096)):
        storage = sqlite_backend.SqliteStorage(path)
        await storage.open()
        try:
            await storage.write_batch([item(1)])
            with contextlib.closing(sqlite3.connect(path)) as connection:
                assert connection.execute("PRAGMA page_size").fetchone()[0] == expected
                assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            await storage.close()


async def test_a_route_learned_without_rerouting_is_caught_up_by_route_waiting(
    storage: Storage, tmp_path: Path, backend: tuple[str, str | None]
) -> None:
    # Two PostgreSQL replicas racing can leave an event waiting for a key another commit
    # just learned; simulated here by writing the route row directly.
    name, dsn = backend
    (waiting,) = await storage.write_batch([item(1, store=None, asks=payment_key("p7"))])
    (routed,) = await storage.write_batch([item(2, store="store-b")])
    insert = "INSERT INTO routes(key, store, learned_at) VALUES ('payment:p7', 'store-b', 1)"
    if name == "sqlite":
        path = make_settings(tmp_path, name, dsn).config.storage.sqlite_path
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute(insert)
            connection.commit()
    else:
        import psycopg

        assert dsn is not None
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(insert)
    assert await storage.route_waiting(1_763_000_100.0) == [(waiting.event_id, "store-b")]
    assert await storage.route_waiting(1_763_000_101.0) == []
    (after,) = await storage.write_batch([item(3, store="store-b")])
    events = await storage.read("store-b", 0, 10)
    assert [e.event_id for e in events] == [routed.event_id, waiting.event_id, after.event_id]
    assert [e.position for e in events] == [1, 2, 3]
