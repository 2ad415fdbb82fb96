"""Snapshots: a rebuild from the newest one equals a rebuild from the first event."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings

from pointd.core.events import Event, SettledSalesForgotten
from pointd.core.machine import CoreState, step
from pointd.core.policy import Policy
from pointd.core.states import Refusal, SaleState
from pointd.journal import Journal
from pointd.journal.store import SNAPSHOTS_KEPT
from tests.core.honest_sales import POLICIES, STRICT, Move, store_days
from tests.core.scenario import POLICY, STORE, T0, requested
from tests.journal.test_journal import journaled_run

# Where nothing is recorded the rebuild falls back to this; it differs from every
# recorded policy, so a rebuild that ignored the recorded ones would decide differently.
UNRECORDED = Policy(currency="BRL", collector_id="1", min_amount_cents=1,
                    max_amount_cents=10**9)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal.open(tmp_path / "journal.db")
    yield opened
    opened.close()


class Live:
    """The engine's part: step, journal, keep the state; record policies as configured."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.state = CoreState.empty(STORE)
        self.now = T0
        self.policy = POLICY
        journal.record_policy(POLICY)

    def feed(self, event: Event, gap: float = 1.0) -> None:
        self.now += gap
        result = step(self.state, event, now=self.now, policy=self.policy)
        self.journal.append(event, self.now, result.state, sale_id=result.sale_id)
        self.state = result.state

    def switch(self, policy: Policy) -> None:
        self.policy = policy
        self.journal.record_policy(policy)

    def snapshot(self) -> None:
        self.journal.write_snapshot(self.state, self.journal.last_seq())

    def play(self, moves: list[Move]) -> None:
        for move in moves:
            if move.kind == "event":
                assert move.event is not None
                self.feed(move.event, move.gap)
            elif move.kind == "forget":
                self.feed(SettledSalesForgotten(self.now + move.gap - move.age), move.gap)
            elif move.kind == "policy":
                self.switch(POLICIES[move.policy])
            else:
                self.snapshot()


@settings(max_examples=30, deadline=None)
@given(store_days(max_sales=6))
def test_rebuild_from_a_snapshot_equals_rebuild_from_scratch(moves: list[Move]) -> None:
    with tempfile.TemporaryDirectory() as directory, \
            Journal.open(Path(directory) / "journal.db") as journal:
        live = Live(journal)
        live.play(moves)
        live.snapshot()  # at the very end too: a start with nothing after the snapshot
        live.feed(requested("S9999", 1, "T1"))
        assert journal.rebuild(STORE, UNRECORDED) == live.state
        assert journal.rebuild(STORE, UNRECORDED, from_snapshot=False) == live.state


def test_rebuild_replays_only_the_events_after_the_snapshot(journal: Journal) -> None:
    live = Live(journal)
    live.feed(requested("S0001", 1, "T1"))
    # A snapshot that claims "no sales" at seq 1 proves the rebuild starts from it.
    journal.write_snapshot(CoreState.empty(STORE), 1)
    assert journal.rebuild(STORE, POLICY).sales == {}
    live.feed(requested("S0002", 2, "T2"))
    assert set(journal.rebuild(STORE, POLICY).sales) == {"S0002"}
    assert set(journal.rebuild(STORE, POLICY, from_snapshot=False).sales) == {"S0001", "S0002"}


def test_policies_recorded_before_and_after_a_snapshot_apply_to_later_events(
        journal: Journal) -> None:
    live = Live(journal)
    live.feed(requested("S0001", 1, "T1", amount=2590))
    live.switch(STRICT)  # recorded before the snapshot, in force for the events after it
    live.feed(requested("S0002", 2, "T2", amount=2590))
    live.snapshot()
    live.feed(requested("S0003", 3, "T3", amount=2590))
    live.switch(POLICY)  # recorded after the snapshot
    live.feed(requested("S0004", 5, "T4", amount=2590))
    live.switch(STRICT)
    live.feed(requested("S0005", 4, "T5", amount=2590))

    rebuilt = journal.rebuild(STORE, UNRECORDED)
    assert rebuilt == live.state
    refusals = {sale_id: rebuilt.sales[sale_id].refusal for sale_id in rebuilt.sales}
    assert refusals == {"S0001": None, "S0002": Refusal.AMOUNT_OUT_OF_RANGE,
                        "S0003": Refusal.AMOUNT_OUT_OF_RANGE, "S0004": None,
                        "S0005": Refusal.AMOUNT_OUT_OF_RANGE}


def test_only_the_newest_snapshots_are_kept(journal: Journal) -> None:
    live = Live(journal)
    for number in range(SNAPSHOTS_KEPT + 2):
        live.feed(requested(f"S{number:04d}", number + 1, f"T{number}"))
        live.snapshot()
    seqs = [info.seq for info in journal.snapshots()]
    assert seqs == list(range(SNAPSHOTS_KEPT + 2, 2, -1))
    newest = journal.snapshots()[0]
    assert newest.at == live.now
    assert newest.size > 0


def corrupt(journal: Journal, seq: int, text: str) -> None:
    db = sqlite3.connect(journal.path)
    db.execute("UPDATE snapshots SET json = ? WHERE seq = ?", (text, seq))
    db.commit()
    db.close()


@pytest.mark.parametrize("damage", ["{", "[]", '{"format": "pointd-core-state/9"}',
                                    "snapshot of another store", "past the last event"])
def test_an_unusable_snapshot_falls_back_to_an_older_one_or_the_events(
        journal: Journal, damage: str) -> None:
    live = Live(journal)
    live.feed(requested("S0001", 1, "T1"))
    live.snapshot()
    live.feed(requested("S0002", 2, "T2"))
    live.snapshot()
    live.feed(requested("S0003", 3, "T3"))
    if damage == "snapshot of another store":
        journal._db.execute("UPDATE snapshots SET store_id = 'another' WHERE seq = 2")
    elif damage == "past the last event":
        journal._db.execute("UPDATE snapshots SET seq = 99 WHERE seq = 2")
    else:
        corrupt(journal, 2, damage)
    assert journal.rebuild(STORE, POLICY) == live.state
    for info in journal.snapshots():
        corrupt(journal, info.seq, "{")
    assert journal.rebuild(STORE, POLICY) == live.state


def test_a_snapshot_index_naming_a_missing_sale_is_refused(journal: Journal) -> None:
    live = Live(journal)
    live.feed(requested("S0001", 1, "T1"))
    live.snapshot()
    text = live.state.to_json().replace('"lanes":[[1,"S0001"]]', '"lanes":[[1,"S0404"]]')
    assert "S0404" in text
    corrupt(journal, 1, text)
    assert journal.rebuild(STORE, POLICY) == live.state  # replayed from the events instead


@pytest.mark.parametrize("seq", [-1, 2, True, 1.0, "1"])
def test_a_snapshot_at_an_impossible_seq_is_refused(journal: Journal, seq: object) -> None:
    live = Live(journal)
    live.feed(requested("S0001", 1, "T1"))
    with pytest.raises(ValueError, match="seq"):
        journal.write_snapshot(live.state, seq)  # type: ignore[arg-type]
    assert journal.snapshots() == []


def test_a_snapshot_survives_reopening_and_keeps_the_forgotten_state(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal.open(path) as journal:
        live = Live(journal)
        journaled_run(journal, [requested("S0001", 1, "T1")], start=T0)
        live.state = journal.rebuild(STORE, POLICY)
        live.now = T0 + 10
        live.feed(requested("S0002", 2, "T2", amount=50))  # refused: final at once
        live.feed(SettledSalesForgotten(live.now + 1), gap=2)
        live.snapshot()
    with Journal.open(path) as journal:
        rebuilt = journal.rebuild(STORE, POLICY)
        assert set(rebuilt.sales) == {"S0001"}
        assert rebuilt.forgotten_through == "S0002"
        assert rebuilt.sales["S0001"].state is SaleState.CREATING
        assert rebuilt == journal.rebuild(STORE, POLICY, from_snapshot=False)
        # The projection still lists the forgotten sale for views and exports.
        assert {row.sale_id for row in journal.sales()} == {"S0001", "S0002"}
