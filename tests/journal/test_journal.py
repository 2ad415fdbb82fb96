"""The journal on real SQLite files: durability settings, atomic appends, replay, views."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointd.core.events import (
    Event,
    IntentObserved,
    ObservationSource,
    SaleRequested,
)
from pointd.core.machine import CoreState, step
from pointd.core.policy import Policy
from pointd.core.states import SaleState
from pointd.journal import (
    Journal,
    JournalCorrupt,
    JournalTooNew,
    JournalWriteFailed,
)
from pointd.journal.schema import LATEST_VERSION
from tests.core.scenario import (
    INTENT,
    PATHS,
    POLICY,
    REF1,
    SALE,
    SCENARIOS,
    STORE,
    T0,
    requested,
)
from tests.core.test_table import VARIANTS


def journaled_run(journal: Journal, events: list[Event] | tuple[Event, ...],
                  state: CoreState | None = None, start: float = T0,
                  policy: Policy = POLICY) -> CoreState:
    """Step and append each event as the engine does: decide, journal, then act."""
    state = state or CoreState.empty(STORE)
    for offset, event in enumerate(events):
        now = start + offset
        result = step(state, event, now=now, policy=policy)
        journal.append(event, now, result.state, sale_id=result.sale_id)
        state = result.state
    return state


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal.open(tmp_path / "journal.db")
    yield opened
    opened.close()


def test_open_uses_wal_full_sync_and_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal.open(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    db.close()
    with Journal.open(path) as journal:
        assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert journal.integrity_problems() == []


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_replay_rebuilds_the_identical_state(tmp_path: Path, scenario: str) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        live = journaled_run(journal, SCENARIOS[scenario])
    with Journal.open(path) as journal:
        assert journal.rebuild(STORE, POLICY) == live
        assert [e for _, _, e in journal.replay()] == list(SCENARIOS[scenario])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(VARIANTS), max_size=25))
def test_replay_of_arbitrary_sequences_is_exact(events: list[Event]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "j.db"
        with Journal.open(path) as journal:
            live = journaled_run(journal, [requested(), *events])
        with Journal.open(path) as journal:
            assert journal.rebuild(STORE, POLICY) == live
            projected = {row.sale_id: row for row in journal.sales()}
            for sale in live.sales.values():
                row = projected[sale.sale_id]
                assert (row.state, row.payment_id, row.intent_id, row.attempt) == (
                    sale.state, sale.payment_id, sale.intent_id, sale.attempt)


def test_projection_and_timeline(journal: Journal) -> None:
    state = journaled_run(journal, PATHS[SaleState.HANDED_OVER])
    journaled_run(journal, [requested("S2", lane=4, terminal="T2", amount=0)], state,
                  start=T0 + 100)
    (row,) = journal.sales(states=[SaleState.HANDED_OVER])
    assert (row.sale_id, row.lane, row.amount_cents, row.payment_id) == (SALE, 3, 1500,
                                                                          "11123456789")
    assert row.detail
    (refused,) = journal.sales(states=["failed"])  # type: ignore[list-item]
    assert (refused.sale_id, refused.refusal) == ("S2", "amount_out_of_range")
    assert [r.sale_id for r in journal.sales()] == ["S2", SALE]
    assert [r.sale_id for r in journal.sales(lane=3)] == [SALE]
    assert [r.sale_id for r in journal.sales(since=T0 + 50)] == ["S2"]
    assert len(journal.sales(limit=1)) == 1
    timeline = journal.timeline(SALE)
    # IntentObserved names no sale: the core's routing decides its timeline.
    assert [t.kind for t in timeline] == [type(e).__name__ for e in PATHS[
        SaleState.HANDED_OVER]]
    assert [t.seq for t in timeline] == sorted(t.seq for t in timeline)
    assert journal.last_seq() == len(timeline) + 1


def test_events_are_append_only(journal: Journal) -> None:
    journaled_run(journal, [requested()])
    for statement in ("UPDATE events SET kind = 'x'", "DELETE FROM events"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            journal._db.execute(statement)


def test_a_failed_append_stores_nothing(journal: Journal) -> None:
    journaled_run(journal, [requested()])
    journal._db.execute(
        "CREATE TRIGGER sabotage BEFORE INSERT ON seen_notifications "
        "BEGIN SELECT RAISE(ABORT, 'disk said no'); END")
    state = journal.rebuild(STORE, POLICY)
    event = IntentObserved(INTENT, "OPEN", None, None, ObservationSource.NOTIFICATION, REF1)
    with pytest.raises(JournalWriteFailed, match="disk said no"):
        journal.append(event, T0 + 5, state, sale_id=SALE, notification_key="n-1")
    assert journal.last_seq() == 1
    assert not journal.notification_seen("n-1")
    assert not journal._db.in_transaction


def test_notification_dedupe_keys(journal: Journal) -> None:
    assert journal.mark_notification_seen("k1") is True
    assert journal.mark_notification_seen("k1") is False
    state = CoreState.empty(STORE)
    result = step(state, requested(), now=T0, policy=POLICY)
    seq = journal.append(requested(), T0, result.state, notification_key="k2")
    assert journal.notification_seen("k2")
    assert journal._db.execute("SELECT seq FROM seen_notifications WHERE key = 'k2'"
                               ).fetchone()[0] == seq
    assert not journal.notification_seen("k3")


def test_relay_cursor_and_audit_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        assert journal.relay_cursor() is None
        assert journal.record_relay_batch(["relay:1", "relay:2"], 1) == [True, True]
        assert journal.record_relay_batch(["relay:2", "relay:3"], 2) == [False, True]
        first = journal.record_audit(uid=0, method="override", args={"sale_id": SALE},
                                     outcome="ok", now=T0)
        journal.record_audit(uid=1000, method="cancel", args={"lane": 3}, outcome="refused",
                             now=T0 + 1)
    with Journal.open(path) as journal:
        assert journal.relay_cursor() == "2"
        assert journal.notification_seen("relay:3")
        newest, oldest = journal.audit_log()
        assert (oldest.id, oldest.uid, oldest.method, oldest.args) == (
            first, 0, "override", {"sale_id": SALE})
        assert (newest.method, newest.outcome) == ("cancel", "refused")
        assert len(journal.audit_log(limit=1)) == 1


def test_rebuild_decides_with_the_policy_in_force_when_journaled(tmp_path: Path) -> None:
    strict = Policy(currency="BRL", collector_id="987654321", min_amount_cents=2000,
                    max_amount_cents=7_000_000)
    path = tmp_path / "j.db"
    with Journal.open(path) as journal:
        journal.record_policy(POLICY)
        journal.record_policy(POLICY)  # unchanged: nothing new recorded
        live = journaled_run(journal, [requested()])
        journal.record_policy(strict)
        live = journaled_run(journal, [requested("S2", lane=4, terminal="T2")], live,
                             policy=strict)
        assert journal._db.execute("SELECT COUNT(*) FROM policies").fetchone()[0] == 2
    assert live.sales[SALE].state is SaleState.CREATING
    assert live.sales["S2"].state is SaleState.FAILED
    with Journal.open(path) as journal:
        # Whatever today's config says, the replay reproduces yesterday's decisions.
        assert journal.rebuild(STORE, strict) == live
        assert journal.rebuild(STORE, POLICY) == live


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    db.close()
    with pytest.raises(JournalTooNew, match="knows up to"):
        Journal.open(path)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(JournalCorrupt):
        Journal.open(path)


def test_undecodable_event_row_is_reported_with_its_seq(journal: Journal) -> None:
    journaled_run(journal, [requested()])
    journal._db.execute("INSERT INTO events (at, kind, sale_id, json) VALUES (1, 'X', NULL, "
                        "'{\"kind\": \"Nope\"}')")
    with pytest.raises(JournalCorrupt, match="event 2"):
        journal.rebuild(STORE, POLICY)


def test_a_refused_request_without_a_sale_is_still_journaled(journal: Journal) -> None:
    bad = SaleRequested("lower-case", 3, "c", 1500, "T", None)
    result = step(CoreState.empty(STORE), bad, now=T0, policy=POLICY)
    journal.append(bad, T0, result.state, sale_id=result.sale_id)
    assert journal.sales() == []
    assert [e for _, _, e in journal.replay()] == [bad]
