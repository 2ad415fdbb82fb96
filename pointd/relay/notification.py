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
  order id is the intent id), so a later one without a reference still finds the store.

Mercado Pago's own examples are not JSON (``"caller_id": 09876543``). A body that fails
strict JSON is read once more with leading zeros removed from numbers, only to find ids
for routing and signature checking; it stays quarantined for operators to see, and its
raw bytes are what the store receives.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pointd.core.reference import store_of

# Topics whose resource is a payment, and the data field that names it.
PAYMENT_ID_FIELDS: dict[str, str] = {
    "payment": "id",
    "stop_delivery_op_wh": "payment_id",
    "topic_chargebacks_wh": "payment_id",
    "topic_claims_integration_wh": "payment_id",
}
INTENT_TOPICS = frozenset({"point_integration_wh", "point_integration_ipn"})
ORDER_TOPIC = "order"

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_LEADING_ZEROS = re.compile(r"(?<![\w.])(-?)0+(\d)")


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
    LENIENT = "lenient"  # only after removing leading zeros from numbers
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
    # The id of the resource the body is about (an intent's id, a webhook's data.id or, for
    # payment-level alerts without one, data.payment_id): a signature must name this id.
    resource_id: str | None = None

    @property
    def quarantined(self) -> bool:
        """A non-empty body that is not strict JSON: kept and shown, never dropped."""
        return self.parse in {Parse.LENIENT, Parse.UNPARSEABLE}


def payment_key(payment_id: str) -> str:
    """The route key of a payment id."""
    return f"payment:{payment_id}"


def intent_key(intent_id: str) -> str:
    """The route key of a payment intent id."""
    return f"intent:{intent_id}"


def remove_leading_zeros(text: str) -> str:
    """Rewrite number literals such as ``09876543`` outside JSON strings as ``9876543``."""
    pieces: list[str] = []
    position = 0
    for match in _JSON_STRING.finditer(text):
        pieces.append(_LEADING_ZEROS.sub(r"\1\2", text[position : match.start()]))
        pieces.append(match.group())
        position = match.end()
    pieces.append(_LEADING_ZEROS.sub(r"\1\2", text[position:]))
    return "".join(pieces)


def read_body(body: bytes) -> tuple[Parse, Any]:
    """Parse a body strictly, then leniently; never raises."""
    if not body.strip():
        return Parse.EMPTY, None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Parse.UNPARSEABLE, None
    try:
        return Parse.JSON, json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return Parse.LENIENT, json.loads(remove_leading_zeros(text))
    except (ValueError, RecursionError):
        return Parse.UNPARSEABLE, None


def _text(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int):
        text = str(value)
        return text if 0 < len(text) <= 200 else None
    return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def classify(body: bytes, query: dict[str, str]) -> Classified:
    """Read a notification's body and query; total over any input."""
    parse, document = read_body(body)
    data = _dict(document)
    body_id = _text(data.get("id"))
    if "topic" in query and "data.id" not in query and "type" not in query:
        return _classify_ipn(parse, body_id, query)
    if isinstance(data.get("payout"), dict):
        store = store_of(_text(data.get("external_reference")) or "")
        return Classified(Kind.PAYOUT, parse, "payouts", body_id, store, None, ())
    if "state" in data and "type" not in data:
        return _classify_intent(parse, data, body_id)
    topic = _text(data.get("type")) or query.get("type")
    if topic is not None:
        return _classify_webhook(parse, data, body_id, topic, query)
    return Classified(Kind.UNKNOWN, parse, None, body_id, None, None, ())


def _classify_ipn(parse: Parse, body_id: str | None, query: dict[str, str]) -> Classified:
    topic, resource = query.get("topic"), _text(query.get("id"))
    asks = None
    if resource is not None and topic == "payment":
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
        resource_id=body_id,
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
            teaches = (asks,)
    resource_id = _text(inner.get("id")) or _text(inner.get("payment_id"))
    return Classified(
        Kind.WEBHOOK, parse, topic, body_id, store, asks, teaches, resource_id=resource_id
    )
