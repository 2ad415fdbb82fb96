"""Every older schema version migrates to the latest without losing a row."""

from __future__ import annotations

import sqlite3
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
