"""A consistent copy of the journal while the daemon runs: SQLite's online backup.

Theory of operation: the copy is made through a connection of its own, with SQLite's
backup API in one step, so it reads one snapshot of the database (in WAL mode a reader
sees the last committed transaction and never blocks the daemon's writes). The copy is
written under a temporary name, switched to a single self-contained file (rollback
journal, no ``-wal``), checked with ``PRAGMA integrity_check``, fsynced and only then
renamed into place, so a file with the final name is always a whole, sound journal.
Restoring it is copying it over the journal of a stopped daemon (docs/operations.md,
"Back up and restore the journal").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pointd.journal.errors import JournalError

# Seconds the backup's read may wait for a lock (a checkpoint in progress).
LOCK_TIMEOUT = 30.0
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What a backup holds: its file, size, hash, schema, sales and newest event."""

    path: Path
    size: int
    sha256: str
    schema: int
    sales: int
    last_seq: int


def backup_journal(source: Path, target: Path) -> BackupInfo:
    """Copy the journal at ``source`` to ``target`` consistently; JournalError if it fails.

    Blocking (it reads the whole file): run it in a worker thread from the event loop.
    """
    partial = target.with_name(f".{target.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    try:
        # Not mode=ro: a read-only connection cannot use the daemon's -shm file reliably.
        reader = sqlite3.connect(source, timeout=LOCK_TIMEOUT)
        try:
            copy = sqlite3.connect(partial, isolation_level=None)
            try:
                reader.backup(copy)
                copy.execute("PRAGMA journal_mode = DELETE")
                problems = [str(row[0]) for row in copy.execute("PRAGMA integrity_check")]
                if problems != ["ok"]:
                    raise JournalError(f"the backup of {source} fails its check: {problems[:5]}")
                info = _describe(copy, target)
            finally:
                copy.close()
        finally:
            reader.close()
        os.chmod(partial, 0o600)
        _fsync(partial)
        os.replace(partial, target)
        _fsync(target.parent)
    except sqlite3.Error as exc:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise JournalError(f"cannot back up the journal {source}: {exc}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    size, digest = file_digest(target)
    return BackupInfo(target, size, digest, *info)


def describe_backup(path: Path) -> BackupInfo:
    """Check a backup file (or any journal) and say what it holds; JournalError if unsound."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            problems = [str(row[0]) for row in db.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise JournalError(f"{path} fails its check: {problems[:5]}")
            schema, sales, last_seq = _describe(db, path)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise JournalError(f"{path} is not a readable journal: {exc}") from None
    size, digest = file_digest(path)
    return BackupInfo(path, size, digest, schema, sales, last_seq)


def file_digest(path: Path) -> tuple[int, str]:
    """The file's size and sha256."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _describe(db: sqlite3.Connection, path: Path) -> tuple[int, int, int]:
    try:
        schema = int(db.execute("PRAGMA user_version").fetchone()[0])
        sales = int(db.execute("SELECT COUNT(*) FROM sales").fetchone()[0])
        last_seq = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
    except sqlite3.Error as exc:
        raise JournalError(f"{path} is not a pointd journal: {exc}") from None
    return schema, sales, last_seq


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
