"""The journal's schema as ordered migration steps; step n takes user_version n to n+1.

A released step is never edited: a change to the schema is a new step appended here, and
the migration test builds a database at every older version and migrates it to the latest.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 0 → 1: the append-only event log, the per-sale projection, the relay cursor and the
    # notification dedupe keys.
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        sale_id TEXT,
        json TEXT NOT NULL
    );
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TABLE sales (
        sale_id TEXT PRIMARY KEY,
        lane INTEGER NOT NULL,
        correlation_id TEXT NOT NULL,
        state TEXT NOT NULL,
        refusal TEXT,
        amount_cents INTEGER NOT NULL,
        terminal_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        intent_id TEXT,
        payment_id TEXT,
        requested_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_seq INTEGER NOT NULL
    );
    CREATE TABLE relay_cursor (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cursor TEXT NOT NULL
    );
    CREATE TABLE seen_notifications (
        key TEXT PRIMARY KEY,
        seq INTEGER
    );
    """,
    # 1 → 2: supervisor audit trail, the policy in force per event range (replay must decide
    # as the live daemon did), the technician-facing detail, and indexes for the views.
    """
    ALTER TABLE sales ADD COLUMN detail TEXT NOT NULL DEFAULT '';
    CREATE INDEX events_by_sale ON events (sale_id, seq);
    CREATE INDEX sales_by_state ON sales (state, updated_at);
    CREATE INDEX sales_by_lane ON sales (lane, updated_at);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        uid INTEGER NOT NULL,
        method TEXT NOT NULL,
        args TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE TABLE policies (
        from_seq INTEGER PRIMARY KEY,
        json TEXT NOT NULL
    );
    """,
    # 2 → 3: when each notification dedupe key was recorded, so old keys can be pruned
    # (existing keys get their event's time, or the migration's when they have none), and
    # core-state snapshots, so a restart replays only the events after the newest one.
    """
    ALTER TABLE seen_notifications ADD COLUMN seen_at REAL NOT NULL DEFAULT 0;
    UPDATE seen_notifications SET seen_at = COALESCE(
        (SELECT at FROM events WHERE events.seq = seen_notifications.seq),
        (julianday('now') - 2440587.5) * 86400.0);
    CREATE INDEX seen_notifications_by_age ON seen_notifications (seen_at);
    CREATE TABLE snapshots (
        seq INTEGER PRIMARY KEY,
        store_id TEXT NOT NULL,
        json TEXT NOT NULL
    );
    """,
    # 3 → 4: from here on a relayed notification is never a core event (the daemon only
    # fetches what it names); the events journaled before this step keep the meaning the
    # daemon gave them then, and ``pointd.journal.upgrades`` reads them that way. The row
    # says up to which seq that is (0 for a journal created with this schema).
    """
    CREATE TABLE event_upgrades (
        name TEXT PRIMARY KEY,
        through_seq INTEGER NOT NULL
    );
    INSERT INTO event_upgrades (name, through_seq)
        SELECT 'notification_observations', COALESCE(MAX(seq), 0) FROM events;
    """,
    # 4 → 5: the state each event left its sale in, for the timeline a technician reads
    # (``pointctl sale``); events journaled before this step have none (NULL).
    """
    ALTER TABLE events ADD COLUMN state TEXT;
    """,
)

LATEST_VERSION = len(MIGRATIONS)
