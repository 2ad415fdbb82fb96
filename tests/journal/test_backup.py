"""The journal backup: a whole, sound copy while it is written, and a check that sees damage."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from pointd.control.cli import _journal_problem
from pointd.journal.backup import backup_journal, describe_backup
from pointd.journal.errors import JournalError
from pointd.journal.store import Journal


def _writer(path: Path, stop: threading.Event) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        number = 0
        while not stop.is_set() and number < 100_000:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO events (at, kind, sale_id, json) VALUES (?, 'X', ?, '{}')",
                       (float(number), f"S{number}"))
            seq = db.execute("SELECT MAX(seq) FROM events").fetchone()[0]
            db.execute(
                "INSERT INTO sales (sale_id, lane, correlation_id, state, amount_cents, "
                "terminal_id, attempt, requested_at, updated_at, last_seq, detail) "
                "VALUES (?, 1, ?, 'open', 100, 'T', 1, 0, 0, ?, '')",
                (f"S{number}", f"c{number}", seq))
            db.execute("COMMIT")
            number += 1
    finally:
        db.close()


def test_a_backup_taken_while_writing_is_one_consistent_journal(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite3"
    Journal.open(journal).close()
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(journal, stop))
    writer.start()
    try:
        copies = [backup_journal(journal, tmp_path / f"copy-{n}.sqlite3") for n in range(5)]
    finally:
        stop.set()
        writer.join()
    for info in copies:
        again = describe_backup(info.path)
        assert (again.sales, again.last_seq, again.sha256) == (info.sales, info.last_seq,
                                                               info.sha256)
        # Every sale written is there with its event: one transaction boundary, not two.
        assert info.sales == info.last_seq
        assert not Path(f"{info.path}-wal").exists()


def test_a_damaged_copy_fails_both_checks(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite3"
    Journal.open(journal).close()
    info = backup_journal(journal, tmp_path / "copy.sqlite3")
    data = bytearray(info.path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the header's tail and the first page's cells
    info.path.write_bytes(bytes(data))
    with pytest.raises(JournalError):
        describe_backup(info.path)
    assert _journal_problem(str(info.path)) is not None
