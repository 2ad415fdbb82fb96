"""The SQLite backend's hand-off to its connection threads (``_run_on``): results and errors
reach the awaiting coroutine, work runs on the pool's thread, work cancelled before it
started is never run, and a cancellation while it runs neither loses nor repeats it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from pointd.relay.sqlite_backend import _run_on

WAIT = 10.0  # generous: the thread only has to be scheduled


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=1)
    yield executor
    executor.shutdown(wait=True)


@pytest.fixture
def connection() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(":memory:", check_same_thread=False)
    yield db
    db.close()


async def test_the_result_comes_back_from_the_pool_thread(
    pool: ThreadPoolExecutor, connection: sqlite3.Connection
) -> None:
    def work(db: sqlite3.Connection) -> tuple[int, str]:
        return db.execute("SELECT 41 + 1").fetchone()[0], threading.current_thread().name

    value, thread = await asyncio.wait_for(_run_on(pool, work, connection), WAIT)
    assert value == 42
    assert thread != threading.current_thread().name


async def test_an_error_reaches_the_awaiting_coroutine(
    pool: ThreadPoolExecutor, connection: sqlite3.Connection
) -> None:
    def work(db: sqlite3.Connection) -> None:
        db.execute("SELECT * FROM no_such_table")

    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        await asyncio.wait_for(_run_on(pool, work, connection), WAIT)


async def test_work_cancelled_before_it_started_is_not_run(
    pool: ThreadPoolExecutor, connection: sqlite3.Connection
) -> None:
    release = threading.Event()
    ran: list[str] = []
    blocker = _run_on(pool, lambda db: release.wait(WAIT), connection)
    queued = _run_on(pool, lambda db: ran.append("queued"), connection)
    queued.cancel()
    release.set()
    assert await asyncio.wait_for(blocker, WAIT) is True
    # A job queued after the cancelled one runs, so the cancelled one had its turn.
    await asyncio.wait_for(_run_on(pool, lambda db: None, connection), WAIT)
    assert ran == []


async def test_work_cancelled_while_running_completes_once(
    pool: ThreadPoolExecutor, connection: sqlite3.Connection
) -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def work(db: sqlite3.Connection) -> int:
        started.set()
        release.wait(WAIT)
        runs.append(1)
        return 7

    future = _run_on(pool, work, connection)
    assert await asyncio.to_thread(started.wait, WAIT)
    future.cancel()
    release.set()
    await asyncio.wait_for(_run_on(pool, lambda db: None, connection), WAIT)
    await asyncio.sleep(0)  # the settle callback, already scheduled, finds it cancelled
    assert runs == [1]
    assert future.cancelled()
