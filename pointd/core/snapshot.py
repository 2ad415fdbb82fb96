"""The snapshot codec: a whole ``CoreState`` as one JSON document, and back, strictly.

The journal stores snapshots (``Journal.write_snapshot``) so that a start replays only the
events after the newest one; a snapshot is therefore a contract between daemon versions:
``decode(encode(state)).state == state`` for every state, and a document of an older format
still loads. Records are written with the core's one codec (``pointd.core.codec``), the
same the events use; this module adds the layout of the whole state and the checks that
the indexes are consistent, so that a damaged snapshot is refused (the journal then
replays from an older one) rather than routing events to sales that do not exist.

Formats:

- ``pointd-core-state/3`` (written): sales, the indexes, fraud alerts, overrides, the
  forgotten-id guard and the refund book.
- ``pointd-core-state/2``: no refund book (refunds were rebuilt from their events at
  every start); ``decode`` says so (``Decoded.has_refunds``) and the journal replays the
  refund events up to the snapshot.
- ``pointd-core-state/1``: also lacks ``Sale.approval_withdrawn`` (False then).

The ``requests`` index (a register's correlation ids) is derived from the sales on decode.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pointd.core import codec
from pointd.core.codec import decode_dataclass
from pointd.core.errors import StateDecodeError
from pointd.core.persistent import PersistentMap
from pointd.core.records import (
    CoreState,
    Override,
    Refund,
    RefundBook,
    Sale,
    newest_sale_per_request,
)
from pointd.core.reference import STORE_ID_PATTERN

STATE_FORMAT = "pointd-core-state/3"
# Older formats this reader accepts: fields their sales lack (and their defaults), and
# whether they hold the refund book.
_OLDER_FORMATS: Mapping[str, tuple[Mapping[str, Any], bool]] = {
    "pointd-core-state/2": ({}, False),
    "pointd-core-state/1": ({"approval_withdrawn": False}, False),
}
_FIELDS = ("format", "store_id", "forgotten_through", "sales", "lanes", "terminals",
           "intents", "payments", "fraud_alerts", "overrides")


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded snapshot, and whether its format holds the refund book."""

    state: CoreState
    has_refunds: bool


def encode_state(state: CoreState) -> dict[str, Any]:
    """The state as a JSON-able document in ``STATE_FORMAT``, in a stable order."""
    book = state.refunds
    return {
        "format": STATE_FORMAT,
        "store_id": state.store_id,
        "forgotten_through": state.forgotten_through,
        "sales": [codec.encode(state.sales[sale_id]) for sale_id in sorted(state.sales)],
        "lanes": sorted([lane, sale_id] for lane, sale_id in state.lanes.items()),
        "terminals": dict(sorted(state.terminals.items())),
        "intents": dict(sorted(state.intents.items())),
        "payments": dict(sorted(state.payments.items())),
        "fraud_alerts": sorted(state.fraud_alerts),
        "overrides": {sale_id: codec.encode(state.overrides[sale_id])
                      for sale_id in sorted(state.overrides)},
        "refunds": [codec.encode(book.refunds[refund_id]) for refund_id in sorted(book.refunds)],
        # A sale's refunds in the order they were asked (the views show them so).
        "refunds_by_sale": {sale_id: list(book.by_sale[sale_id])
                            for sale_id in sorted(book.by_sale)},
    }


def encode(state: CoreState) -> str:
    """The whole state as one JSON document (format ``STATE_FORMAT``)."""
    return json.dumps(encode_state(state), separators=(",", ":"), ensure_ascii=False)


def decode(text: str | bytes) -> Decoded:
    """Rebuild a state from ``encode`` (or an older format); raise StateDecodeError."""
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateDecodeError(f"state is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise StateDecodeError("state: expected an object")
    document_format = body.get("format")
    if document_format == STATE_FORMAT:
        sale_defaults: Mapping[str, Any] = {}
        has_refunds = True
    elif isinstance(document_format, str) and document_format in _OLDER_FORMATS:
        sale_defaults, has_refunds = _OLDER_FORMATS[document_format]
    else:
        raise StateDecodeError(f"state format {str(document_format)[:40]!r} is not "
                               f"{STATE_FORMAT}")
    expected = set(_FIELDS) | ({"refunds", "refunds_by_sale"} if has_refunds else set())
    _expect_fields(body, expected, "state")
    store_id = _text(body["store_id"], "state.store_id")
    if not STORE_ID_PATTERN.fullmatch(store_id):
        raise StateDecodeError(f"state.store_id {store_id[:40]!r} is not a store id")
    sales = _sales(body["sales"], sale_defaults)
    lanes: dict[int, str] = {}
    for index, pair in enumerate(_items(body["lanes"], "state.lanes")):
        where = f"state.lanes[{index}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise StateDecodeError(f"{where}: expected [lane, sale_id]")
        lane, sale_id = pair
        if isinstance(lane, bool) or not isinstance(lane, int):
            raise StateDecodeError(f"{where}: expected an integer lane")
        lanes[lane] = _text(sale_id, where)
    overrides = {sale_id: decode_dataclass(Override, value, f"state.overrides.{sale_id}",
                                           StateDecodeError)
                 for sale_id, value in _mapping(body["overrides"], "state.overrides").items()}
    fraud_alerts = _items(body["fraud_alerts"], "state.fraud_alerts")
    if not all(isinstance(payment, str) for payment in fraud_alerts):
        raise StateDecodeError("state.fraud_alerts: expected a list of strings")
    sales_map = PersistentMap(sales)
    state = CoreState(
        store_id=store_id,
        sales=sales_map,
        lanes=PersistentMap(lanes),
        terminals=PersistentMap(_text_mapping(body["terminals"], "state.terminals")),
        intents=PersistentMap(_text_mapping(body["intents"], "state.intents")),
        payments=PersistentMap(_text_mapping(body["payments"], "state.payments")),
        fraud_alerts=frozenset(fraud_alerts),
        overrides=PersistentMap(overrides),
        forgotten_through=_text(body["forgotten_through"], "state.forgotten_through"),
        refunds=_book(body) if has_refunds else RefundBook(),
        requests=newest_sale_per_request(sales_map),
    )
    _check_indexes(state)
    return Decoded(state, has_refunds)


def _sales(value: object, defaults: Mapping[str, Any]) -> dict[str, Sale]:
    sales: dict[str, Sale] = {}
    for index, item in enumerate(_items(value, "state.sales")):
        body = {**defaults, **item} if defaults and isinstance(item, dict) else item
        sale = decode_dataclass(Sale, body, f"state.sales[{index}]", StateDecodeError)
        if sale.sale_id in sales:
            raise StateDecodeError(f"state.sales: sale {sale.sale_id} appears twice")
        sales[sale.sale_id] = sale
    return sales


def _book(body: dict[str, Any]) -> RefundBook:
    refunds: dict[str, Refund] = {}
    for index, item in enumerate(_items(body["refunds"], "state.refunds")):
        refund = decode_dataclass(Refund, item, f"state.refunds[{index}]", StateDecodeError)
        if refund.refund_id in refunds:
            raise StateDecodeError(f"state.refunds: refund {refund.refund_id} appears twice")
        refunds[refund.refund_id] = refund
    by_sale: dict[str, tuple[str, ...]] = {}
    listed: set[str] = set()
    for sale_id, listed_ids in _mapping(body["refunds_by_sale"],
                                        "state.refunds_by_sale").items():
        where = f"state.refunds_by_sale.{sale_id}"
        ids = _items(listed_ids, where)
        for refund_id in ids:
            refund = refunds.get(refund_id) if isinstance(refund_id, str) else None
            if refund is None or refund.sale_id != sale_id or refund_id in listed:
                raise StateDecodeError(f"{where}: {str(refund_id)[:40]!r} is not one of the "
                                       "sale's refunds, or is listed twice")
            listed.add(refund_id)
        by_sale[sale_id] = tuple(ids)
    if listed != set(refunds):
        raise StateDecodeError("state.refunds_by_sale: a refund is listed under no sale")
    return RefundBook(
        refunds=PersistentMap(refunds),
        by_request=PersistentMap({r.request_key: r.refund_id for r in refunds.values()}),
        by_sale=PersistentMap(by_sale),
    )


def _check_indexes(state: CoreState) -> None:
    for name, entries in (("lanes", state.lanes), ("terminals", state.terminals),
                          ("intents", state.intents), ("payments", state.payments)):
        for key, sale_id in entries.items():
            if sale_id not in state.sales:
                raise StateDecodeError(f"state.{name}: {key} names unknown sale {sale_id}")
    for sale_id in state.overrides:
        if sale_id not in state.sales:
            raise StateDecodeError(f"state.overrides: unknown sale {sale_id}")


def _expect_fields(body: dict[str, Any], expected: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in set(body) - expected)
    missing = sorted(expected - set(body))
    if unknown:
        raise StateDecodeError(f"{where}: unknown fields {unknown[:5]}")
    if missing:
        raise StateDecodeError(f"{where}: missing fields {missing}")


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise StateDecodeError(f"{where}: expected a string")
    return value


def _items(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise StateDecodeError(f"{where}: expected a list")
    return value


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StateDecodeError(f"{where}: expected an object")
    return value


def _text_mapping(value: object, where: str) -> dict[str, str]:
    mapping = _mapping(value, where)
    if not all(isinstance(item, str) for item in mapping.values()):
        raise StateDecodeError(f"{where}: expected an object of strings")
    return mapping
