"""Mercado Pago's ``x-signature`` webhook signature: compute, and verify defensively.

Theory of operation. Mercado Pago signs a webhook with HMAC-SHA256, keyed by the
application's webhook secret, over the manifest::

    id:<data.id>;request-id:<x-request-id>;ts:<ts>;

where a part whose value is absent is dropped with its label and separator, and ``ts`` is
copied verbatim from the header ``x-signature: ts=<ts>,v1=<hex>``. The documentation is
ambiguous in two places (see docs/relay.md, "Signatures"):

- which id is signed: the query's ``data.id`` as received, the same lower-cased, or, for
  Point payment-intent notifications, the body's ``id``;
- the unit of ``ts``: seconds or milliseconds.

We accept a signature when any documented id candidate matches, and report which one did,
so that operators can see what real traffic uses. ``ts`` enters the HMAC verbatim; for the
replay window a value above 10**12 is read as milliseconds.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

# A 13-digit ts is milliseconds (10**12 ms is 2001-09-09; 10**12 s is year 33658).
MILLISECONDS_THRESHOLD = 10**12
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class IdSource(StrEnum):
    """Where the id that made a signature match came from."""

    QUERY = "query"  # the query's data.id exactly as received
    QUERY_LOWER = "query-lower"  # the query's data.id lower-cased
    BODY = "body"  # the body's top-level id (Point intents)
    BODY_LOWER = "body-lower"
    NONE = "none"  # no id part in the manifest


class SignatureInvalid(Exception):
    """The signature is missing, malformed, stale, or does not match."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    """The parts of an ``x-signature`` header that we use."""

    ts: str
    v1: str


@dataclass(frozen=True, slots=True)
class Verified:
    """A signature that matched, and how."""

    id_source: IdSource
    ts_seconds: float
    data_id: str | None  # the id the signature covers, as it entered the manifest


def parse_header(value: str | None) -> SignatureHeader:
    """Parse ``ts=<digits>,v1=<hex>``; raise SignatureInvalid when it is not usable."""
    if not value:
        raise SignatureInvalid("missing x-signature header")
    parts: dict[str, str] = {}
    for piece in value.split(","):
        key, sep, val = piece.partition("=")
        if sep:
            parts[key.strip().lower()] = val.strip()
    ts, v1 = parts.get("ts", ""), parts.get("v1", "")
    if not ts.isdigit() or len(ts) > 16:
        raise SignatureInvalid("x-signature has no usable ts")
    if len(v1) != 64 or not _HEX_DIGITS.issuperset(v1):
        raise SignatureInvalid("x-signature has no usable v1")
    return SignatureHeader(ts=ts, v1=v1.lower())


def ts_to_seconds(ts: str) -> float:
    """A header ts as Unix seconds, whichever unit it was sent in."""
    value = int(ts)
    return value / 1000 if value > MILLISECONDS_THRESHOLD else float(value)


def manifest(*, data_id: str | None, request_id: str | None, ts: str) -> str:
    """The signed text; absent parts are dropped with their label and separator."""
    text = ""
    if data_id:
        text += f"id:{data_id};"
    if request_id:
        text += f"request-id:{request_id};"
    return text + f"ts:{ts};"


@functools.lru_cache(maxsize=8)
def _keyed(secret: str) -> hmac.HMAC:
    """An HMAC-SHA256 already keyed with ``secret``, to copy for each message.

    The relay computes every candidate of every notification with the same secret; a copy
    of a keyed state skips OpenSSL's digest lookup and key setup, which cost more than the
    MAC of a 60-byte manifest (docs/benchmarks.md, "Relay CPU per event: the second pass").
    """
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def digest(secret: str, *, data_id: str | None, request_id: str | None, ts: str) -> str:
    """The lowercase hex HMAC-SHA256 of the manifest."""
    mac = _keyed(secret).copy()
    mac.update(manifest(data_id=data_id, request_id=request_id, ts=ts).encode())
    return mac.hexdigest()


def sign(secret: str, *, data_id: str | None, request_id: str | None, ts: str) -> str:
    """The ``x-signature`` header value Mercado Pago would send."""
    return f"ts={ts},v1={digest(secret, data_id=data_id, request_id=request_id, ts=ts)}"


def id_candidates(
    query_data_id: str | None, body_ids: Sequence[str] = ()
) -> list[tuple[IdSource, str | None]]:
    """Every documented id reading, most specific first, without repeats."""
    readings: list[tuple[IdSource, str | None]] = [
        (IdSource.QUERY, query_data_id),
        (IdSource.QUERY_LOWER, query_data_id.lower() if query_data_id else None),
    ]
    for body_id in body_ids:
        readings += [(IdSource.BODY, body_id), (IdSource.BODY_LOWER, body_id.lower())]
    candidates: list[tuple[IdSource, str | None]] = []
    seen: set[str | None] = set()
    for source, value in readings:
        if value and value not in seen:
            seen.add(value)
            candidates.append((source, value))
    if query_data_id is None:
        candidates.append((IdSource.NONE, None))
    return candidates


def checked_header(
    header_value: str | None, *, now: float, window_seconds: float | None
) -> SignatureHeader:
    """The parsed header, once its ``ts`` is within ``window_seconds`` of ``now`` (None: no
    bound); raise SignatureInvalid otherwise. Cheap: nothing about the body is needed."""
    header = parse_header(header_value)
    if window_seconds is not None and abs(now - ts_to_seconds(header.ts)) > window_seconds:
        raise SignatureInvalid("x-signature ts is outside the accepted window")
    return header


def match(
    secret: str,
    header: SignatureHeader,
    *,
    request_id: str | None,
    query_data_id: str | None,
    body_ids: Sequence[str] = (),
) -> Verified:
    """Say which id reading the header's MAC covers; raise SignatureInvalid when none does.

    ``body_ids`` are the body's id readings (a Point intent is signed with its ``id``).
    Every candidate is computed before comparing, so the time taken does not reveal
    which candidate came close.
    """
    matched: tuple[IdSource, str | None] | None = None
    for source, data_id in id_candidates(query_data_id, body_ids):
        expected = digest(secret, data_id=data_id, request_id=request_id, ts=header.ts)
        if hmac.compare_digest(expected, header.v1) and matched is None:
            matched = (source, data_id)
    if matched is None:
        raise SignatureInvalid("x-signature does not match")
    return Verified(id_source=matched[0], ts_seconds=ts_to_seconds(header.ts), data_id=matched[1])


def verify(
    secret: str,
    header_value: str | None,
    *,
    request_id: str | None,
    query_data_id: str | None,
    body_ids: Sequence[str] = (),
    now: float,
    window_seconds: float | None,
) -> Verified:
    """Check a notification's signature; raise SignatureInvalid, or say which id matched."""
    header = checked_header(header_value, now=now, window_seconds=window_seconds)
    return match(
        secret, header, request_id=request_id, query_data_id=query_data_id, body_ids=body_ids
    )
