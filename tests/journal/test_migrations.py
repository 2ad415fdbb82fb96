"""Every older schema version migrates to the latest without losing a row."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from pointd.journal import Journal
from pointd.journal.schema import LATEST_VERSION, MIGRATIONS
from tests.core.scenario import POLICY, STORE, requested


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
