"""Reconciling an unknown create needs two proofs of absence, whichever sources answer.

The intent events endpoints left Mercado Pago's public reference (devsite-docs PR #2220):
the simulator can answer them 404 (``/_sim/faults {"events_unavailable": true}``), and
the Payment Intent backend must then prove an attempt absent from the payments search
over its time window, and only once any intent it made must have ended. Real HTTP over
loopback; the simulator's clock is frozen and moved by hand.
"""

from __future__ import annotations

import httpx
import pytest

from pointd.cloud import errors
from pointd.cloud.client import PointApiClient
from pointd.cloud.port import (
    CLOCK_MARGIN,
    INTENT_LIFETIME,
    AttemptFound,
    AttemptQuery,
    PaymentIntentBackend,
)
from pointd.cloud.wire import CallKind
from pointd.sim.cloud import CloudSimulator
from tests.cloud.conftest import DEVICE, OTHER_DEVICE

REF = "pd1_shop-1_1_SALE7_1"
LATE_ENOUGH = INTENT_LIFETIME + CLOCK_MARGIN


async def events_unavailable(sim: CloudSimulator) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as control:
        answer = await control.post("/_sim/faults", json={"events_unavailable": True})
        assert answer.json()["events_unavailable"] is True


def wall(sim: CloudSimulator) -> float:
    return sim.world.wall(sim.clock.now()).timestamp()


@pytest.fixture
async def without_events(
    sim: CloudSimulator, client: PointApiClient
) -> tuple[PaymentIntentBackend, float]:
    """The port, and the moment the attempt starts, with the events endpoints gone."""
    await events_unavailable(sim)
    return PaymentIntentBackend(client), wall(sim)


def query(since: float, now: float, amount: int = 1500) -> AttemptQuery:
    return AttemptQuery(DEVICE, REF, amount, since=since, now=now)


def assert_absent(found: AttemptFound, second_proof: str) -> None:
    assert (found.intent, found.payments) == (None, ())
    assert found.proofs == ("payments_by_reference", second_proof)


async def test_the_events_list_finds_an_intent_whose_create_answer_was_lost(
    sim: CloudSimulator, client: PointApiClient
) -> None:
    port = PaymentIntentBackend(client)
    since = wall(sim)
    intent = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    found = await port.find_attempt(query(since, wall(sim)))
    assert found.intent is not None
    assert (found.intent.id, found.intent.state) == (intent.id, "OPEN")
    assert found.proofs == ("intent_events",)


async def test_with_events_answering_an_absent_attempt_is_proven_at_once(
    sim: CloudSimulator, client: PointApiClient
) -> None:
    now = wall(sim)
    assert_absent(await PaymentIntentBackend(client).find_attempt(query(now, now)), "intent_events")


async def test_without_events_a_live_intent_is_never_taken_for_absence(
    sim: CloudSimulator,
    client: PointApiClient,
    without_events: tuple[PaymentIntentBackend, float],
) -> None:
    port, since = without_events
    await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    with pytest.raises(errors.NotProven):
        await port.find_attempt(query(since, wall(sim)))
    # Once it is paid, the payments search finds it: that answers without the events list.
    await sim.advance(60)
    found = await port.find_attempt(query(since, wall(sim)))
    [payment] = found.payments
    assert (payment.status, payment.external_reference) == ("approved", REF)
    assert found.proofs == ("payments_by_reference",)


async def test_without_events_absence_is_proven_by_the_time_window(
    sim: CloudSimulator,
    client: PointApiClient,
    without_events: tuple[PaymentIntentBackend, float],
) -> None:
    port, since = without_events
    with pytest.raises(errors.NotProven):
        await port.find_attempt(query(since, since + LATE_ENOUGH - 1))
    await sim.advance(LATE_ENOUGH)
    assert_absent(await port.find_attempt(query(since, wall(sim))), "payments_in_window")


async def test_without_events_an_unnamed_payment_of_the_amount_proves_nothing(
    sim: CloudSimulator,
    client: PointApiClient,
    without_events: tuple[PaymentIntentBackend, float],
) -> None:
    port, since = without_events
    # A payment in the window that names no reference could be this attempt's.
    unnamed = await client.send_json(
        "POST",
        f"/point/integration-api/devices/{OTHER_DEVICE}/payment-intents",
        "create",
        {"amount": 1500, "additional_info": {"ticket_number": "T"}},
        CallKind.CREATE,
    )
    assert unnamed["id"]
    await sim.advance(LATE_ENOUGH)
    with pytest.raises(errors.NotProven, match="no reference"):
        await port.find_attempt(query(since, wall(sim)))
    # A smaller payment cannot be this attempt's, even with a tip.
    found = await port.find_attempt(query(since, wall(sim), amount=1600))
    assert_absent(found, "payments_in_window")


async def test_a_search_that_ignores_the_reference_filter_proves_nothing_by_itself() -> None:
    # Were Mercado Pago to ignore external_reference, the search would list other sales.
    other = {"id": 77, "status": "approved", "transaction_amount": 15.0,
             "external_reference": "pd1_shop-1_2_OTHER_1"}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/payments/search":
            return httpx.Response(200, json={"results": [other], "paging": {"total": 1}})
        return httpx.Response(200, json={"events": []})

    async with PointApiClient(
        "https://api.example.test", "TEST-token", transport=httpx.MockTransport(answer)
    ) as client:
        found = await PaymentIntentBackend(client).find_attempt(query(0.0, 1.0))
    assert_absent(found, "intent_events")
