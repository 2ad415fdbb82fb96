"""The simulated Orders API and /v1/payments refunds, spoken to as raw HTTP."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from pointd.cloud.signature import IdSource, verify
from pointd.cloud.wire import read_error
from pointd.sim.cloud import CloudSimulator
from tests.sim_cloud.conftest import (
    DEVICE,
    SECRET,
    TOKEN,
    Receiver,
    SimFactory,
    advance,
)

REF = "pd1_shop_1_S1_1"
TO_THE_END = 10.0
AUTH = {"authorization": f"Bearer {TOKEN}"}


def code(answer: httpx.Response) -> tuple[int, str]:
    """The status and the error code of an answer in the Orders API's nested shape."""
    assert "errors" in answer.json(), answer.text
    return answer.status_code, read_error(answer.json()).code


def order_body(cents: str = "15.00", ref: str = REF, **extra: Any) -> dict[str, Any]:
    return {
        "type": "point",
        "external_reference": ref,
        "transactions": {"payments": [{"amount": cents}]},
        "config": {"point": {"terminal_id": DEVICE}},
        **extra,
    }


async def post(
    control: httpx.AsyncClient, path: str, body: Any = None, key: str | None = "k-1", **headers: str
) -> httpx.Response:
    sent = dict(AUTH, **headers)
    if key is not None:
        sent["x-idempotency-key"] = key
    return await control.post(path, json=body, headers=sent)


async def paid_order(control: httpx.AsyncClient, cents: str = "15.00") -> dict[str, Any]:
    created = await post(control, "/v1/orders", order_body(cents), key="create-1")
    assert created.status_code == 201, created.text
    await advance(control, TO_THE_END)
    order: dict[str, Any] = (
        await control.get(f"/v1/orders/{created.json()['id']}", headers=AUTH)
    ).json()
    assert order["status"] == "processed"
    return order


async def test_create_needs_a_key_and_honours_it(
    sim: CloudSimulator, control: httpx.AsyncClient
) -> None:
    missing = await post(control, "/v1/orders", order_body(), key=None)
    assert code(missing) == (400, "empty_required_header")
    first = await post(control, "/v1/orders", order_body())
    again = await post(control, "/v1/orders", order_body())
    assert (first.status_code, again.status_code) == (201, 201)
    order = first.json()
    assert again.json()["id"] == order["id"]
    assert order["id"].startswith("ORD")
    assert order["status"] == "created"
    assert order["transactions"]["payments"][0]["amount"] == "15.00"
    assert order["config"]["point"]["terminal_id"] == DEVICE
    conflict = await post(control, "/v1/orders", order_body("16.00"))
    assert code(conflict) == (409, "idempotency_key_already_used")
    assert len(sim.world.intents) == 1


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"type": "qr"}, "property_value"),
        ({"external_reference": "bad ref"}, "property_value"),
        ({"transactions": {"payments": [{"amount": 15.0}]}}, "property_type"),
        ({"transactions": {"payments": [{"amount": "0.01"}]}}, "property_value"),
        ({"transactions": {"payments": [{"amount": "1.00"}, {"amount": "2.00"}]}}, "maximum_items"),
        ({"expiration_time": "PT5S"}, "property_value"),
        ({"config": {"point": {}}}, "required_properties"),
    ],
)
async def test_bad_creates_are_refused(
    sim: CloudSimulator, control: httpx.AsyncClient, change: dict[str, Any], error: str
) -> None:
    answer = await post(control, "/v1/orders", order_body() | change)
    assert code(answer) == (400, error)
    assert sim.world.intents == {}


async def test_expiration_time_sets_when_an_untaken_order_expires(
    control: httpx.AsyncClient,
) -> None:
    await control.post("/_sim/scenarios", json={"amount": 1500, "outcome": "abandoned"})
    created = await post(control, "/v1/orders", order_body(expiration_time="PT1M"))
    order_id = created.json()["id"]
    await advance(control, 60)
    assert (await control.get(f"/v1/orders/{order_id}", headers=AUTH)).json()["status"] == "expired"


async def test_cancel_rules(control: httpx.AsyncClient) -> None:
    order_id = (await post(control, "/v1/orders", order_body())).json()["id"]
    path = f"/v1/orders/{order_id}/cancel"
    assert (await post(control, path, key=None)).status_code == 400
    canceled = await post(control, path, key="c-1")
    assert (canceled.status_code, canceled.json()["status"]) == (200, "canceled")
    second = (await post(control, "/v1/orders", order_body(ref="r2"), key="k-2")).json()["id"]
    await advance(control, 2.0)
    refused = await post(control, f"/v1/orders/{second}/cancel", key="c-2")
    assert code(refused) == (409, "cannot_cancel_order")
    accepted = await post(
        control,
        f"/v1/orders/{second}/cancel",
        key="c-3",
        **{"x-allow-cancelable-status": "at_terminal"},
    )
    assert (accepted.status_code, accepted.json()["status"]) == (200, "at_terminal")
    transaction = accepted.json()["transactions"]["payments"][0]
    assert transaction["status_detail"] == "cancellation_requested"
    await advance(control, 1.0)
    done = await control.get(f"/v1/orders/{second}", headers=AUTH)
    assert done.json()["status"] == "canceled"


async def test_order_refunds_total_partial_and_over(
    sim: CloudSimulator, control: httpx.AsyncClient
) -> None:
    order = await paid_order(control, "20.00")
    path = f"/v1/orders/{order['id']}/refund"
    transaction = order["transactions"]["payments"][0]["id"]
    partial = {"transactions": [{"id": transaction, "amount": "5.00"}]}
    assert (await post(control, path, partial, key=None)).status_code == 400
    first = await post(control, path, partial, key="r-1")
    assert first.status_code == 201
    assert (first.json()["status"], first.json()["status_detail"]) == (
        "processed",
        "partially_refunded",
    )
    repeat = await post(control, path, partial, key="r-1")
    assert repeat.json()["transactions"]["refunds"] == first.json()["transactions"]["refunds"]
    too_much = {"transactions": [{"id": transaction, "amount": "15.01"}]}
    assert code(await post(control, path, too_much, key="r-2")) == (400, "refund_amount_exceeds")
    rest = await post(control, path, None, key="r-3")
    assert rest.json()["status"] == "refunded"
    again = await post(control, path, None, key="r-4")
    assert code(again) == (409, "order_already_refunded")
    refunds = rest.json()["transactions"]["refunds"]
    assert [r["amount"] for r in refunds] == ["5.00", "15.00"]
    payment_id = order["transactions"]["payments"][0]["reference_id"]
    payment = sim.world.read_payment(payment_id)
    assert (payment["status"], payment["transaction_amount_refunded"]) == ("refunded", 20.0)


async def test_payment_refunds_endpoint(sim: CloudSimulator, control: httpx.AsyncClient) -> None:
    order = await paid_order(control, "20.00")
    payment_id = order["transactions"]["payments"][0]["reference_id"]
    path = f"/v1/payments/{payment_id}/refunds"
    first = await post(control, path, {"amount": 7.5}, key="p-1")
    assert (first.status_code, first.json()["amount"], first.json()["status"]) == (
        201,
        7.5,
        "approved",
    )
    assert (await post(control, path, {"amount": 7.5}, key="p-1")).json() == first.json()
    assert (await post(control, path, {"amount": 1.0}, key="p-1")).status_code == 409
    assert (await post(control, path, {"amount": 12.51}, key="p-2")).status_code == 400
    listed = (await control.get(path, headers=AUTH)).json()
    assert [r["id"] for r in listed] == [first.json()["id"]]
    one = await control.get(f"{path}/{first.json()['id']}", headers=AUTH)
    assert one.json()["amount"] == 7.5
    rest = await post(control, path, None, key="p-3")
    assert rest.json()["amount"] == 12.5
    assert sim.world.read_payment(payment_id)["status"] == "refunded"
    assert (await control.get(f"{path}/999", headers=AUTH)).status_code == 404


async def test_terminals_list_and_setup(sim: CloudSimulator, control: httpx.AsyncClient) -> None:
    listing = (await control.get("/terminals/v1/list", headers=AUTH)).json()
    terminals = listing["data"]["terminals"]
    assert terminals[0]["id"] == DEVICE
    assert all(isinstance(t["store_id"], str) for t in terminals)
    setup = await control.patch(
        "/terminals/v1/setup",
        json={"terminals": [{"id": DEVICE, "operating_mode": "STANDALONE"}]},
        headers=AUTH,
    )
    assert setup.json() == {"terminals": [{"id": DEVICE, "operating_mode": "STANDALONE"}]}
    assert sim.world.devices[DEVICE].pending_mode == "STANDALONE"
    two = await control.patch("/terminals/v1/setup", json={"terminals": [{}, {}]}, headers=AUTH)
    assert code(two) == (400, "maximum_items")
    clamped = await control.get("/terminals/v1/list?limit=99", headers=AUTH)
    assert clamped.json()["paging"]["limit"] == 50
    assert code(await control.get("/terminals/v1/list?limit=0", headers=AUTH)) == (
        400,
        "property_value",
    )


@pytest.mark.parametrize(
    ("case", "source"), [("lower", IdSource.QUERY_LOWER), ("as_sent", IdSource.QUERY)]
)
async def test_order_notifications_are_signed_and_carry_the_reference(
    start_sim: SimFactory, receiver: Receiver, case: str, source: IdSource
) -> None:
    sim = await start_sim(receiver.url, order_signature_id=case)
    async with httpx.AsyncClient(base_url=sim.base_url) as control:
        order_id = (await post(control, "/v1/orders", order_body())).json()["id"]
        await advance(control, TO_THE_END)
        (hook,) = await receiver.wait_for(1)
        assert hook.query == {"data.id": order_id, "type": "order"}
        assert hook.body["type"] == "order"
        assert hook.body["action"] == "order.processed"
        assert hook.body["data"]["id"] == order_id
        assert hook.body["data"]["external_reference"] == REF
        (payment,) = hook.body["data"]["transactions"]["payments"]
        assert payment["status_detail"] == "accredited"
        assert payment["reference"]["id"].isdigit()
        verified = verify(
            SECRET,
            hook.headers["x-signature"],
            request_id=hook.headers["x-request-id"],
            query_data_id=hook.query["data.id"],
            now=time.time(),
            window_seconds=None,
        )
        assert verified.id_source is source
        await post(control, f"/v1/orders/{order_id}/refund", None, key="r-1")
        await sim.idle()
        hooks = await receiver.wait_for(2)
        assert hooks[1].body["action"] == "order.refunded"
