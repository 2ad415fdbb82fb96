"""Tolerant parsing of Mercado Pago's JSON: documented variants, extra fields, bad values."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointd.cloud.models import (
    Device,
    DevicePage,
    Integrator,
    IntentEvent,
    ModelError,
    Payment,
    PaymentIntent,
    PaymentSearchPage,
    RefundIntent,
    decimal_to_cents,
    is_final_state,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "mercadopago"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
extra_fields = st.dictionaries(
    st.text(min_size=1, max_size=12).map(lambda k: f"x_{k}"), json_values, max_size=4
)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


@pytest.mark.parametrize(
    ("name", "state", "payment_id", "payment_state", "ticket"),
    [
        ("point_wh_finished_mla.json", "FINISHED", "123456789", "approved", "39SHDKKDJ"),
        ("point_wh_finished_mlb.json", "FINISHED", "123456789", "approved", None),
        (
            "point_wh_confirmation_required_mla.json",
            "CONFIRMATION_REQUIRED",
            "123456789",
            None,
            "39SHDKKDJ",
        ),
        ("point_wh_canceled_mla.json", "CANCELED", None, None, "39SHDKKDJ"),
        ("point_wh_error_mlb.json", "ERROR", None, None, None),
    ],
)
def test_documented_notification_bodies_parse(
    name: str, state: str, payment_id: str | None, payment_state: str | None, ticket: str | None
) -> None:
    intent = PaymentIntent.from_json(load(name))
    assert intent.id == "abcdef123-8ab5-4139-9aa3-abcd123"
    assert intent.amount == 100
    assert intent.state == state
    assert intent.payment_id == payment_id
    # CONFIRMATION_REQUIRED carries "" for state and type: read as absent.
    assert intent.payment_state == payment_state
    assert intent.external_reference == "information"
    assert intent.ticket_number == ticket
    assert intent.is_final


def test_integrator_fixture_parses() -> None:
    integrator = Integrator.from_json(load("integrator_get.json"))
    assert integrator.id == "1234567890"
    assert integrator.event_channel_devices == ("email",)
    assert integrator.notification_url_enabled is True


@given(
    payment_id=st.one_of(st.integers(1, 10**15), st.integers(1, 10**15).map(str)),
    state=st.sampled_from(["FINISHED", "finished", "Finished", "on_terminal", "OPEN"]),
    extra=extra_fields,
    info_extra=extra_fields,
)
def test_intent_variants_normalise(
    payment_id: int | str, state: str, extra: dict[str, Any], info_extra: dict[str, Any]
) -> None:
    body = {
        **extra,
        "id": "abc",
        "amount": 1500,
        "state": state,
        "payment": {"id": payment_id, "installments": 1},
        "additional_info": {**info_extra, "external_reference": "pd1_s_1_A_1"},
    }
    intent = PaymentIntent.from_json(body)
    assert intent.payment_id == str(payment_id)
    assert intent.state == state.upper()
    assert intent.external_reference == "pd1_s_1_A_1"
    assert intent.device_id is None
    assert intent.description is None


@given(
    st.sampled_from([{}, {"id": ""}, {"id": "x"}, {"id": "x", "amount": "15.00"}, {"amount": 1}])
)
def test_intent_without_id_or_integer_amount_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ModelError):
        PaymentIntent.from_json(body)


def test_intent_amount_as_numeric_string_is_accepted() -> None:
    assert PaymentIntent.from_json({"id": "x", "amount": "1500"}).amount == 1500


@given(
    store_id=st.one_of(st.integers(0, 10**9), st.text(min_size=1, max_size=10)), extra=extra_fields
)
def test_device_store_id_int_or_str_becomes_str(store_id: int | str, extra: dict[str, Any]) -> None:
    device = Device.from_json(
        {
            **extra,
            "id": "PAX_A910__SMARTPOS1",
            "store_id": store_id,
            "pos_id": 4,
            "operating_mode": "pdv",
        }
    )
    assert device.store_id == str(store_id)
    assert device.pos_id == 4
    assert device.operating_mode == "PDV"
    assert device.external_pos_id is None


def test_device_page_defaults_paging_to_the_page() -> None:
    page = DevicePage.from_json({"devices": [{"id": "A__1"}, {"id": "B__2"}]})
    assert (page.total, page.offset, page.limit) == (2, 0, 2)
    with pytest.raises(ModelError):
        DevicePage.from_json({"devices": None})


@given(cents=st.integers(0, 10**11), extra=extra_fields)
def test_payment_amount_round_trips_exactly_through_float(
    cents: int, extra: dict[str, Any]
) -> None:
    payment = Payment.from_json(
        {**extra, "id": 5, "status": "approved", "transaction_amount": cents / 100}
    )
    assert payment.amount_cents == cents
    assert payment.transaction_amount * 100 == cents
    assert payment.id == "5"


@pytest.mark.parametrize("value", [15.001, "abc", None, True, float("inf"), [15]])
def test_payment_amount_with_sub_cent_digits_or_junk_is_refused(value: object) -> None:
    with pytest.raises(ModelError):
        decimal_to_cents(value)


def test_payment_fields() -> None:
    payment = Payment.from_json(
        {
            "id": 50000000001,
            "status": "APPROVED",
            "status_detail": "accredited",
            "transaction_amount": 15.1,
            "currency_id": "ARS",
            "collector_id": 123,
            "external_reference": "pd1_s_1_A_1",
            "live_mode": False,
            "card": {"last_four_digits": "0604", "cardholder": {"name": "X"}},
            "refunds": [{"id": 9, "amount": 15.1}, {"id": 10, "amount": "junk"}],
        }
    )
    assert payment.status == "approved"
    assert payment.transaction_amount == Decimal("15.1")
    assert payment.amount_cents == 1510
    assert payment.collector_id == "123"
    assert payment.last_four_digits == "0604"
    assert [r.amount_cents for r in payment.refunds] == [1510, None]


def test_payment_without_card_or_refunds() -> None:
    payment = Payment.from_json({"id": "7", "status": "rejected", "transaction_amount": 1})
    assert payment.last_four_digits is None
    assert payment.refunds == ()
    assert payment.currency_id is None


def test_search_page_and_events_and_refund_intent() -> None:
    page = PaymentSearchPage.from_json(
        {
            "paging": {"total": 3, "limit": 1, "offset": 0},
            "results": [{"id": 1, "status": "approved", "transaction_amount": 2}],
        }
    )
    assert page.total == 3
    assert len(page.results) == 1
    event = IntentEvent.from_json(
        {"status": "finished", "created_on": "2021-09-03T20:59:10Z"}, payment_intent_id="i"
    )
    assert (event.payment_intent_id, event.status) == ("i", "FINISHED")
    refund = RefundIntent.from_json(
        {"id": "r", "payment_id": 123, "state": "open", "device_id": "A__1"}
    )
    assert (refund.payment_id, refund.state) == ("123", "OPEN")


@pytest.mark.parametrize(
    ("state", "final"),
    [
        ("FINISHED", True),
        ("confirmation_required", True),
        ("abandoned", True),
        ("OPEN", False),
        ("processed", False),
    ],
)
def test_final_states_compare_case_insensitively(state: str, final: bool) -> None:
    assert is_final_state(state) is final


@pytest.mark.parametrize(
    ("refunded", "refunds", "cents"),
    [
        (5.5, [], 550),
        (30.000000000000004, [], 3000),
        (None, [{"id": 1, "amount": 2.5}, {"id": 2, "amount": 1.25}], 375),
        ("junk", [{"id": 1, "amount": 2.5}], 250),
        (None, [], 0),
    ],
)
def test_refunded_amount_is_read_tolerantly(
    refunded: object, refunds: list[dict[str, object]], cents: int
) -> None:
    payment = Payment.from_json(
        {
            "id": 1,
            "status": "approved",
            "transaction_amount": 40.0,
            "transaction_amount_refunded": refunded,
            "refunds": refunds,
        }
    )
    assert payment.refunded_cents == cents
    assert payment.refundable_cents == 4000 - cents
