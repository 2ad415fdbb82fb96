"""Every outcome, by amount and by scenario, end to end through the real client."""

from __future__ import annotations

import httpx
import pytest

from pointd.cloud.client import PointApiClient
from pointd.sim.cloud import CloudSimulator
from pointd.sim.cloud.scenarios import AMOUNT_OUTCOMES, Outcome
from tests.sim_cloud.conftest import DEVICE, Receiver, advance

REF = "pd1_shop_1_S1_1"
# Past every step with the default delays (8 s), before a CONFIRMATION_REQUIRED payment
# settles (30 s after it) and long before abandonment (900 s).
TO_THE_END = 10.0


@pytest.mark.parametrize(
    "case",
    [
        (1500, "FINISHED", "approved", "approved"),
        (1100, "FINISHED", "refunded", "refunded"),
        (1200, "FINISHED", "rejected", "rejected"),
        (1300, "ERROR", None, None),
        (1401, "CONFIRMATION_REQUIRED", "in_process", ""),
        (1402, "CONFIRMATION_REQUIRED", "in_process", ""),
        (1403, "CONFIRMATION_REQUIRED", "in_process", ""),
        (1501, "CANCELED", None, None),
    ],
)
async def test_outcome_by_amount(
    case: tuple[int, str, str | None, str | None],
    client: PointApiClient,
    control: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    amount, state, payment_status, webhook_payment_state = case
    created = await client.create_payment_intent(DEVICE, amount, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    intent = await client.get_payment_intent(created.id)
    assert intent.state == state
    if payment_status is None:
        assert intent.payment_id is None
    else:
        assert intent.payment_id is not None
        payment = await client.get_payment(intent.payment_id)
        assert payment.status == payment_status
        assert payment.amount_cents == amount
    (hook,) = await receiver.wait_for(1)
    assert hook.body["state"] == state
    assert hook.body["id"] == created.id
    if webhook_payment_state is None:
        assert "payment" not in hook.body
    else:
        assert hook.body["payment"]["state"] == webhook_payment_state
        assert hook.body["payment"]["id"] == int(intent.payment_id or 0)


@pytest.mark.parametrize(
    ("amount", "settled"), [(1401, "approved"), (1402, "rejected"), (1403, "in_process")]
)
async def test_confirmation_required_payment_settles_later(
    amount: int,
    settled: str,
    sim: CloudSimulator,
    client: PointApiClient,
    control: httpx.AsyncClient,
) -> None:
    created = await client.create_payment_intent(DEVICE, amount, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    intent = await client.get_payment_intent(created.id)
    assert intent.state == "CONFIRMATION_REQUIRED"
    assert intent.payment_id is not None
    assert (await client.get_payment(intent.payment_id)).status == "in_process"
    await advance(control, sim.config.delays.settle)
    assert (await client.get_payment(intent.payment_id)).status == settled
    # CONFIRMATION_REQUIRED never changes afterwards
    assert (await client.get_payment_intent(created.id)).state == "CONFIRMATION_REQUIRED"


async def test_reversed_payment_carries_its_refund(
    client: PointApiClient, control: httpx.AsyncClient
) -> None:
    created = await client.create_payment_intent(DEVICE, 1100, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    payment_id = (await client.get_payment_intent(created.id)).payment_id
    assert payment_id is not None
    payment = await client.get_payment(payment_id)
    assert [r.amount_cents for r in payment.refunds] == [1100]


async def test_abandoned_after_fifteen_minutes_not_before(
    client: PointApiClient, control: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await client.create_payment_intent(DEVICE, 1601, REF, ticket_number="T")
    await advance(control, 899)
    assert (await client.get_payment_intent(created.id)).state == "OPEN"
    assert receiver.received == []
    await advance(control, 1)
    assert (await client.get_payment_intent(created.id)).state == "ABANDONED"
    (hook,) = await receiver.wait_for(1)
    assert hook.body["state"] == "ABANDONED"
    # the device is free again
    await client.create_payment_intent(DEVICE, 1500, "pd1_shop_1_S1_2", ticket_number="T")


async def test_intermediate_states_appear_in_order(
    sim: CloudSimulator, client: PointApiClient, control: httpx.AsyncClient
) -> None:
    delays = sim.config.delays
    created = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    seen = [(await client.get_payment_intent(created.id)).state]
    for step in (delays.take, delays.read_card, delays.authorise, delays.close):
        await advance(control, step)
        seen.append((await client.get_payment_intent(created.id)).state)
    assert seen == ["OPEN", "ON_TERMINAL", "PROCESSING", "PROCESSED", "FINISHED"]


@pytest.mark.parametrize("outcome", list(Outcome))
async def test_every_outcome_by_scenario_for_an_external_reference(
    outcome: Outcome, sim: CloudSimulator, client: PointApiClient, control: httpx.AsyncClient
) -> None:
    answer = await control.post(
        "/_sim/scenarios", json={"external_reference": REF, "outcome": outcome.value}
    )
    assert answer.status_code == 201
    created = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await advance(control, 1000)
    record = (await control.get("/_sim/record")).json()
    (entry,) = [i for i in record["intents"] if i["id"] == created.id]
    assert entry["outcome"] == outcome.value
    assert entry["final"] is True
    expected = {
        Outcome.APPROVED: ("FINISHED", "approved"),
        Outcome.FINISHED_REJECTED: ("FINISHED", "rejected"),
        Outcome.REVERSED: ("FINISHED", "refunded"),
        Outcome.CONFIRMATION_APPROVED: ("CONFIRMATION_REQUIRED", "approved"),
        Outcome.CONFIRMATION_REJECTED: ("CONFIRMATION_REQUIRED", "rejected"),
        Outcome.CONFIRMATION_PENDING: ("CONFIRMATION_REQUIRED", "in_process"),
        Outcome.CANCELED_ON_TERMINAL: ("CANCELED", None),
        Outcome.ERROR: ("ERROR", None),
        Outcome.ABANDONED: ("ABANDONED", None),
    }[outcome]
    assert (entry["state"], entry["payment_status"]) == expected


async def test_next_scenario_applies_once_then_the_amount_table_again(
    client: PointApiClient, control: httpx.AsyncClient
) -> None:
    await control.post("/_sim/scenarios", json={"next": True, "outcome": "error"})
    first = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    second = await client.create_payment_intent(DEVICE, 1500, "pd1_shop_1_S1_2", ticket_number="T")
    await advance(control, TO_THE_END)
    assert (await client.get_payment_intent(first.id)).state == "ERROR"
    assert (await client.get_payment_intent(second.id)).state == "FINISHED"


async def test_amount_scenario_overrides_the_table_until_cleared(
    client: PointApiClient, control: httpx.AsyncClient
) -> None:
    await control.post("/_sim/scenarios", json={"amount": 1200, "outcome": "approved"})
    first = await client.create_payment_intent(DEVICE, 1200, REF, ticket_number="T")
    await advance(control, TO_THE_END)
    assert (await control.delete("/_sim/scenarios")).status_code == 204
    second = await client.create_payment_intent(DEVICE, 1200, "pd1_shop_1_S1_2", ticket_number="T")
    await advance(control, TO_THE_END)
    for created, status in ((first, "approved"), (second, "rejected")):
        payment_id = (await client.get_payment_intent(created.id)).payment_id
        assert payment_id is not None
        assert (await client.get_payment(payment_id)).status == status


def test_mercado_pagos_own_amounts_keep_their_meaning() -> None:
    assert AMOUNT_OUTCOMES[1100] is Outcome.REVERSED
    assert AMOUNT_OUTCOMES[1200] is Outcome.FINISHED_REJECTED
    assert AMOUNT_OUTCOMES[1300] is Outcome.ERROR
