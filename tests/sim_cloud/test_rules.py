"""The simulator's API rules at the HTTP level: auth, shapes, 409s, cancel, modes, control API."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from pointd.sim.cloud import CloudSimulator
from pointd.sim.cloud.server import SimClock
from tests.sim_cloud.conftest import DEVICE, OTHER_DEVICE, TOKEN, Receiver, advance

API = "/point/integration-api"
AUTH = {"authorization": f"Bearer {TOKEN}"}
REF = "pd1_shop_1_S1_1"


def intent_body(amount: Any = 1500, reference: str = REF, **info: Any) -> dict[str, Any]:
    return {
        "amount": amount,
        "additional_info": {"external_reference": reference, "ticket_number": "T", **info},
    }


async def create(control: httpx.AsyncClient, device: str = DEVICE, **kwargs: Any) -> httpx.Response:
    return await control.post(
        f"{API}/devices/{device}/payment-intents", json=intent_body(**kwargs), headers=AUTH
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": TOKEN},
    ],
)
async def test_every_real_endpoint_needs_the_bearer_token(
    headers: dict[str, str], control: httpx.AsyncClient
) -> None:
    for method, path in [
        ("GET", f"{API}/devices"),
        ("POST", f"{API}/devices/{DEVICE}/payment-intents"),
        ("GET", f"{API}/payment-intents/x"),
        ("GET", "/v1/payments/1"),
        ("GET", f"{API}/integrator"),
    ]:
        answer = await control.request(method, path, headers=headers, json={})
        assert answer.status_code == 401
        assert answer.json() == {"message": "invalid_token", "error": "not_found", "status": 401}
    assert (await control.get("/_sim/record")).json()["intents"] == []


async def test_create_answers_the_documented_shape(control: httpx.AsyncClient) -> None:
    answer = await create(control)
    assert answer.status_code == 201
    body = answer.json()
    assert set(body) == {"id", "device_id", "amount", "additional_info"}
    assert body["additional_info"] == {"external_reference": REF, "ticket_number": "T"}


@pytest.mark.parametrize(
    "body",
    [
        {"additional_info": {"external_reference": REF, "ticket_number": "T"}},
        intent_body(amount=15.0),
        intent_body(amount="1500"),
        intent_body(amount=499),
        {"amount": 1500, "additional_info": {"external_reference": REF}},
        {"amount": 1500, "additional_info": "no"},
        intent_body(print_on_terminal="yes"),
        [1500],
    ],
)
async def test_bad_create_bodies_are_400_and_create_nothing(
    body: Any, control: httpx.AsyncClient
) -> None:
    answer = await control.post(f"{API}/devices/{DEVICE}/payment-intents", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["error"] == "bad_request"
    assert (await control.get("/_sim/record")).json()["intents"] == []


async def test_invalid_json_is_400(control: httpx.AsyncClient) -> None:
    answer = await control.post(
        f"{API}/devices/{DEVICE}/payment-intents", content=b"{amount", headers=AUTH
    )
    assert answer.status_code == 400


async def test_unknown_device_is_404(control: httpx.AsyncClient) -> None:
    answer = await create(control, device="PAX_A910__NOPE")
    assert answer.status_code == 404


async def test_one_queued_intent_per_device_then_free_after_final(
    sim: CloudSimulator, control: httpx.AsyncClient
) -> None:
    assert (await create(control)).status_code == 201
    busy = await create(control, reference="pd1_shop_1_S1_2")
    assert busy.status_code == 409
    assert busy.json() == {
        "message": "There is already a queued payment intent for the device",
        "error": "conflict_error",
        "status": 409,
        "cause": [],
    }
    assert (await create(control, device=OTHER_DEVICE)).status_code == 201
    # still busy while ON_TERMINAL and PROCESSING
    await advance(control, sim.config.delays.take + sim.config.delays.read_card)
    assert (await create(control, reference="pd1_shop_1_S1_3")).status_code == 409
    await advance(control, 10)
    assert (await create(control, reference="pd1_shop_1_S1_4")).status_code == 201


async def test_delete_only_while_open(sim: CloudSimulator, control: httpx.AsyncClient) -> None:
    intent_id = (await create(control)).json()["id"]
    path = f"{API}/devices/{DEVICE}/payment-intents/{intent_id}"
    wrong_device = await control.delete(
        f"{API}/devices/{OTHER_DEVICE}/payment-intents/{intent_id}", headers=AUTH
    )
    assert wrong_device.status_code == 404
    assert (await control.delete(path, headers=AUTH)).json() == {"id": intent_id}
    again = await control.delete(path, headers=AUTH)
    assert again.status_code == 409
    taken = (await create(control, reference="pd1_shop_1_S1_2")).json()["id"]
    await advance(control, sim.config.delays.take)
    refused = await control.delete(f"{API}/devices/{DEVICE}/payment-intents/{taken}", headers=AUTH)
    assert refused.status_code == 409
    assert refused.json()["error"] == "conflict_error"
    # the refused cancel changed nothing: the sale goes on to the end
    await advance(control, 10)
    got = await control.get(f"{API}/payment-intents/{taken}", headers=AUTH)
    assert got.json()["state"] == "FINISHED"


async def test_a_cancelled_intent_never_progresses(control: httpx.AsyncClient) -> None:
    intent_id = (await create(control)).json()["id"]
    await control.delete(f"{API}/devices/{DEVICE}/payment-intents/{intent_id}", headers=AUTH)
    await advance(control, 2000)
    got = await control.get(f"{API}/payment-intents/{intent_id}", headers=AUTH)
    assert got.json()["state"] == "CANCELED"
    assert "payment" not in got.json()


async def test_events_endpoint_validates_its_dates(control: httpx.AsyncClient) -> None:
    missing = await control.get(f"{API}/payment-intents/events", headers=AUTH)
    assert missing.status_code == 400
    assert (
        missing.json()["message"]
        == "startDate query param is required, endDate query param is required"
    )
    for query in (
        "startDate=2026-01-01&endDate=2026-02-15",
        "startDate=x&endDate=y",
        "startDate=2026-01-02&endDate=2026-01-01",
    ):
        assert (
            await control.get(f"{API}/payment-intents/events?{query}", headers=AUTH)
        ).status_code == 400


async def test_mode_change_needs_a_restart(control: httpx.AsyncClient) -> None:
    patched = await control.patch(
        f"{API}/devices/{DEVICE}", json={"operating_mode": "STANDALONE"}, headers=AUTH
    )
    assert patched.json() == {"operating_mode": "STANDALONE"}
    listed = await control.get(f"{API}/devices", params={"pos_id": 1}, headers=AUTH)
    assert listed.json()["devices"][0]["operating_mode"] == "PDV"
    restarted = await control.post(f"/_sim/devices/{DEVICE}/restart")
    assert restarted.json()["operating_mode"] == "STANDALONE"
    listed = await control.get(f"{API}/devices", params={"pos_id": 1}, headers=AUTH)
    assert listed.json()["devices"][0]["operating_mode"] == "STANDALONE"
    bad = await control.patch(
        f"{API}/devices/{DEVICE}", json={"operating_mode": "pdv"}, headers=AUTH
    )
    assert bad.status_code == 400
    assert (await control.post("/_sim/devices/PAX_A910__NOPE/restart")).status_code == 404


async def test_device_listing_pages_and_int_store_ids(control: httpx.AsyncClient) -> None:
    page = (
        await control.get(f"{API}/devices", params={"limit": 1, "offset": 1}, headers=AUTH)
    ).json()
    assert page["paging"] == {"total": 2, "offset": 1, "limit": 1}
    assert [d["id"] for d in page["devices"]] == [OTHER_DEVICE]
    first = (await control.get(f"{API}/devices", params={"limit": 1}, headers=AUTH)).json()[
        "devices"
    ][0]
    assert first["store_id"] == 1000001
    assert (
        await control.get(f"{API}/devices", params={"limit": "x"}, headers=AUTH)
    ).status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"amount": 1200},
        {"amount": 1200, "next": True},
        {"amount": 1200, "outcome": "paid"},
        {"next": True, "stale_gets": -1},
        {"next": True, "surprise": 1},
        {"next": True, "webhook_delay": "soon"},
        {"next": "yes"},
        [1],
    ],
)
async def test_bad_scenarios_are_refused(body: Any, control: httpx.AsyncClient) -> None:
    answer = await control.post("/_sim/scenarios", json=body)
    # {"amount": 1200} alone is a valid rule (approved); everything else here is not
    if body == {"amount": 1200}:
        assert answer.status_code == 201
    else:
        assert answer.status_code == 400
        assert "sim_error" in answer.json()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_sim/clock/advance", {"seconds": -1}),
        ("/_sim/clock/advance", {"seconds": "1"}),
        ("/_sim/clock/advance", None),
        ("/_sim/faults", {"get_500": 1}),
        ("/_sim/faults", {"get_429": -1}),
    ],
)
async def test_bad_control_requests_are_refused(
    path: str, body: Any, control: httpx.AsyncClient
) -> None:
    answer = await control.post(path, json=body)
    assert answer.status_code == 400


async def test_clock_reports_and_advances(control: httpx.AsyncClient) -> None:
    before = (await control.get("/_sim/clock")).json()
    await advance(control, 3600)
    after = (await control.get("/_sim/clock")).json()
    assert after["now"] - before["now"] == pytest.approx(3600)
    assert after["wall"] > before["wall"]


async def test_unknown_paths_answer_json_404(control: httpx.AsyncClient) -> None:
    answer = await control.get("/point/integration-api/nothing", headers=AUTH)
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"


async def test_record_lists_intents_and_payments(
    sim: CloudSimulator, control: httpx.AsyncClient
) -> None:
    intent_id = (await create(control, amount=1200)).json()["id"]
    await advance(control, 10)
    record = (await control.get("/_sim/record")).json()
    (intent,) = record["intents"]
    assert {
        k: intent[k] for k in ("id", "device_id", "amount", "external_reference", "state", "final")
    } == {
        "id": intent_id,
        "device_id": DEVICE,
        "amount": 1200,
        "external_reference": REF,
        "state": "FINISHED",
        "final": True,
    }
    assert intent["payment_status"] == "rejected"
    (payment,) = record["payments"]
    assert (payment["intent_id"], payment["status"], payment["amount"]) == (
        intent_id,
        "rejected",
        1200,
    )
    assert set(record) == {"intents", "payments", "refund_intents", "webhooks", "faults_fired"}


def test_sim_clock_scales_real_time_and_adds_advances() -> None:
    real = [100.0]
    clock = SimClock(60.0, monotonic=lambda: real[0])
    assert clock.now() == 0.0
    real[0] += 2.0
    assert clock.now() == 120.0
    clock.advance(30.0)
    assert clock.now() == 150.0
    assert clock.real_seconds_until(210.0) == 1.0
    assert clock.real_seconds_until(10.0) == 0.0
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1.0)
    frozen = SimClock(0.0, monotonic=lambda: real[0])
    real[0] += 1000.0
    assert frozen.now() == 0.0
    assert frozen.real_seconds_until(5.0) is None


async def test_the_driver_runs_timers_in_scaled_real_time(
    start_sim: Any, receiver: Receiver
) -> None:
    # 8 simulated seconds of sale at 1000x take about 8 ms; only the arrival is awaited.
    sim: CloudSimulator = await start_sim(receiver.url, time_scale=1000.0)
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        assert (await create(http)).status_code == 201
    (hook,) = await receiver.wait_for(1)
    assert hook.body["state"] == "FINISHED"
