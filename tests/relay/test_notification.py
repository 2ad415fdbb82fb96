"""Reading notifications: every seed shape, the lenient JSON repair, and totality on any input."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pointd.relay.notification import (
    Kind,
    Parse,
    classify,
    intent_key,
    payment_key,
    read_body,
    remove_leading_zeros,
)
from tests.relay.harness import REF_A, seed, with_reference

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_repair_never_changes_valid_json(value: Any) -> None:
    text = json.dumps(value)
    assert json.loads(remove_leading_zeros(text)) == value


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=1, max_value=4))
def test_repair_removes_leading_zeros_outside_strings(number: int, zeros: int) -> None:
    text = f'{{"caller_id": {"0" * zeros}{number}, "s": "0{number}"}}'
    assert json.loads(remove_leading_zeros(text)) == {"caller_id": number, "s": f"0{number}"}


@given(
    st.binary(max_size=300),
    st.dictionaries(st.sampled_from(["data.id", "type", "topic", "id", "x"]), st.text(max_size=20)),
)
def test_classify_is_total(body: bytes, query: dict[str, str]) -> None:
    classified = classify(body, query)
    assert classified.kind in set(Kind)
    assert classified.parse in set(Parse)


def test_seed_intent_reads_leniently_and_routes() -> None:
    classified = classify(with_reference(seed("000_intent_finished_mla.json"), REF_A), {})
    assert classified.kind == Kind.INTENT
    assert classified.parse == Parse.LENIENT
    assert classified.quarantined
    assert classified.store == "store-a"
    assert classified.body_id == "abcdef123-8ab5-4139-9aa3-abcd123"
    assert classified.teaches == (
        intent_key("abcdef123-8ab5-4139-9aa3-abcd123"),
        payment_key("123456789"),
    )


def test_verbatim_intent_has_no_store() -> None:
    assert classify(seed("000_intent_canceled_mlb.json"), {}).store is None


def test_seed_shapes() -> None:
    assert classify(seed("002_payout_created.json"), {}).kind == Kind.PAYOUT
    fraud = classify(seed("004_fraud_alert.json"), {})
    assert (fraud.kind, fraud.topic, fraud.asks) == (
        Kind.WEBHOOK,
        "stop_delivery_op_wh",
        payment_key("58980959081"),
    )
    chargeback = classify(seed("004_chargebacks.json"), {})
    assert chargeback.asks == payment_key("81034165129")
    card = classify(seed("004_card_updated.json"), {})
    assert (card.topic, card.asks, card.store) == ("automatic-payments", None, None)
    fragment = classify(seed("003_fraud_alert_fragment.txt"), {})
    assert fragment.parse == Parse.UNPARSEABLE
    assert fragment.quarantined
    ipn = classify(b"", {"topic": "payment", "id": "123"})
    assert (ipn.kind, ipn.parse, ipn.asks, ipn.quarantined) == (
        Kind.IPN,
        Parse.EMPTY,
        payment_key("123"),
        False,
    )
    orders = classify(
        json.dumps({"type": "order", "data": {"id": "ORD1", "external_reference": REF_A}}).encode(),
        {},
    )
    assert orders.store == "store-a"


def test_read_body_refuses_non_utf8_and_deep_nesting() -> None:
    assert read_body(b"\xff\xfe{}")[0] == Parse.UNPARSEABLE
    assert read_body(b"[" * 100_000)[0] == Parse.UNPARSEABLE
