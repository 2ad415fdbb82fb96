"""Reading a Mercado Pago notification: what it is, which ids it names, and where it belongs.

Theory of operation. Mercado Pago sends several shapes to one URL (docs/relay.md lists
them): the bare Point payment intent, the generic webhook (``type``/``action``/``data``),
payout messages, and legacy IPN (``?topic=&id=``, empty or opaque body). The relay never
trusts a notification to decide anything; it only needs to know

- the body's top-level ``id``, because Point intents are signed with it;
- the store, read from an ``external_reference`` in the pointd format;
- route keys: a payment or intent id that a routed notification *teaches* (an intent
  names its payment), and the key a later notification *asks* for (a fraud alert names
  a payment id, a ``point_integration_wh`` wrapper names an intent id). An Orders-API
  ``order`` webhook carries its ``data.external_reference``, so it routes like an intent;
  it also asks for, and teaches, its order id under the intent key (to the daemon an
  order id is the intent id), so a later one without a reference still finds the store;
- which body fields a signature's id may name (``signable``).

Every function here is linear in the body and bounded, because anyone on the internet can
post a body: the intake decides the signature with ``signed_id_candidates`` (a scan of the
body's first ``ID_SCAN_LIMIT`` bytes that builds nothing) before ``classify`` parses it,
and only bodies up to ``PARSE_LIMIT`` are parsed at all. Mercado Pago's own examples are
not JSON (``"caller_id": 09876543``; a fraud alert printed without its braces). A body
of at most ``LENIENT_LIMIT`` bytes that fails strict JSON is read again with at most
``MAX_REPAIRS`` such quirks repaired, each at the place where the strict parser stopped;
it stays quarantined for operators to see, and its raw bytes are what the store receives.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pointd.core.reference import store_of

# Topics whose resource is a payment, and the data field that names it.
PAYMENT_ID_FIELDS: dict[str, str] = {
    "payment": "id",
    "stop_delivery_op_wh": "payment_id",
    "delivery_cancellation": "payment_id",
    "topic_chargebacks_wh": "payment_id",
    "topic_claims_integration_wh": "payment_id",
}
INTENT_TOPICS = frozenset({"point_integration_wh", "point_integration_ipn"})
ORDER_TOPIC = "order"
# Fraud alerts: "stop_delivery_op_wh" as a webhook (seed 004), "delivery_cancellation" as
# IPN (seed 003). Mercado Pago never retries them, so one left unroutable raises an alert.
FRAUD_TOPICS = frozenset({"stop_delivery_op_wh", "delivery_cancellation"})
# The body fields whose value a signature's id may be, by topic, in order of preference.
# Mercado Pago signs the query's data.id, "the event's id"; a fraud alert's body has no
# data.id, and which of its ids the query carries is not documented (docs/relay.md,
# "Signatures"), so each id the alert names is accepted and the one that matched recorded.
SIGNABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "stop_delivery_op_wh": ("data.id", "data.payment_id", "data.merchant_order", "id"),
}
DEFAULT_SIGNABLE = ("data.id",)
PAYMENT_ALERT_SIGNABLE = ("data.payment_id",)

# A body's Point-intent id is sought in this many first bytes (an intent notification is
# about 400 bytes and its id precedes its payment), so the scan costs the same at any
# intake.body_limit.
ID_SCAN_LIMIT = 8192
MAX_SIGNED_ID_CANDIDATES = 4
_ID_MEMBER = re.compile(rb'"id"[ \t\r\n]*:[ \t\r\n]*(?:"([^"\\]{1,200})"|(-?[0-9]{1,40}))')
# Every Mercado Pago notification is well under 1 KiB. A larger body is stored and
# delivered as it came, but read only up to PARSE_LIMIT (above it: unparseable, kept for an
# operator), so that even a signed body costs the loop at most a few milliseconds to read.
PARSE_LIMIT = 65536
# Only small bodies are read leniently, with at most this many repairs: each repair costs
# one more strict parse.
LENIENT_LIMIT = 8192
MAX_REPAIRS = 8


class Kind(StrEnum):
    """The shape a notification arrived in."""

    INTENT = "intent"  # a bare Point payment intent (seeds 000/001)
    WEBHOOK = "webhook"  # generic type/action/data webhook
    PAYOUT = "payout"  # payout transaction message (seed 002)
    IPN = "ipn"  # legacy ?topic=&id= (seed 003): unverifiable, a hint only
    CANARY = "canary"  # the relay's own liveness probe for one store
    UNKNOWN = "unknown"


class Parse(StrEnum):
    """How well the body read as JSON."""

    JSON = "json"
    LENIENT = "lenient"  # only after repairing Mercado Pago's own quirks
    EMPTY = "empty"
    UNPARSEABLE = "unparseable"


@dataclass(frozen=True, slots=True)
class Classified:
    """What the relay learned from one notification, for signature checks and routing."""

    kind: Kind
    parse: Parse
    topic: str | None
    body_id: str | None
    store: str | None
    asks: str | None  # route key that could name this notification's store
    teaches: tuple[str, ...]  # route keys this notification binds to its store
    # (field, value) of each body field a signature's id may name, most specific first;
    # empty when the body names no resource, and then any signed id is accepted.
    signable: tuple[tuple[str, str], ...] = ()

    @property
    def quarantined(self) -> bool:
        """A non-empty body that is not strict JSON: kept and shown, never dropped."""
        return self.parse in {Parse.LENIENT, Parse.UNPARSEABLE}

    def signed_field(self, signed_id: str) -> str | None:
        """The first signable field whose value is the signed id (ids compare without case:
        the query-lower reading exists for alphanumeric ids); None when none is."""
        wanted = signed_id.lower()
        return next((name for name, value in self.signable if value.lower() == wanted), None)


def payment_key(payment_id: str) -> str:
    """The route key of a payment id."""
    return f"payment:{payment_id}"


def intent_key(intent_id: str) -> str:
    """The route key of a payment intent id."""
    return f"intent:{intent_id}"


def signed_id_candidates(body: bytes) -> tuple[str, ...]:
    """The values of the first few ``"id"`` members in the body's first ID_SCAN_LIMIT bytes.

    These are the body-id readings a signature is checked against, found without parsing
    the body. A nested id may be among them; the intake accepts a signature over a body id
    only when, once the body is parsed, it is the top-level ``id``.
    """
    found: list[str] = []
    for match in _ID_MEMBER.finditer(body, 0, ID_SCAN_LIMIT):
        value = (match.group(1) or match.group(2)).decode("utf-8", "replace")
        if value not in found:
            found.append(value)
            if len(found) == MAX_SIGNED_ID_CANDIDATES:
                break
    return tuple(found)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep Python's cyclic garbage collector off while a body is read and classified.

    A body of many small arrays makes the parser allocate tens of thousands of containers
    at once, which can set off a full collection of the whole process heap in the middle
    of a request (over 100 ms with a heap of two million objects). The parse tree is freed
    by reference counting before the collector is back on, so no collection is owed.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_body(body: bytes) -> tuple[Parse, Any]:
    """Parse a body strictly, then (small bodies only) leniently; never raises."""
    with _collector_paused():
        return _read_body(body)


def _read_body(body: bytes) -> tuple[Parse, Any]:
    if not body.strip():
        return Parse.EMPTY, None
    if len(body) > PARSE_LIMIT:
        return Parse.UNPARSEABLE, None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Parse.UNPARSEABLE, None
    try:
        return Parse.JSON, json.loads(text)
    except (ValueError, RecursionError):
        pass
    if len(body) > LENIENT_LIMIT:
        return Parse.UNPARSEABLE, None
    return _read_leniently(text)


def _read_leniently(text: str) -> tuple[Parse, Any]:
    # Seed 003 prints a fraud alert's members without the braces around them.
    candidate = "{" + text + "}" if text.lstrip().startswith('"') else text
    for _attempt in range(MAX_REPAIRS + 1):
        try:
            return Parse.LENIENT, json.loads(candidate)
        except json.JSONDecodeError as exc:
            repaired = _without_leading_zeros(candidate, exc.pos)
            if repaired is None:
                break
            candidate = repaired
        except (ValueError, RecursionError):
            break
    return Parse.UNPARSEABLE, None


def _without_leading_zeros(text: str, stopped_at: int) -> str | None:
    """The text with the leading zeros of the number the strict parser stopped in removed,
    or None when it did not stop in such a number.

    JSON reads ``09876543`` as the number 0 followed by a stray digit, so the parser stops
    just after a ``0`` with a digit at ``stopped_at``.
    """
    if not 0 < stopped_at < len(text) or text[stopped_at - 1] != "0":
        return None
    if not text[stopped_at].isdigit():
        return None
    end = stopped_at
    while end < len(text) and text[end] == "0":
        end += 1
    if end == len(text) or not text[end].isdigit():
        end -= 1  # the number was all zeros: keep one
    return text[: stopped_at - 1] + text[end:]


def _text(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int):
        text = str(value)
        return text if 0 < len(text) <= 200 else None
    return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def is_ipn(query: dict[str, str]) -> bool:
    """Legacy IPN names its resource as ``?topic=&id=``, never with data.id or type."""
    return "topic" in query and "data.id" not in query and "type" not in query


def classify(body: bytes, query: dict[str, str]) -> Classified:
    """Read a notification's body and query; total over any input."""
    with _collector_paused():
        return _classify(body, query)


def _classify(body: bytes, query: dict[str, str]) -> Classified:
    parse, document = _read_body(body)
    data = _dict(document)
    body_id = _text(data.get("id"))
    if is_ipn(query):
        return _classify_ipn(parse, data, body_id, query)
    if isinstance(data.get("payout"), dict):
        store = store_of(_text(data.get("external_reference")) or "")
        return Classified(Kind.PAYOUT, parse, "payouts", body_id, store, None, ())
    if "state" in data and "type" not in data:
        return _classify_intent(parse, data, body_id)
    topic = _text(data.get("type")) or query.get("type")
    if topic is not None:
        return _classify_webhook(parse, data, body_id, topic, query)
    return Classified(Kind.UNKNOWN, parse, None, body_id, None, None, ())


def _classify_ipn(
    parse: Parse, data: dict[str, Any], body_id: str | None, query: dict[str, str]
) -> Classified:
    topic, resource = query.get("topic"), _text(query.get("id"))
    asks = None
    if topic in FRAUD_TOPICS:
        # Seed 003: the body names "the payment id to cancel". What the query's id names
        # for this topic is not documented; it is read as a payment id only without one.
        payment_id = _text(data.get("payment_id")) or resource
        asks = payment_key(payment_id) if payment_id is not None else None
    elif resource is not None and topic == "payment":
        asks = payment_key(resource)
    elif resource is not None and topic in INTENT_TOPICS:
        asks = intent_key(resource)
    return Classified(Kind.IPN, parse, topic, body_id, None, asks, ())


def _classify_intent(parse: Parse, data: dict[str, Any], body_id: str | None) -> Classified:
    reference = _text(_dict(data.get("additional_info")).get("external_reference"))
    store = store_of(reference) if reference else None
    teaches: list[str] = []
    if body_id is not None:
        teaches.append(intent_key(body_id))
    payment_id = _text(_dict(data.get("payment")).get("id"))
    if payment_id is not None:
        teaches.append(payment_key(payment_id))
    asks = intent_key(body_id) if body_id is not None else None
    return Classified(
        Kind.INTENT,
        parse,
        "point_integration_wh",
        body_id,
        store,
        asks,
        tuple(teaches),
        signable=(("id", body_id),) if body_id is not None else (),
    )


def _classify_webhook(
    parse: Parse, data: dict[str, Any], body_id: str | None, topic: str, query: dict[str, str]
) -> Classified:
    inner = _dict(data.get("data"))
    reference = _text(inner.get("external_reference")) or _text(data.get("external_reference"))
    store = store_of(reference) if reference else None
    asks = None
    teaches: tuple[str, ...] = ()
    field_name = PAYMENT_ID_FIELDS.get(topic)
    if field_name is not None:
        payment_id = _text(inner.get(field_name))
        if payment_id is None and field_name == "id":
            payment_id = query.get("data.id")
        if payment_id is not None:
            asks = payment_key(payment_id)
    elif topic in INTENT_TOPICS:
        intent_id = _text(inner.get("id")) or query.get("data.id")
        if intent_id is not None:
            asks = intent_key(intent_id)
    elif topic == ORDER_TOPIC:
        order_id = _text(inner.get("id")) or query.get("data.id")
        if order_id is not None:
            asks = intent_key(order_id)
            teaches = (asks, *_order_payment_keys(inner))
    return Classified(
        Kind.WEBHOOK,
        parse,
        topic,
        body_id,
        store,
        asks,
        teaches,
        signable=_signable(topic, data, inner),
    )


def _order_payment_keys(inner: dict[str, Any]) -> tuple[str, ...]:
    """Route keys of the /v1/payments ids an order names, so that a fraud alert naming one
    finds the order's store.

    The order webhook carries each payment's id as ``transactions.payments[].reference.id``
    (tests/fixtures/mercadopago/real/order_webhook_processed.json); the Orders API's own
    answer spells it ``reference_id``. Both are read: a notification that uses either
    teaches the route, and neither moves money (the daemon still asks the API).
    """
    payments = _dict(inner.get("transactions")).get("payments")
    if not isinstance(payments, list):
        return ()
    keys: list[str] = []
    for payment in payments[:8]:
        entry = _dict(payment)
        payment_id = _text(_dict(entry.get("reference")).get("id")) or _text(
            entry.get("reference_id"))
        if payment_id is not None:
            keys.append(payment_key(payment_id))
    return tuple(keys)


def _signable(
    topic: str, data: dict[str, Any], inner: dict[str, Any]
) -> tuple[tuple[str, str], ...]:
    """The (field, value) pairs a signature's id may name, for a webhook of this topic."""
    fields = SIGNABLE_FIELDS.get(topic)
    if fields is None:
        fields = DEFAULT_SIGNABLE if "id" in inner else PAYMENT_ALERT_SIGNABLE
    values = {
        "id": _text(data.get("id")),
        "data.id": _text(inner.get("id")),
        "data.payment_id": _text(inner.get("payment_id")),
        "data.merchant_order": _text(inner.get("merchant_order")),
    }
    return tuple((name, value) for name in fields if (value := values[name]) is not None)
