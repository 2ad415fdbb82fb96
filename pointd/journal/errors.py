"""The journal's exception tree.

::

    JournalError
    ├── JournalCorrupt      the file is not a readable journal (integrity check, bad rows)
    ├── JournalTooNew       written by a newer pointd: refuse rather than guess its schema
    └── JournalWriteFailed  an append did not commit: the event is NOT journaled, so its
                            effects must not run
"""

from __future__ import annotations


class JournalError(Exception):
    """Base of every error the journal raises."""


class JournalCorrupt(JournalError):
    """The database fails its integrity check or holds undecodable rows."""


class JournalTooNew(JournalError):
    """The schema version is newer than this program knows."""


class JournalWriteFailed(JournalError):
    """A write transaction was rolled back; nothing of it is stored."""
