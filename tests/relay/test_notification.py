"""Reading notifications: every seed shape, the lenient JSON repair, and totality on any input.

The time each read costs on hostile bodies is checked in tests/security/test_intake_cost.py.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pointd.relay.notification import (
    LENIENT_LIMIT,
    MAX_REPAIRS,
    Kind,
    Parse,
    classify,
    intent_key,
    payment_key,
    read_body,
    signed_id_candidates,
)
from tests.relay.harness import REF_A, seed, with_reference

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_valid_json_reads_as_it_is(value: Any) -> None:
    assert read_body(json.dumps(value).encode()) == (Parse.JSON, value)


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=1, max_value=4))
def test_repair_removes_leading_zeros_outside_strings(number: int, zeros: int) -> None:
    text = f'{{"caller_id": {"0" * zeros}{number}, "s": "0{number}", "n": -0{number}}}'
    assert read_body(text.encode()) == (
        Parse.LENIENT,
        {"caller_id": number, "s": f"0{number}", "n": -number},
    )


def test_repair_is_bounded_in_count_and_size() -> None:
    numbers = ", ".join(f'"n{i}": 0{i + 1}' for i in range(MAX_REPAIRS))
    assert read_body(f"{{{numbers}}}".encode())[0] == Parse.LENIENT
    one_more = ", ".join(f'"n{i}": 0{i + 1}' for i in range(MAX_REPAIRS + 1))
    assert read_body(f"{{{one_more}}}".encode())[0] == Parse.UNPARSEABLE
    padding = " " * LENIENT_LIMIT
    assert read_body(f'{{"caller_id": 09876543{padding}}}'.encode())[0] == Parse.UNPARSEABLE


def test_the_ipn_fraud_fragment_reads_with_its_braces_restored() -> None:
    parse, document = read_body(seed("003_fraud_alert_fragment.txt"))
    assert parse == Parse.LENIENT
    assert document == {
        "description": ".....",
        "merchant_order": 4945357007,
        "payment_id": 23064274473,
    }


def test_signed_id_candidates_are_the_first_id_members_without_parsing() -> None:
    body = seed("000_intent_finished_mla.json")  # not JSON: "caller_id": 09876543
    assert signed_id_candidates(body) == ("abcdef123-8ab5-4139-9aa3-abcd123", "123456789")
    assert signed_id_candidates(b'{"data": {"id": 5}, "id" : "x"}') == ("5", "x")
    assert signed_id_candidates(b'"id": "a\\u0041"') == ()  # escapes are never an id reading
    many = b", ".join(b'"id": %d' % n for n in range(20))
    assert len(signed_id_candidates(many)) == 4
    late = b" " * 9000 + b'"id": "late"'
    assert signed_id_candidates(late) == ()


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
    assert fraud.signable == (
        ("data.payment_id", "58980959081"),
        ("data.merchant_order", "249940988000"),
        ("id", "58980959081"),
    )
    chargeback = classify(seed("004_chargebacks.json"), {})
    assert chargeback.asks == payment_key("81034165129")
    card = classify(seed("004_card_updated.json"), {})
    assert (card.topic, card.asks, card.store) == ("automatic-payments", None, None)
    fragment = classify(seed("003_fraud_alert_fragment.txt"), {})
    assert fragment.parse == Parse.LENIENT
    assert fragment.quarantined
    ipn_fraud = classify(
        seed("003_fraud_alert_fragment.txt"), {"topic": "delivery_cancellation", "id": "1"}
    )
    assert (ipn_fraud.kind, ipn_fraud.topic, ipn_fraud.asks) == (
        Kind.IPN,
        "delivery_cancellation",
        payment_key("23064274473"),
    )
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
