"""The Orders backend: idempotent recovery, status mapping, request shapes, error mapping."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pointd.cloud import errors
from pointd.cloud.backends import build_cloud_port
from pointd.cloud.client import PointApiClient
from pointd.cloud.order_backend import OrdersBackend, order_view
from pointd.cloud.orders import Order, OrdersApiClient, iso_duration
from pointd.cloud.port import PaymentIntentBackend
from pointd.sim.cloud import CloudSimulator
from tests.cloud.conftest import DEVICE, TOKEN, FakeClock

REF = "pd1_shop-1_3_SALE42_1"
ORDER_ID = "ORD01JQ4S4KY8HWQ6NA5PXB65B3D3"
PAY_ID = "PAY01JQ4S4KY8HWQ6NA5PXB65B3D4"

Handler = Callable[[httpx.Request], httpx.Response]


def order_json(
    status: str, *, reference_id: str | None = "5001", refunds: int = 0
) -> dict[str, Any]:
    payment: dict[str, Any] = {"id": PAY_ID, "amount": "15.00", "status": status}
    if reference_id is not None:
        payment["reference_id"] = reference_id
    transactions: dict[str, Any] = {"payments": [payment]}
    if refunds:
        transactions["refunds"] = [
            {"id": f"REF{n}", "transaction_id": PAY_ID, "amount": "5.00", "status": "processed"}
            for n in range(refunds)
        ]
    return {
        "id": ORDER_ID,
        "type": "point",
        "status": status,
        "external_reference": REF,
        "total_amount": "15.00",
        "transactions": transactions,
        "config": {"point": {"terminal_id": DEVICE}},
    }


class Recorder:
    """A MockTransport handler that records requests and answers from a function."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST"]


def backend(answer: Handler, fake_clock: FakeClock) -> tuple[OrdersBackend, Recorder]:
    recorder = Recorder(answer)
    client = PointApiClient(
        "https://api.example.test",
        TOKEN,
        transport=httpx.MockTransport(recorder),
        clock=fake_clock,
        sleep=fake_clock.sleep,
        random=lambda: 0.5,
    )
    return OrdersBackend(client, expiration_seconds=300), recorder


# -- the mapping table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reference_id", "state", "payment_state", "payment_id"),
    [
        ("created", None, "OPEN", None, None),
        ("at_terminal", None, "ON_TERMINAL", None, None),
        ("processed", "5001", "FINISHED", "approved", "5001"),
        ("failed", "5001", "FINISHED", "rejected", "5001"),
        ("failed", None, "ERROR", None, None),
        ("action_required", "5001", "CONFIRMATION_REQUIRED", None, "5001"),
        ("canceled", None, "CANCELED", None, None),
        ("expired", None, "ABANDONED", None, None),
        ("refunded", "5001", "FINISHED", "refunded", "5001"),
        ("something_new", None, "PROCESSING", None, None),
    ],
)
def test_order_status_mapping(
    status: str,
    reference_id: str | None,
    state: str,
    payment_state: str | None,
    payment_id: str | None,
) -> None:
    view = order_view(Order.from_json(order_json(status, reference_id=reference_id)))
    assert (view.state, view.payment_state, view.payment_id) == (state, payment_state, payment_id)
    assert (view.amount_cents, view.external_reference) == (1500, REF)


def test_an_order_without_id_or_status_is_malformed() -> None:
    with pytest.raises(ValueError, match="status"):
        Order.from_json({"id": ORDER_ID})


def test_iso_durations() -> None:
    assert [iso_duration(s) for s in (30, 900, 3600, 3725)] == [
        "PT30S",
        "PT15M",
        "PT1H",
        "PT1H2M5S",
    ]


# -- idempotency against the simulator -------------------------------------------------------


async def test_a_create_lost_in_transit_is_recovered_by_resending_the_same_key(
    sim: CloudSimulator, fake_clock: FakeClock
) -> None:
    async with PointApiClient(sim.base_url, TOKEN, clock=fake_clock, sleep=fake_clock.sleep) as c:
        port = OrdersBackend(c)
        assert port.creates_are_idempotent
        assert not PaymentIntentBackend(c).creates_are_idempotent
        async with httpx.AsyncClient(base_url=sim.base_url) as control:
            await control.post("/_sim/scenarios", json={"next": True, "create_failure": "drop"})
        with pytest.raises(errors.OutcomeUnknown):
            await port.create_payment(DEVICE, 1500, REF, REF)
        # the crash-recovery path: the same attempt, the same key, sent again
        order_id = await port.create_payment(DEVICE, 1500, REF, REF)
        again = await port.create_payment(DEVICE, 1500, REF, REF)
    assert again == order_id
    orders = [i for i in sim.world.record()["intents"] if i["api"] == "orders"]
    assert [o["id"] for o in orders] == [order_id]


async def test_a_reused_key_with_another_body_is_idempotency_conflict(
    sim: CloudSimulator, fake_clock: FakeClock
) -> None:
    async with PointApiClient(sim.base_url, TOKEN, clock=fake_clock, sleep=fake_clock.sleep) as c:
        port = OrdersBackend(c)
        await port.create_payment(DEVICE, 1500, REF, "key-1")
        with pytest.raises(errors.IdempotencyConflict) as caught:
            await port.create_payment(DEVICE, 1600, REF, "key-1")
    assert caught.value.error == "idempotency_key_already_used"
    assert len(sim.world.intents) == 1


async def test_cancel_at_terminal_is_accepted_then_done_by_the_terminal(
    sim: CloudSimulator, fake_clock: FakeClock
) -> None:
    async with PointApiClient(sim.base_url, TOKEN, clock=fake_clock, sleep=fake_clock.sleep) as c:
        port = OrdersBackend(c, cancel_at_terminal=True)
        order_id = await port.create_payment(DEVICE, 1500, REF, REF)
        await sim.advance(sim.config.delays.take)
        assert (await port.get_payment_state(order_id)).state == "ON_TERMINAL"
        await port.cancel_payment(DEVICE, order_id)
        assert (await port.get_payment_state(order_id)).state == "ON_TERMINAL"
        await sim.advance(sim.config.delays.take)
        assert (await port.get_payment_state(order_id)).state == "CANCELED"
        # the same cancel again is the same request: no error, nothing changes
        await port.cancel_payment(DEVICE, order_id)


# -- request shapes --------------------------------------------------------------------------


async def test_create_sends_the_documented_body_and_key(fake_clock: FakeClock) -> None:
    port, recorder = backend(lambda r: httpx.Response(201, json=order_json("created")), fake_clock)
    assert await port.create_payment(DEVICE, 1505, REF, "key-1", ticket_number="T9") == ORDER_ID
    (request,) = recorder.requests
    assert (request.method, request.url.path) == ("POST", "/v1/orders")
    assert request.headers["x-idempotency-key"] == "key-1"
    assert json.loads(request.content) == {
        "type": "point",
        "external_reference": REF,
        "transactions": {"payments": [{"amount": "15.05"}]},
        "config": {
            "point": {
                "terminal_id": DEVICE,
                "print_on_terminal": "seller_ticket",
                "ticket_number": "T9",
            }
        },
        "expiration_time": "PT5M",
    }


async def test_cancel_and_refund_carry_keys(fake_clock: FakeClock) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/payments/"):
            return httpx.Response(
                200,
                json={"id": 5001, "status": "approved", "transaction_amount": 15.0},
            )
        if request.url.path.endswith("/refund"):
            return httpx.Response(201, json=order_json("processed", refunds=1))
        return httpx.Response(200, json=order_json("processed"))

    port, recorder = backend(answer, fake_clock)
    await port.cancel_payment(DEVICE, ORDER_ID)
    refund = await port.refund_payment(DEVICE, ORDER_ID, "5001", 500, "rf-1")
    assert (refund.id, refund.amount_cents, refund.state) == ("REF0", 500, "REFUNDED")
    cancel, refund_post = recorder.posts()
    assert cancel.url.path == f"/v1/orders/{ORDER_ID}/cancel"
    assert cancel.headers["x-idempotency-key"] == f"cancel_{ORDER_ID}"
    assert "x-allow-cancelable-status" not in cancel.headers
    assert refund_post.headers["x-idempotency-key"] == "rf-1"
    assert json.loads(refund_post.content) == {"transactions": [{"id": PAY_ID, "amount": "5.00"}]}


async def test_a_whole_refund_sends_no_body(fake_clock: FakeClock) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/payments/"):
            return httpx.Response(
                200, json={"id": 5001, "status": "approved", "transaction_amount": 15.0}
            )
        if request.url.path.endswith("/refund"):
            return httpx.Response(201, json=order_json("refunded", refunds=1))
        return httpx.Response(200, json=order_json("processed"))

    port, recorder = backend(answer, fake_clock)
    await port.refund_payment(DEVICE, ORDER_ID, "5001", None, "rf-1")
    (refund_post,) = recorder.posts()
    assert refund_post.content == b""


@pytest.mark.parametrize("backend_name", ["payment-intent", "orders"])
async def test_over_amount_refunds_send_no_write(backend_name: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/payments/"):
            return httpx.Response(
                200,
                json={
                    "id": 5001,
                    "status": "approved",
                    "transaction_amount": 15.0,
                    "transaction_amount_refunded": 10.0,
                },
            )
        return httpx.Response(200, json=order_json("processed"))

    recorder = Recorder(answer)
    port, close = build_cloud_port(
        backend_name,
        "https://api.example.test",
        TOKEN,
        "MLA",
        transport=httpx.MockTransport(recorder),
    )
    try:
        with pytest.raises(errors.RefundExceedsBalance):
            await port.refund_payment(DEVICE, ORDER_ID, "5001", 501, "rf-1")
        with pytest.raises(errors.RefundExceedsBalance):
            await port.refund_payment(DEVICE, ORDER_ID, "5001", 1500, "rf-1")
        with pytest.raises(errors.InvalidRequest):
            await port.refund_payment(DEVICE, ORDER_ID, "5001", -5, "rf-1")
    finally:
        await close()
    assert recorder.posts() == []


async def test_a_refund_of_another_orders_payment_is_refused(fake_clock: FakeClock) -> None:
    port, recorder = backend(
        lambda r: httpx.Response(200, json=order_json("processed")), fake_clock
    )
    with pytest.raises(errors.InvalidRequest, match="no payment"):
        await port.refund_payment(DEVICE, ORDER_ID, "9999", None, "rf-1")
    assert recorder.posts() == []


# -- error mapping ---------------------------------------------------------------------------


def error(status: int, code: str) -> Handler:
    return lambda r: httpx.Response(status, json={"message": "m", "error": code, "status": status})


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (409, "idempotency_key_already_used", errors.IdempotencyConflict),
        (423, "locked", errors.IdempotencyInProgress),
        (409, "conflict_error", errors.DeviceBusy),
        (400, "empty_required_header", errors.BadRequest),
        (500, "internal_error", errors.OutcomeUnknown),
    ],
)
async def test_create_errors(
    status: int, code: str, expected: type[Exception], fake_clock: FakeClock
) -> None:
    port, _ = backend(error(status, code), fake_clock)
    with pytest.raises(expected):
        await port.create_payment(DEVICE, 1500, REF, "key-1")


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (409, "idempotency_key_already_used", errors.IdempotencyConflict),
        (409, "cannot_cancel_order", errors.CannotCancel),
        (502, "bad_gateway", errors.OutcomeUnknown),
    ],
)
async def test_cancel_errors(
    status: int, code: str, expected: type[Exception], fake_clock: FakeClock
) -> None:
    port, _ = backend(error(status, code), fake_clock)
    with pytest.raises(expected):
        await port.cancel_payment(DEVICE, ORDER_ID)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (409, "idempotency_key_already_used", errors.IdempotencyConflict),
        (409, "cannot_refund_order", errors.RefundNeedsPerson),
        (409, "refund_in_progress", errors.RefundRetryLater),
        (425, "order_payment_not_yet_enabled_for_refund", errors.RefundRetryLater),
        (428, "insufficient_money_for_refund", errors.RefundNeedsPerson),
        (422, "some_new_code", errors.RefundNeedsPerson),
        (503, "unavailable", errors.OutcomeUnknown),
    ],
)
async def test_refund_errors(
    status: int, code: str, expected: type[Exception], fake_clock: FakeClock
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return error(status, code)(request)
        if request.url.path.startswith("/v1/payments/"):
            return httpx.Response(
                200, json={"id": 5001, "status": "approved", "transaction_amount": 15.0}
            )
        return httpx.Response(200, json=order_json("processed"))

    port, _ = backend(answer, fake_clock)
    with pytest.raises(expected) as caught:
        await port.refund_payment(DEVICE, ORDER_ID, "5001", None, "rf-1")
    assert not isinstance(caught.value, errors.DeviceBusy)


async def test_malformed_answers(fake_clock: FakeClock) -> None:
    port, _ = backend(lambda r: httpx.Response(201, json={"id": ORDER_ID}), fake_clock)
    with pytest.raises(errors.MalformedResponse):
        await port.create_payment(DEVICE, 1500, REF, "key-1")
    port, _ = backend(lambda r: httpx.Response(200, json={"terminals": []}), fake_clock)
    with pytest.raises(errors.MalformedResponse):
        await port.list_terminals()


async def test_bad_keys_and_ids_are_refused_before_sending(fake_clock: FakeClock) -> None:
    port, recorder = backend(lambda r: httpx.Response(201, json=order_json("created")), fake_clock)
    with pytest.raises(errors.InvalidRequest, match="idempotency_key"):
        await port.create_payment(DEVICE, 1500, REF, "k" * 65)
    with pytest.raises(errors.InvalidRequest, match="order_id"):
        await port.get_payment_state("../payments")
    with pytest.raises(errors.InvalidRequest, match="amount"):
        await port.create_payment(DEVICE, 10**12, REF, "key-1")
    assert recorder.requests == []


async def test_build_cloud_port_chooses_by_name() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(500))
    for name, kind in (("orders", OrdersBackend), ("payment-intent", PaymentIntentBackend)):
        port, close = build_cloud_port(name, "https://x.test", TOKEN, "MLB", transport=transport)
        assert isinstance(port, kind)
        assert TOKEN not in repr(port)
        await close()
    with pytest.raises(errors.InvalidRequest, match="backend"):
        build_cloud_port("intents", "https://x.test", TOKEN, "MLB")


async def test_payment_intent_partial_refund_uses_the_payments_api_with_a_key(
    fake_clock: FakeClock,
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(
                201, json={"id": 77, "payment_id": 5001, "amount": 5.0, "status": "approved"}
            )
        return httpx.Response(
            200, json={"id": 5001, "status": "approved", "transaction_amount": 15.0}
        )

    recorder = Recorder(answer)
    client = PointApiClient(
        "https://api.example.test",
        TOKEN,
        transport=httpx.MockTransport(recorder),
        clock=fake_clock,
        sleep=fake_clock.sleep,
    )
    port = PaymentIntentBackend(client)
    refund = await port.refund_payment(DEVICE, "intent-1", "5001", 500, "rf-1")
    assert (refund.id, refund.amount_cents, refund.state, refund.via) == (
        "77",
        500,
        "REFUNDED",
        "api",
    )
    (sent,) = recorder.posts()
    assert sent.url.path == "/v1/payments/5001/refunds"
    assert sent.headers["x-idempotency-key"] == "rf-1"
    assert json.loads(sent.content) == {"amount": 5.0}


@pytest.mark.parametrize(
    ("status", "answered"),
    [(202, "at_terminal"), (200, "at_terminal"), (200, "canceled")],
)
async def test_a_cancel_at_the_terminal_is_accepted_by_a_202_or_a_2xx_saying_at_terminal(
    status: int, answered: str, fake_clock: FakeClock
) -> None:
    recorder = Recorder(lambda r: httpx.Response(status, json=order_json(answered)))
    client = PointApiClient(
        "https://api.example.test", TOKEN, transport=httpx.MockTransport(recorder)
    )
    later, order = await OrdersApiClient(client).cancel_order(ORDER_ID, "c-1", at_terminal=True)
    assert later is (answered == "at_terminal")
    assert order is not None
    assert order.status == answered
    assert recorder.posts()[0].headers["x-allow-cancelable-status"] == "at_terminal"


async def test_a_cancel_of_an_order_already_canceled_is_done(fake_clock: FakeClock) -> None:
    body = {"errors": [{"code": "order_already_canceled", "message": "already canceled"}]}
    port, recorder = backend(lambda r: httpx.Response(409, json=body), fake_clock)
    await port.cancel_payment(DEVICE, ORDER_ID)
    assert len(recorder.posts()) == 1
