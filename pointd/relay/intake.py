"""Admitting one Mercado Pago notification: the relay's intake checks, in their order, as pure code.

Theory of operation. Anyone on the internet can post to the intake, so every check is
cheap and bounded and the body is parsed only after its signature has been decided. The
service reads the request (the body within ``intake.body_limit``), calls these functions,
and does the durable write; everything here is a function of the request, the policy and
the time. The order (docs/relay.md, "Order of checks"):

1. ``read_query`` / ``read_headers``: a repeated parameter, an empty, long or unprintable
   id or request id → 400, a query string over ``MAX_QUERY_LENGTH`` → 414;
2. (service) the size: ``Content-Length``, then the bytes as they arrive, against
   ``intake.body_limit``, or ``UNSIGNED_BODY_LIMIT`` when the request can only be unsigned
   (``unsigned_before_reading``) → 413;
3. the signature, from the body's first ``ID_SCAN_LIMIT`` bytes at most (the service reads
   no more before it is decided): the ``x-signature`` header's shape and its ``ts``
   window; then the MAC over each id reading: the query's ``data.id`` and the first
   ``"id"`` members of that prefix, found by a scan that builds nothing → 401. IPN is never
   checked: Mercado Pago cannot sign it (seed 003);
4. an unsigned body (IPN, or any webhook while ``intake.signature_required`` is off) larger
   than ``UNSIGNED_BODY_LIMIT`` → 413: only Mercado Pago, holding the secret, may make the
   relay read, parse and store a large body;
5. the body is parsed and classified (linear and bounded: pointd.relay.notification);
6. a signed body must be about the id its signature covers: a body id must be the
   top-level ``id``, and the signed id one of the fields the topic allows → 401. The field
   that matched is recorded with the event.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from pointd.cloud.signature import (
    IdSource,
    SignatureInvalid,
    Verified,
    checked_header,
    match,
)
from pointd.relay.errors import RequestRefused
from pointd.relay.notification import Classified, classify, is_ipn, signed_id_candidates
from pointd.relay.storage import Incoming

MAX_QUERY_LENGTH = 2048
MAX_HEADER_VALUE = 256
# Every Mercado Pago notification is well under 1 KiB; an unsigned one, which anyone can
# send, is stored (and parsed) only up to this size.
UNSIGNED_BODY_LIMIT = 16384
UNSIGNED_TOO_LARGE = f"an unsigned body may be at most {UNSIGNED_BODY_LIMIT} bytes"
# Headers that may carry credentials are never stored; x-signature is a MAC, not a secret.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
SIGNIFICANT_QUERY = ("data.id", "type", "topic", "id")
_BODY_READINGS = frozenset({IdSource.BODY, IdSource.BODY_LOWER})


@dataclass(frozen=True, slots=True)
class IntakePolicy:
    """What admission needs from the relay's settings."""

    secret: str | None
    signature_required: bool
    window_seconds: float | None
    stores: frozenset[str]


def _printable(value: str) -> bool:
    # For ASCII text, isprintable() is exactly the range " " to "~".
    return value.isascii() and value.isprintable()


def read_query(raw: bytes) -> dict[str, str]:
    """The query string as a mapping; refuse repeats and unusable ids."""
    if len(raw) > MAX_QUERY_LENGTH:
        raise RequestRefused(414, "query string too long")
    query: dict[str, str] = {}
    if not raw:
        return query
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if key in query:
            raise RequestRefused(400, f"query parameter {key[:40]!r} is repeated")
        if key in SIGNIFICANT_QUERY and (
            not value or len(value) > MAX_HEADER_VALUE or not _printable(value)
        ):
            raise RequestRefused(400, f"query parameter {key!r} is empty or not printable")
        query[key] = value
    return query


def read_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers to check and keep (the last of a repeated one wins), credentials dropped."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        if name in SECRET_HEADERS:
            continue
        headers[name] = raw_value.decode("latin-1")
    request_id = headers.get("x-request-id")
    if request_id is not None and (
        not request_id or len(request_id) > MAX_HEADER_VALUE or not _printable(request_id)
    ):
        raise RequestRefused(400, "x-request-id is empty, too long or not printable")
    return headers


def unsigned_before_reading(
    query: dict[str, str], headers: dict[str, str], policy: IntakePolicy
) -> bool:
    """Whether the request can only end up unsigned, so its body is capped at
    UNSIGNED_BODY_LIMIT before it is read."""
    if is_ipn(query) or policy.secret is None:
        return True
    return "x-signature" not in headers and not policy.signature_required


def decide_signature(
    query: dict[str, str], headers: dict[str, str], body: bytes, now: float, policy: IntakePolicy
) -> Verified | None:
    """The signature's verdict, before the body is parsed: None for unsigned (kept only
    when allowed), RequestRefused(401) when a required signature fails. Only the body's
    first ID_SCAN_LIMIT bytes are looked at, so a prefix of that length is enough."""
    if is_ipn(query) or policy.secret is None:
        return None
    value = headers.get("x-signature")
    if value is None and not policy.signature_required:
        return None
    try:
        header = checked_header(value, now=now, window_seconds=policy.window_seconds)
        return match(
            policy.secret,
            header,
            request_id=headers.get("x-request-id"),
            query_data_id=query.get("data.id"),
            body_ids=signed_id_candidates(body),
        )
    except SignatureInvalid as exc:
        if policy.signature_required:
            raise RequestRefused(401, exc.reason) from None
        return None


def signed_field(classified: Classified, verified: Verified) -> str | None:
    """The body field the signed id names; RequestRefused(401) when the body is about
    another resource than the signature covers.

    The signature covers an id, not the body: without this check a captured signature for
    payment 111 could carry a body about payment 222 (or another store's intent) and the
    relay would route, and teach routes, by the body.
    """
    signed_id = verified.data_id
    if signed_id is None:  # the manifest had no id part: nothing to hold the body to
        return None
    if verified.id_source in _BODY_READINGS and (
        classified.body_id is None or classified.body_id.lower() != signed_id.lower()
    ):
        raise RequestRefused(401, "x-signature names an id that is not the body's own")
    if not classified.signable:
        return None
    field = classified.signed_field(signed_id)
    if field is None:
        raise RequestRefused(401, "x-signature names another resource than the body")
    return field


def admit(
    query: dict[str, str],
    headers: dict[str, str],
    body: bytes,
    now: float,
    policy: IntakePolicy,
    *,
    verified: Verified | None,
) -> Incoming:
    """The notification to store, or RequestRefused: steps 4 to 6 of the module's order,
    once ``decide_signature`` has given its verdict on the body's first bytes."""
    if verified is None and len(body) > UNSIGNED_BODY_LIMIT:
        raise RequestRefused(413, UNSIGNED_TOO_LARGE)
    classified = classify(body, query)
    field = signed_field(classified, verified) if verified is not None else None
    signed = verified is not None
    significant = "".join(f"{key}={query.get(key, '')}\n" for key in SIGNIFICANT_QUERY)
    return Incoming(
        received_at=now,
        # Only a signed notification may claim its request id for deduplication: an
        # unsigned one (IPN) reusing a request id must not make the signed webhook that
        # carries it look like a duplicate. The header itself is kept either way.
        request_id=headers.get("x-request-id") if signed else None,
        content_key=hashlib.sha256(significant.encode() + body).hexdigest(),
        kind=classified.kind,
        topic=classified.topic,
        parse=classified.parse,
        signed=signed,
        id_source=str(verified.id_source) if verified is not None else None,
        signed_field=field,
        store=classified.store if classified.store in policy.stores else None,
        asks=classified.asks,
        teaches=classified.teaches,
        query=query,
        headers=headers,
        body=body,
    )
