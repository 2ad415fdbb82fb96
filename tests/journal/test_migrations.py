"""Every older schema version migrates to the latest without losing a row."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from pointd.core.events import (
    CreateOutcomeUnknown,
    Event,
    HandoverConfirmed,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    event_sale_id,
)
from pointd.core.machine import step
from pointd.core.states import SaleState
from pointd.journal import Journal
from pointd.journal.schema import LATEST_VERSION, MIGRATIONS
from tests.core.scenario import POLICY, STORE, requested, verified


def build_v1(path: Path) -> None:
    """A journal as pointd with schema 1 left it: one event, its projection, a cursor."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN; {MIGRATIONS[0]} PRAGMA user_version = 1; COMMIT;")
    db.execute("INSERT INTO events (at, kind, sale_id, json) VALUES (?, ?, ?, ?)",
               (1700000000.0, "SaleRequested", "S1", requested().to_json()))
    db.execute(
        "INSERT INTO sales (sale_id, lane, correlation_id, state, refusal, amount_cents, "
        "terminal_id, attempt, intent_id, payment_id, requested_at, updated_at, last_seq) "
        "VALUES ('S1', 3, 'c-S1', 'creating', NULL, 1500, 'PAX_A910__SMARTPOS1', 1, NULL, "
        "NULL, 1700000000.0, 1700000000.0, 1)")
    db.execute("INSERT INTO relay_cursor (id, cursor) VALUES (1, 'cursor-7')")
    db.execute("INSERT INTO seen_notifications (key, seq) VALUES ('n-1', 1)")
    db.close()


def test_v1_database_migrates_to_latest(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    build_v1(path)
    with Journal.open(path) as journal:
        assert journal._db.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        assert journal.relay_cursor() == "cursor-7"
        assert journal.notification_seen("n-1")
        (row,) = journal.sales()
        assert (row.sale_id, row.state.value, row.detail) == ("S1", "creating", "")
        state = journal.rebuild(STORE, POLICY)
        assert state.sales["S1"].state.value == "creating"
        journal.record_audit(uid=0, method="override", args={}, outcome="ok", now=1.0)
        journal.record_policy(POLICY)
        assert journal.integrity_problems() == []
    with Journal.open(path) as journal:  # opening the latest again changes nothing
        assert journal.last_seq() == 1


def test_fresh_database_equals_a_migrated_one(tmp_path: Path) -> None:
    build_v1(tmp_path / "old.db")
    Journal.open(tmp_path / "old.db").close()
    Journal.open(tmp_path / "new.db").close()

    def schema(path: Path) -> list[tuple[str, str]]:
        db = sqlite3.connect(path)
        rows = db.execute("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                          "ORDER BY name").fetchall()
        db.close()
        return rows

    assert schema(tmp_path / "old.db") == schema(tmp_path / "new.db")


def build_v2(path: Path) -> None:
    """A journal as pointd with schema 2 left it: events, dedupe keys without dates."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN; {MIGRATIONS[0]} {MIGRATIONS[1]} PRAGMA user_version = 2; COMMIT;")
    for seq, at in ((1, 1700000000.0), (2, 1700000500.5)):
        db.execute("INSERT INTO events (seq, at, kind, sale_id, json) VALUES (?, ?, ?, ?, ?)",
                   (seq, at, "SaleRequested", f"S{seq}",
                    requested(f"S{seq}", lane=seq).to_json()))
    db.execute("INSERT INTO policies (from_seq, json) VALUES (1, ?)",
               (json.dumps(POLICY.as_dict(), sort_keys=True),))
    db.execute("INSERT INTO audit (at, uid, method, args, outcome) "
               "VALUES (1700000001.0, 0, 'override', '{}', 'ok')")
    db.executemany("INSERT INTO seen_notifications (key, seq) VALUES (?, ?)",
                   [("n-1", 1), ("n-2", 2), ("n-unjournaled", None), ("n-lost-seq", 99)])
    db.close()


def test_v2_keys_get_their_event_time_or_the_migration_time(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    build_v2(path)
    started = time.time()
    with Journal.open(path) as journal:
        finished = time.time()
        assert journal._db.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        dates = dict(journal._db.execute("SELECT key, seen_at FROM seen_notifications"))
        assert dates["n-1"] == 1700000000.0
        assert dates["n-2"] == 1700000500.5
        for key in ("n-unjournaled", "n-lost-seq"):
            assert started - 1 <= dates[key] <= finished + 1
        # The dates are usable at once: prune takes exactly the keys older than asked.
        assert journal.prune(1700000100.0) == 1
        assert not journal.notification_seen("n-1")
        assert journal.notification_seen("n-unjournaled")
        assert journal.snapshots() == []
        state = journal.rebuild(STORE, POLICY)
        assert set(state.sales) == {"S1", "S2"}
        journal.write_snapshot(state, journal.last_seq())
        assert journal.rebuild(STORE, POLICY) == state
        assert len(journal.audit_log()) == 1
        assert journal.integrity_problems() == []


def build_v3_with_relayed_bodies(path: Path) -> None:
    """A journal as pointd with schema 3 left it: relayed intent bodies journaled as events.

    That daemon took a notification's FINISHED (with its payment id) as the intent's state,
    adopted a not-yet-known intent from one, and answered CANCELED, ERROR or ABANDONED from
    one with a fetch only. Three lanes, one story each.
    """
    n = ObservationSource.NOTIFICATION
    paid, canceled, adopted = "S1", "S2", "S3"
    events: list[Event] = [
        requested(paid, lane=1, terminal="T1"),
        IntentCreated(paid, 1, "I1"),
        IntentObserved("I1", "ON_TERMINAL", None, None, n, "pd1_loja-centro_1_S1_1"),
        IntentObserved("I1", "FINISHED", "P1", "approved", n, "pd1_loja-centro_1_S1_1"),
        verified(payment_id="P1"),
        HandoverConfirmed(paid),
        requested(canceled, lane=2, terminal="T2"),
        IntentCreated(canceled, 1, "I2"),
        IntentObserved("I2", "CANCELED", None, None, n, "pd1_loja-centro_2_S2_1"),
        requested(adopted, lane=4, terminal="T4"),
        CreateOutcomeUnknown(adopted, 1, "read timeout"),
        IntentObserved("I3", "ABANDONED", None, None, n, "pd1_loja-centro_4_S3_1"),
    ]
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        f"BEGIN; {MIGRATIONS[0]} {MIGRATIONS[1]} {MIGRATIONS[2]} PRAGMA user_version = 3; COMMIT;")
    routed = {"I1": paid, "I2": canceled, "I3": adopted, "P1": paid}
    for seq, event in enumerate(events, start=1):
        sale_id = event_sale_id(event) or routed[getattr(event, "intent_id", None)
                                                 or getattr(event, "payment_id", "")]
        db.execute("INSERT INTO events (seq, at, kind, sale_id, json) VALUES (?, ?, ?, ?, ?)",
                   (seq, 1700000000.0 + seq, type(event).__name__, sale_id, event.to_json()))
    db.execute("INSERT INTO policies (from_seq, json) VALUES (1, ?)",
               (json.dumps(POLICY.as_dict(), sort_keys=True),))
    db.close()


def test_v3_relayed_bodies_replay_as_that_daemon_decided(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    build_v3_with_relayed_bodies(path)
    with Journal.open(path) as journal:
        state = journal.rebuild(STORE, POLICY)
        paid, canceled, adopted = (state.sales[s] for s in ("S1", "S2", "S3"))
        # The old daemon verified the payment the notification named and handed over.
        assert (paid.state, paid.approved_payment_id) == (SaleState.HANDED_OVER, "P1")
        # It only fetched on CANCELED: the sale was still open at the last event.
        assert (canceled.state, canceled.intent_state) == (SaleState.OPEN, "OPEN")
        # It adopted the intent the notification carried the attempt's reference for.
        assert (adopted.state, adopted.intent_id) == (SaleState.OPEN, "I3")
        # Timelines show what was journaled, not how replay reads it.
        assert [e.event.source for e in journal.timeline("S1")
                if isinstance(e.event, IntentObserved)] == [ObservationSource.NOTIFICATION] * 2
        # From schema 4 on, a notification observation is no fact, live or replayed.
        late = IntentObserved("I2", "CANCELED", None, None, ObservationSource.NOTIFICATION,
                              "pd1_loja-centro_2_S2_1")
        result = step(state, late, now=1700000100.0, policy=POLICY)
        assert result.rejection is not None
        journal.append(late, 1700000100.0, result.state, sale_id=result.sale_id)
        assert journal.rebuild(STORE, POLICY).sales["S2"].state is SaleState.OPEN
        assert journal.rebuild(STORE, POLICY, from_snapshot=False) == journal.rebuild(
            STORE, POLICY)


def test_a_fresh_journal_has_no_events_to_read_the_old_way(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "new.db") as journal:
        through = journal._db.execute(
            "SELECT through_seq FROM event_upgrades WHERE name = 'notification_observations'"
        ).fetchone()
        assert through == (0,)


def test_v4_events_keep_no_state_and_new_ones_record_their_sales(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    build_v3_with_relayed_bodies(path)
    with Journal.open(path) as journal:
        old = journal.timeline("S1")
        assert old
        assert all(entry.state is None for entry in old)
        state = journal.rebuild(STORE, POLICY)
        late = IntentObserved("I2", "CANCELED", None, None, ObservationSource.POLL,
                              "pd1_loja-centro_2_S2_1")
        result = step(state, late, now=1700000100.0, policy=POLICY)
        journal.append(late, 1700000100.0, result.state, sale_id=result.sale_id)
        newest = journal.timeline("S2")[-1]
        assert newest.state is result.state.sales["S2"].state
