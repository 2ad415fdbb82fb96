"""Journal.prune: old notification dedupe keys go; nothing else is ever deleted."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pointd.app.jobs import DaemonJobs
from pointd.core.events import SettledSalesForgotten
from pointd.core.machine import CoreState, step
from pointd.journal import Journal, JournalWriteFailed
from tests.app_jobs.conftest import FakeEngine
from tests.core.scenario import POLICY, STORE, T0, requested
from tests.journal.test_journal import journaled_run
from tests.support.clock import ManualClock
from tests.support.cloud import FakeCloud

DAY = 86400.0


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal.open(tmp_path / "journal.db")
    yield opened
    opened.close()


def counts(journal: Journal) -> dict[str, int]:
    tables = ("events", "sales", "audit", "policies", "snapshots", "seen_notifications")
    return {table: journal._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in tables}


def seen_at(journal: Journal, key: str) -> float:
    return float(journal._db.execute(
        "SELECT seen_at FROM seen_notifications WHERE key = ?", (key,)).fetchone()[0])


def filled(journal: Journal) -> CoreState:
    """Events, a sale, policy, audit, a snapshot and keys of several ages."""
    journal.record_policy(POLICY)
    state = journaled_run(journal, [requested("S0001", 1, "T1")], start=T0)
    result = step(state, SettledSalesForgotten(T0), now=T0 + 10 * DAY, policy=POLICY)
    journal.append(SettledSalesForgotten(T0), T0 + 10 * DAY, result.state,
                   notification_key="with-event")
    journal.record_audit(uid=0, method="override", args={}, outcome="ok", now=T0)
    journal.write_snapshot(result.state, journal.last_seq())
    journal.mark_notification_seen("old", at=T0 + DAY)
    journal.mark_notification_seen("by-seq", 1)
    journal.mark_notification_seen("new", at=T0 + 20 * DAY)
    return result.state


def test_keys_are_dated_by_their_event_or_when_they_were_marked(journal: Journal) -> None:
    filled(journal)
    assert seen_at(journal, "with-event") == T0 + 10 * DAY  # the appended event's time
    assert seen_at(journal, "by-seq") == T0  # event 1's time
    assert seen_at(journal, "old") == T0 + DAY
    before = time.time()
    journal.mark_notification_seen("undated")
    assert before <= seen_at(journal, "undated") <= time.time()


def test_prune_deletes_only_older_dedupe_keys(journal: Journal) -> None:
    state = filled(journal)
    kept = counts(journal)
    assert journal.prune(T0 + 5 * DAY) == 2  # "by-seq" (T0) and "old" (T0 + 1 day)
    assert not journal.notification_seen("by-seq")
    assert not journal.notification_seen("old")
    assert journal.notification_seen("with-event")
    assert journal.notification_seen("new")
    after = counts(journal)
    assert after == {**kept, "seen_notifications": kept["seen_notifications"] - 2}
    assert journal.prune(T0 + 5 * DAY) == 0  # idempotent
    assert journal.rebuild(STORE, POLICY) == state
    assert journal.prune(T0 + 100 * DAY) == 2
    assert counts(journal) == {**kept, "seen_notifications": 0}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "yesterday", None, True])
def test_prune_refuses_a_time_that_is_not_one(journal: Journal, bad: object) -> None:
    filled(journal)
    with pytest.raises(ValueError, match="finite time"):
        journal.prune(bad)  # type: ignore[arg-type]
    assert counts(journal)["seen_notifications"] == 4


def test_prune_never_deletes_events_even_if_asked_directly(journal: Journal) -> None:
    filled(journal)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        journal._db.execute("DELETE FROM events")


def test_a_failed_prune_deletes_nothing(journal: Journal) -> None:
    filled(journal)
    journal._db.execute("CREATE TRIGGER sabotage BEFORE DELETE ON seen_notifications "
                        "BEGIN SELECT RAISE(ABORT, 'disk said no'); END")
    with pytest.raises(JournalWriteFailed, match="disk said no"):
        journal.prune(T0 + 100 * DAY)
    assert counts(journal)["seen_notifications"] == 4


async def test_the_retention_job_prunes_the_journal(journal: Journal) -> None:
    state = filled(journal)
    now = T0 + 10 * DAY + 400 * DAY
    jobs = DaemonJobs(engine=FakeEngine(state, journal), cloud=FakeCloud(),
                      wall_clock=ManualClock(now), retention=journal, retention_days=400)
    assert await jobs.prune_journal() == {"pruned": 2}  # older than 400 days before now
    assert journal.notification_seen("with-event")
