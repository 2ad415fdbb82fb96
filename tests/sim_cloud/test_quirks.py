"""Mercado Pago's API quirks on demand: stale GETs, lost create answers, 429 and 5xx bursts."""

from __future__ import annotations

import httpx
import pytest

from pointd.cloud import errors
from pointd.cloud.client import PointApiClient
from pointd.sim.cloud import CloudSimulator
from tests.sim_cloud.conftest import DEVICE, TOKEN, Receiver, SimFactory, advance
from tests.support.clock import ManualClock

REF = "pd1_shop_1_S1_1"
TO_THE_END = 10.0


async def test_stale_on_terminal_for_n_gets_after_the_end(
    client: PointApiClient, control: httpx.AsyncClient
) -> None:
    await control.post("/_sim/scenarios", json={"external_reference": REF, "stale_gets": 2})
    created = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    states = [(await client.get_payment_intent(created.id)).state for _ in range(3)]
    assert states == ["ON_TERMINAL", "ON_TERMINAL", "FINISHED"]
    # the record and the events endpoint tell the truth throughout
    record = (await control.get("/_sim/record")).json()
    assert record["intents"][0]["state"] == "FINISHED"


@pytest.mark.parametrize(
    ("failure", "raised"),
    [("5xx", errors.OutcomeUnknown), ("drop", errors.OutcomeUnknown)],
)
async def test_create_answer_lost_after_the_intent_was_really_created(
    failure: str,
    raised: type[Exception],
    client: PointApiClient,
    control: httpx.AsyncClient,
) -> None:
    await control.post("/_sim/scenarios", json={"next": True, "create_failure": failure})
    with pytest.raises(raised) as caught:
        await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    assert not isinstance(caught.value, errors.NotSent)
    record = (await control.get("/_sim/record")).json()
    assert [(i["external_reference"], i["state"]) for i in record["intents"]] == [(REF, "OPEN")]
    # reconciliation can see it: the device is busy with it
    with pytest.raises(errors.DeviceBusy):
        await client.create_payment_intent(DEVICE, 1500, "pd1_shop_1_S1_2", ticket_number="T")
    await advance(control, TO_THE_END)
    assert [p.external_reference for p in await client.search_payments(REF)] == [REF]


async def test_429_burst_on_intent_gets_is_waited_out(
    client: PointApiClient, control: httpx.AsyncClient, no_wait: ManualClock
) -> None:
    await control.post("/_sim/scenarios", json={"next": True, "get_429": 2, "retry_after": 2})
    created = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    assert (await client.get_payment_intent(created.id)).state == "OPEN"
    assert no_wait.sleeps.count(2.0) == 2


async def test_5xx_burst_longer_than_the_retries_is_a_server_error(
    client: PointApiClient, control: httpx.AsyncClient
) -> None:
    await control.post("/_sim/scenarios", json={"next": True, "get_5xx": 5})
    created = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    with pytest.raises(errors.ServerError):
        await client.get_payment_intent(created.id)
    # the burst had one answer left; then the intent reads normally
    assert (await client.get_payment_intent(created.id)).state == "OPEN"


async def test_global_get_faults_hit_any_get(
    client: PointApiClient, control: httpx.AsyncClient
) -> None:
    answer = await control.post("/_sim/faults", json={"get_5xx": 2, "get_429": 1, "retry_after": 0})
    assert answer.status_code == 200
    assert [d.id for d in await client.list_devices()][:1] == [DEVICE]
    # writes are not affected
    await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")


async def test_one_get_per_second_is_enforced_when_configured(start_sim: SimFactory) -> None:
    sim: CloudSimulator = await start_sim(None, enforce_get_rate_limit=True)
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=sim.base_url, headers=headers) as http:
        created = await http.post(
            f"/point/integration-api/devices/{DEVICE}/payment-intents",
            json={
                "amount": 1500,
                "additional_info": {"external_reference": REF, "ticket_number": "T"},
            },
        )
        path = f"/point/integration-api/payment-intents/{created.json()['id']}"
        assert (await http.get(path)).status_code == 200
        limited = await http.get(path)
        assert limited.status_code == 429
        assert limited.json()["error"] == "too_many_requests"
        assert limited.headers["retry-after"] == "1"
        await sim.advance(1.0)
        assert (await http.get(path)).status_code == 200


async def test_faults_fired_counts_what_the_simulator_played_not_what_was_scripted(
    client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    def fired() -> dict[str, int]:
        return dict(control_record["faults_fired"])

    scripts = [
        {"amount": 2101, "webhook": "duplicate", "get_429": 1, "retry_after": 0},
        {"amount": 2102, "webhook": "never"},
        {"amount": 2103, "stale_gets": 2},
        {"amount": 2104, "webhook": "out_of_order", "create_failure": "drop"},
    ]
    for script in scripts:
        await control.post("/_sim/scenarios", json=script)
    control_record = (await control.get("/_sim/record")).json()
    assert fired() == {}  # scripted, nothing played yet
    duplicated = await client.create_payment_intent(DEVICE, 2101, "pd1_shop_1_S1_1",
                                                     ticket_number="T")
    await client.get_payment_intent(duplicated.id)  # one 429 answered, then the intent
    await advance(control, TO_THE_END)
    await receiver.wait_for(2)
    await client.create_payment_intent(DEVICE, 2102, "pd1_shop_1_S2_1", ticket_number="T")
    await advance(control, TO_THE_END)
    stale = await client.create_payment_intent(DEVICE, 2103, "pd1_shop_1_S3_1", ticket_number="T")
    await advance(control, TO_THE_END)
    await client.get_payment_intent(stale.id)  # the first of two stale answers
    control_record = (await control.get("/_sim/record")).json()
    assert fired() == {"intent_get_429": 1, "webhook_duplicate": 1, "webhook_missing": 1,
                       "stale_gets": 1}
    with pytest.raises(errors.OutcomeUnknown):
        await client.create_payment_intent(DEVICE, 2104, "pd1_shop_1_S4_1", ticket_number="T")
    await advance(control, TO_THE_END)
    control_record = (await control.get("/_sim/record")).json()
    assert fired()["create_dropped_after_create"] == 1
    assert fired()["webhook_out_of_order"] == 1
