"""A journal written before refunds joined the core state still restores, refunds and all."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from pointd.core import snapshot
from pointd.core.policy import Policy
from pointd.core.states import RefundStatus, SaleState
from pointd.journal import Journal

FIXTURE = Path(__file__).parent.parent / "fixtures" / "journal" / "main-snapshot-v2.sqlite3"
STORE = "loja-centro"
# Not the recorded one: the rebuild must use the policy the fixture journaled.
FALLBACK = Policy(currency="BRL", collector_id="1", min_amount_cents=1, max_amount_cents=10**9)


def _copy(tmp_path: Path) -> Path:
    path = tmp_path / "journal.sqlite3"
    shutil.copyfile(FIXTURE, path)
    return path


def test_the_fixture_is_an_old_format_snapshot_without_refunds(tmp_path: Path) -> None:
    db = sqlite3.connect(_copy(tmp_path))
    ((seq, text),) = db.execute("SELECT seq, json FROM snapshots").fetchall()
    db.close()
    decoded = snapshot.decode(text)
    assert text.startswith('{"format":"pointd-core-state/2"')
    assert (seq, decoded.has_refunds, len(decoded.state.refunds.refunds)) == (17, False, 0)


def test_an_old_snapshot_restores_with_the_refunds_journaled_before_it(tmp_path: Path) -> None:
    journal = Journal.open(_copy(tmp_path))
    try:
        restored = journal.rebuild(STORE, FALLBACK)
        replayed = journal.rebuild(STORE, FALLBACK, from_snapshot=False)
    finally:
        journal.close()
    assert restored == replayed
    book = restored.refunds
    assert {r.refund_id: r.status for r in book.refunds.values()} == {
        "RFA1": RefundStatus.REFUNDED,  # settled before the snapshot
        "RFA2": RefundStatus.REFUNDED,  # unknown at the snapshot, settled after it
        "RFA3": RefundStatus.REFUSED,  # asked after it: more than was left
        "RFB1": RefundStatus.PENDING,  # on the terminal at the snapshot, still
    }
    assert book.committed_cents("01SALEA") == 900
    assert [r.refund_id for r in book.of_sale("01SALEA")] == ["RFA1", "RFA2", "RFA3"]
    assert restored.sales["01SALEC"].state is SaleState.OPEN


def test_a_restored_old_journal_snapshots_in_the_new_format_and_restores_the_same(
        tmp_path: Path) -> None:
    journal = Journal.open(_copy(tmp_path))
    try:
        restored = journal.rebuild(STORE, FALLBACK)
        journal.write_snapshot(restored, journal.last_seq())
        again = journal.rebuild(STORE, FALLBACK)
    finally:
        journal.close()
    assert again == restored
    assert snapshot.decode(restored.to_json()).has_refunds
