"""The daemon's write-ahead journal on SQLite: append-only events, projections, replay."""

from pointd.journal.errors import JournalCorrupt, JournalError, JournalTooNew, JournalWriteFailed
from pointd.journal.store import AuditEntry, Journal, SaleRow, SnapshotInfo, TimelineEntry

__all__ = [
    "AuditEntry",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalTooNew",
    "JournalWriteFailed",
    "SaleRow",
    "SnapshotInfo",
    "TimelineEntry",
]
