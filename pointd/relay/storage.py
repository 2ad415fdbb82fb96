"""The storage port every relay backend implements, and the records that cross it.

Theory of operation. A notification is written once into ``events`` (deduplicated on
Mercado Pago's ``x-request-id`` and on a hash of its id and body). If it can be routed, the
same transaction appends it to its store's stream in ``deliveries`` at the store's next
*position*; the position is the store's cursor. Positions are handed out under a per-store
row lock (``store_heads``), so a reader that has seen position N can never later find a
committed N-1: a cursor is safe to advance even with several replicas writing. Route keys
(payment and intent ids) learned from routed notifications live in ``routes``. An unrouted
event waits in ``events`` with the key it ``asks`` for: the commit that first teaches that
key (a later notification, or an operator's assignment) routes it too, in the same
transaction, and what it teaches in turn. A fraud alert still waiting after
``delivery.unroutable_alert_after`` is marked ``alerted_at`` once, for the alert.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pointd.relay.notification import FRAUD_TOPICS

MAX_READ_LIMIT = 500
# ``json.dumps(..., separators=(",", ":"), sort_keys=True)`` builds an encoder per call; each
# notification encodes two mappings on the writer's thread.
_MAPPING_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


@dataclass(frozen=True, slots=True)
class Incoming:
    """One notification (or canary) on its way into storage."""

    received_at: float
    request_id: str | None
    content_key: str
    kind: str
    topic: str | None
    parse: str
    signed: bool
    id_source: str | None
    signed_field: str | None  # the body field the signed id named (docs/relay.md)
    store: str | None
    asks: str | None
    teaches: tuple[str, ...]
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What became of one Incoming: its event id, whether it was a duplicate, its store, and
    the waiting events its route keys routed to that store."""

    event_id: int
    duplicate: bool
    store: str | None
    position: int | None
    rerouted: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back, with its position in a store's stream when it has one."""

    event_id: int
    position: int | None
    store: str | None
    received_at: float
    kind: str
    topic: str | None
    parse: str
    signed: bool
    id_source: str | None
    signed_field: str | None
    asks: str | None  # the route key an unrouted event waits for
    alerted_at: float | None
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def to_json(self) -> dict[str, Any]:
        """The wire form used by the store and admin APIs."""
        return {
            "id": self.event_id,
            "cursor": self.position,
            "store": self.store,
            "received_at": self.received_at,
            "kind": self.kind,
            "topic": self.topic,
            "parse": self.parse,
            "signed": self.signed,
            "id_source": self.id_source,
            "signed_field": self.signed_field,
            "asks": self.asks,
            "alerted_at": self.alerted_at,
            "query": self.query,
            "headers": self.headers,
            "body_b64": base64.b64encode(self.body).decode("ascii"),
        }


def committed_event(item: Incoming, result: WriteResult) -> StoredEvent:
    """The event a commit just appended to a store's stream, as storage will read it back
    (the stream pushes it without reading it)."""
    return StoredEvent(
        event_id=result.event_id,
        position=result.position,
        store=result.store,
        received_at=item.received_at,
        kind=item.kind,
        topic=item.topic,
        parse=item.parse,
        signed=item.signed,
        id_source=item.id_source,
        signed_field=item.signed_field,
        asks=item.asks,
        alerted_at=None,
        query=item.query,
        headers=item.headers,
        body=item.body,
    )


@dataclass(frozen=True, slots=True)
class StoreStream:
    """The state of one store's stream, for lag metrics."""

    store: str
    head: int
    acked: int
    oldest_unacked_at: float | None


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts for the admin API and /metrics."""

    events: int
    unrouted: int
    quarantined: int
    alerted: int  # fraud alerts still unrouted after delivery.unroutable_alert_after
    streams: tuple[StoreStream, ...] = field(default_factory=tuple)


class Storage(Protocol):
    """The operations the relay service needs from a backend."""

    async def open(self) -> None:
        """Connect and create the schema if needed."""

    async def close(self) -> None:
        """Release connections."""

    async def write_batch(self, items: Sequence[Incoming]) -> list[WriteResult]:
        """Write items in one durable commit; raise NotStored if nothing was committed."""

    async def read(self, store: str, after: int, limit: int) -> list[StoredEvent]:
        """Events of a store's stream with position > after, oldest first."""

    async def ack(self, store: str, position: int, now: float) -> int:
        """Record the store's acknowledged position (never moves back); return it."""

    async def acked(self, store: str) -> int:
        """The store's acknowledged position (0 when none)."""

    async def assign(self, event_id: int, store: str, now: float) -> WriteResult | None:
        """Append an existing event to a store's stream; None when there is no such event."""

    async def list_events(self, which: str, after: int, limit: int) -> list[StoredEvent]:
        """``unrouted``, ``quarantined`` or ``alerted`` events with id > after, oldest first."""

    async def route_waiting(self, now: float) -> list[tuple[int, str]]:
        """Route every waiting event whose route key is known by now (a safety net behind
        the re-routing each commit does); return (event id, store) of each."""

    async def alert_unroutable(self, before: float, now: float) -> list[StoredEvent]:
        """Mark fraud alerts received before ``before`` and still unrouted as alerted at
        ``now``; return those this call marked (each is marked once, by one replica)."""

    async def stats(self) -> Stats:
        """Counts and per-store stream state."""

    async def purge(self, before: float) -> int:
        """Delete events, deliveries and routes older than ``before``; return events deleted."""

    async def check_writable(self) -> None:
        """Raise StorageError unless a write transaction can commit now."""

    def on_remote_write(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(store)`` when another replica appended to a store's stream."""


class RouteCascade:
    """The bookkeeping of routing waiting events, shared by both backends.

    Starting from the route keys a commit taught, each round looks up the events waiting for
    the ``pending`` keys; every event routed (``route``) may teach keys of its own, which
    wait for the next round (``advance``). ``moved`` says, for each event routed, the taught
    key it goes back to, so that the commit can say which of its items routed it.
    """

    def __init__(self, taught: dict[str, str]) -> None:
        self.pending = dict(taught)
        self.learned: dict[str, str] = {}
        self.moved: list[tuple[int, str]] = []
        self._root = {key: key for key in taught}
        self._known = dict(taught)

    def route(self, event_id: int, asks: str, teaches: str) -> str:
        """Record one waiting event routed by ``asks``; return its store."""
        store = self.pending[asks]
        self.moved.append((event_id, self._root[asks]))
        for key in json.loads(teaches):
            if key not in self._known:
                self._known[key] = self.learned[key] = store
                self._root[key] = self._root[asks]
        return store

    def advance(self) -> None:
        """Start the next round with the keys the last one learned."""
        self.pending, self.learned = self.learned, {}


def encode_mapping(mapping: dict[str, str]) -> str:
    """A query or header mapping as stored text."""
    return _MAPPING_JSON(mapping)


def decode_mapping(text: str) -> dict[str, str]:
    """The inverse of encode_mapping."""
    value = json.loads(text)
    return {str(k): str(v) for k, v in value.items()}


# The columns event_from_row reads, in its order, from the events table aliased ``e``.
EVENT_COLUMNS = (
    "e.id, e.received_at, e.kind, e.topic, e.parse, e.signed, e.id_source, e.signed_field, "
    "e.asks, e.alerted_at, e.query, e.headers, e.body"
)
# Waiting events whose route is known, as (key, store): what route_waiting routes.
KNOWN_WAITING = (
    "SELECT DISTINCT e.asks, r.store FROM events e JOIN routes r ON r.key = e.asks "
    "WHERE e.store IS NULL AND e.kind <> 'canary'"
)
# The admin listings, as conditions on the events table aliased ``e`` (both backends).
FRAUD_TOPICS_SQL = "({})".format(", ".join(f"'{topic}'" for topic in sorted(FRAUD_TOPICS)))
UNROUTED_CONDITION = "e.store IS NULL AND e.kind <> 'canary'"
LISTINGS = {
    "unrouted": UNROUTED_CONDITION,
    "quarantined": "e.parse IN ('lenient', 'unparseable')",
    "alerted": f"{UNROUTED_CONDITION} AND e.alerted_at IS NOT NULL",
}


def event_from_row(row: Sequence[Any], position: int | None, store: str | None) -> StoredEvent:
    """A stored event from a row of EVENT_COLUMNS (both backends share the table layout)."""
    return StoredEvent(
        event_id=int(row[0]),
        position=position,
        store=store,
        received_at=float(row[1]),
        kind=str(row[2]),
        topic=row[3],
        parse=str(row[4]),
        signed=bool(row[5]),
        id_source=row[6],
        signed_field=row[7],
        asks=row[8],
        alerted_at=None if row[9] is None else float(row[9]),
        query=decode_mapping(row[10]),
        headers=decode_mapping(row[11]),
        body=bytes(row[12]),
    )
