"""Webhook delivery: shape, signature (checked by an independent HMAC), retries, quirks."""

from __future__ import annotations

import hmac
import json
import uuid
from pathlib import Path

import httpx
import pytest

from pointd.cloud.client import PointApiClient
from pointd.sim.cloud import CloudSimulator
from tests.sim_cloud.conftest import (
    DEVICE,
    SECRET,
    TOKEN,
    Receiver,
    SimFactory,
    advance,
    expected_signature,
    split_signature,
)
from tests.support.clock import ManualClock

FIXTURES = Path(__file__).parent.parent / "fixtures" / "mercadopago"
REF = "pd1_shop_1_S1_1"
TO_THE_END = 10.0
RETRY = 900.0


def fixture(name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((FIXTURES / name).read_text())
    return data


def assert_signed(hook_query: dict[str, str], headers: dict[str, str], secret: str = SECRET) -> str:
    parts = split_signature(headers["x-signature"])
    expected = expected_signature(
        secret, hook_query["data.id"], headers["x-request-id"], parts["ts"]
    )
    assert hmac.compare_digest(parts["v1"], expected)
    return parts["ts"]


async def test_final_notification_matches_the_documented_shape_and_is_signed(
    sim: CloudSimulator, client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="39SHDKKDJ")
    await advance(control, TO_THE_END)
    (hook,) = await receiver.wait_for(1)
    documented = fixture("point_wh_finished_mla.json")
    assert set(hook.body) == set(documented)
    assert set(hook.body["payment"]) == {"id", "state", "type"}
    assert isinstance(hook.body["payment"]["id"], int)
    assert hook.body["additional_info"] == {"external_reference": REF, "ticket_number": "39SHDKKDJ"}
    assert hook.body["amount"] == 1500
    assert len(hook.body["created_at"]) == len("2021-11-29 17:10:37")
    assert hook.query == {"data.id": created.id, "type": "point_integration_wh"}
    uuid.UUID(hook.headers["x-request-id"])
    ts = assert_signed(hook.query, hook.headers)
    assert len(ts) == 10  # seconds by default


async def test_a_wrong_secret_does_not_verify(
    client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    (hook,) = await receiver.wait_for(1)
    with pytest.raises(AssertionError):
        assert_signed(hook.query, hook.headers, secret="another-secret")


async def test_millisecond_ts_when_configured(
    start_sim: SimFactory, receiver: Receiver, no_wait: ManualClock
) -> None:
    sim = await start_sim(receiver.url, signature_ts_unit="ms")
    async with PointApiClient(sim.base_url, TOKEN, clock=no_wait, sleep=no_wait.sleep) as api:
        await api.create_payment_intent(DEVICE, 1300, REF, ticket_number="T")
    await sim.advance(TO_THE_END)
    (hook,) = await receiver.wait_for(1)
    assert len(assert_signed(hook.query, hook.headers)) == 13


async def test_confirmation_required_carries_empty_payment_state_and_type(
    client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    await client.create_payment_intent(DEVICE, 1401, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    (hook,) = await receiver.wait_for(1)
    assert hook.body["state"] == "CONFIRMATION_REQUIRED"
    assert hook.body["payment"]["state"] == ""
    assert hook.body["payment"]["type"] == ""
    assert set(hook.body) == set(fixture("point_wh_confirmation_required_mla.json"))


async def test_canceled_and_error_have_no_payment(
    client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    first = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await client.cancel_payment_intent(DEVICE, first.id)
    await client.create_payment_intent(DEVICE, 1300, "pd1_shop_1_S1_2", ticket_number="T")
    await advance(control, TO_THE_END)
    hooks = await receiver.wait_for(2)
    assert [h.body["state"] for h in hooks] == ["CANCELED", "ERROR"]
    for hook, name in zip(
        hooks, ["point_wh_canceled_mla.json", "point_wh_error_mla.json"], strict=True
    ):
        assert set(hook.body) == set(fixture(name))


async def test_retried_every_fifteen_minutes_until_answered_2xx(
    sim: CloudSimulator, client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.statuses = [500, 404, 503]
    await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    assert len(await receiver.wait_for(1)) == 1
    await advance(control, RETRY - 1)
    assert len(receiver.received) == 1
    for attempt in (2, 3, 4):
        await advance(control, RETRY)
        assert len(await receiver.wait_for(attempt)) == attempt
    await advance(control, RETRY * 5)
    assert len(receiver.received) == 4
    # each attempt is signed afresh with its own request id
    assert len({h.headers["x-request-id"] for h in receiver.received}) == 4
    for hook in receiver.received:
        assert_signed(hook.query, hook.headers)
    attempts = (await control.get("/_sim/record")).json()["webhooks"]
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [
        (1, 500),
        (2, 404),
        (3, 503),
        (4, 200),
    ]


async def test_gives_up_after_the_configured_attempts(
    start_sim: SimFactory, receiver: Receiver, no_wait: ManualClock
) -> None:
    sim = await start_sim(receiver.url, webhook_max_attempts=3)
    receiver.statuses = [500] * 10
    async with PointApiClient(sim.base_url, TOKEN, clock=no_wait, sleep=no_wait.sleep) as api:
        await api.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await sim.advance(TO_THE_END)
    for _ in range(6):
        await sim.advance(RETRY)
    assert len(receiver.received) == 3


async def test_an_unreachable_receiver_is_recorded_and_retried(
    start_sim: SimFactory, no_wait: ManualClock
) -> None:
    sim = await start_sim("http://127.0.0.1:9/unreachable")
    async with PointApiClient(sim.base_url, TOKEN, clock=no_wait, sleep=no_wait.sleep) as api:
        await api.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await sim.advance(TO_THE_END)
    await sim.advance(RETRY)
    attempts = sim.world.record()["webhooks"]
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, None), (2, None)]
    assert attempts[0]["error"] == "ConnectError"


async def test_every_state_is_notified_when_configured(
    start_sim: SimFactory, receiver: Receiver, no_wait: ManualClock
) -> None:
    sim = await start_sim(receiver.url, notify_all_states=True)
    async with PointApiClient(sim.base_url, TOKEN, clock=no_wait, sleep=no_wait.sleep) as api:
        await api.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
        await sim.advance(TO_THE_END)
    hooks = await receiver.wait_for(5)
    assert [h.body["state"] for h in hooks] == [
        "OPEN",
        "ON_TERMINAL",
        "PROCESSING",
        "PROCESSED",
        "FINISHED",
    ]


async def test_duplicate_quirk_delivers_twice(
    client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    await control.post("/_sim/scenarios", json={"next": True, "webhook": "duplicate"})
    await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    first, second = await receiver.wait_for(2)
    assert first.body == second.body
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_out_of_order_quirk_sends_a_stale_state_after_the_final_one(
    client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    await control.post("/_sim/scenarios", json={"next": True, "webhook": "out_of_order"})
    await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    hooks = await receiver.wait_for(2)
    assert [h.body["state"] for h in hooks] == ["FINISHED", "ON_TERMINAL"]


async def test_late_quirk_holds_the_notification_back(
    client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    await control.post("/_sim/scenarios", json={"next": True, "webhook_delay": 300})
    created = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    assert (await client.get_payment_intent(created.id)).state == "FINISHED"
    assert receiver.received == []
    await advance(control, 300)
    (hook,) = await receiver.wait_for(1)
    assert hook.body["state"] == "FINISHED"


async def test_never_quirk_delivers_nothing(
    client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    await control.post("/_sim/scenarios", json={"next": True, "webhook": "never"})
    await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await advance(control, TO_THE_END + RETRY * 3)
    assert receiver.received == []
    assert (await control.get("/_sim/record")).json()["webhooks"] == []


async def test_fraud_alert_is_generic_signed_and_never_retried(
    client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    await receiver.wait_for(1)
    payment_id = (await client.get_payment_intent(created.id)).payment_id
    receiver.statuses = [500]
    answer = await control.post(f"/_sim/payments/{payment_id}/fraud_alert")
    assert answer.json() == {"status_code": 500}
    alert = receiver.received[1]
    assert set(alert.body) == set(fixture("fraud_alert_stop_delivery.json"))
    assert alert.body["type"] == "stop_delivery_op_wh"
    assert alert.body["data"]["payment_id"] == int(payment_id or 0)
    assert alert.query == {"data.id": payment_id, "type": "stop_delivery_op_wh"}
    assert_signed(alert.query, alert.headers)
    await advance(control, RETRY * 3)
    assert len(receiver.received) == 2


async def test_fraud_alert_for_an_unknown_payment_is_refused(control: httpx.AsyncClient) -> None:
    answer = await control.post("/_sim/payments/123/fraud_alert")
    assert answer.status_code == 404
    assert "sim_error" in answer.json()
