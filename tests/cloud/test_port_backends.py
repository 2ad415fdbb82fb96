"""The CloudPort contract, run against both backends over loopback HTTP to the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from pointd.cloud import errors
from pointd.cloud.client import PointApiClient
from pointd.cloud.order_backend import OrdersBackend
from pointd.cloud.port import CloudPort, PaymentIntentBackend, RefundState
from pointd.sim.cloud import CloudSimulator
from tests.cloud.conftest import DEVICE, OTHER_DEVICE, TOKEN, FakeClock

REF = "pd1_shop-1_3_SALE42_1"
REF2 = "pd1_shop-1_3_SALE42_2"
BACKENDS = ["payment-intent", "orders"]


@dataclass
class Lane:
    """A port under test, its simulator, and a raw HTTP client for /_sim/ calls."""

    name: str
    port: CloudPort
    sim: CloudSimulator
    control: httpx.AsyncClient

    async def finish(self) -> None:
        await self.sim.advance(60)

    async def record(self) -> dict[str, Any]:
        response = await self.control.get("/_sim/record")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    async def scenario(self, **rule: object) -> None:
        response = await self.control.post("/_sim/scenarios", json=rule)
        assert response.status_code == 201, response.text

    async def pay(self, cents: int = 1500, ref: str = REF) -> tuple[str, str]:
        """A finished approved sale: (attempt id, payment id)."""
        attempt = await self.port.create_payment(DEVICE, cents, ref, ref)
        await self.finish()
        view = await self.port.get_payment_state(attempt)
        assert view.payment_id is not None
        return attempt, view.payment_id


def make_port(name: str, client: PointApiClient) -> CloudPort:
    if name == "orders":
        return OrdersBackend(client)
    return PaymentIntentBackend(client)


@pytest.fixture(params=BACKENDS)
async def lane(
    request: pytest.FixtureRequest, sim: CloudSimulator, fake_clock: FakeClock
) -> AsyncIterator[Lane]:
    async with (
        PointApiClient(
            sim.base_url, TOKEN, clock=fake_clock, sleep=fake_clock.sleep, random=lambda: 0.5
        ) as client,
        httpx.AsyncClient(base_url=sim.base_url, timeout=10.0) as control,
    ):
        yield Lane(request.param, make_port(request.param, client), sim, control)


async def test_lists_terminals(lane: Lane) -> None:
    terminals = await lane.port.list_terminals()
    assert [t.id for t in terminals] == [DEVICE, OTHER_DEVICE]
    assert terminals[0].store_id == "1000001"
    assert terminals[0].operating_mode == "PDV"


async def test_create_observe_and_verify_an_approved_payment(lane: Lane) -> None:
    attempt = await lane.port.create_payment(DEVICE, 2550, REF, REF, ticket_number="T-1")
    view = await lane.port.get_payment_state(attempt)
    assert (view.state, view.is_final, view.amount_cents, view.external_reference) == (
        "OPEN",
        False,
        2550,
        REF,
    )
    await lane.finish()
    view = await lane.port.get_payment_state(attempt)
    assert view.state == "FINISHED"
    # an order states its payment's verdict; an intent's GET leaves it to /v1/payments
    assert view.payment_state == ("approved" if lane.name == "orders" else None)
    assert view.payment_id is not None
    payment = await lane.port.get_payment(view.payment_id)
    assert (payment.status, payment.amount_cents, payment.external_reference) == (
        "approved",
        2550,
        REF,
    )
    assert [p.id for p in await lane.port.find_payments(REF)] == [view.payment_id]
    assert "TEST-" not in repr(lane.port)


@pytest.mark.parametrize(
    ("cents", "state", "payment_state", "has_payment"),
    [
        (1200, "FINISHED", "rejected", True),
        (1300, "ERROR", None, False),
        (1501, "CANCELED", None, False),
    ],
)
async def test_outcomes_by_amount(
    lane: Lane, cents: int, state: str, payment_state: str | None, has_payment: bool
) -> None:
    attempt = await lane.port.create_payment(DEVICE, cents, REF, REF)
    await lane.finish()
    view = await lane.port.get_payment_state(attempt)
    assert view.state == state
    assert view.is_final
    assert (view.payment_id is not None) == has_payment
    if lane.name == "orders" or state != "FINISHED":
        assert view.payment_state == payment_state


async def test_never_taken_is_abandoned(lane: Lane) -> None:
    attempt = await lane.port.create_payment(DEVICE, 1601, REF, REF)
    await lane.sim.advance(lane.sim.config.abandon_after)
    assert (await lane.port.get_payment_state(attempt)).state == "ABANDONED"


async def test_confirmation_required_holds_with_the_payment_id(lane: Lane) -> None:
    attempt = await lane.port.create_payment(DEVICE, 1401, REF, REF)
    delays = lane.sim.config.delays
    await lane.sim.advance(delays.take + delays.read_card + delays.authorise)
    view = await lane.port.get_payment_state(attempt)
    assert (view.state, view.payment_state, view.is_final) == ("CONFIRMATION_REQUIRED", None, True)
    assert view.payment_id is not None
    assert (await lane.port.get_payment(view.payment_id)).status == "in_process"
    await lane.sim.advance(lane.sim.config.delays.settle)
    assert (await lane.port.get_payment(view.payment_id)).status == "approved"


async def test_cancel_while_open_then_cannot_cancel(lane: Lane) -> None:
    first = await lane.port.create_payment(DEVICE, 1500, REF, REF)
    await lane.port.cancel_payment(DEVICE, first)
    assert (await lane.port.get_payment_state(first)).state == "CANCELED"
    # cancelling again changes nothing and is not an error for an order (same key)
    second = await lane.port.create_payment(DEVICE, 1500, REF2, REF2)
    await lane.sim.advance(lane.sim.config.delays.take)
    with pytest.raises(errors.CannotCancel):
        await lane.port.cancel_payment(DEVICE, second)


async def test_one_live_attempt_per_terminal(lane: Lane) -> None:
    await lane.port.create_payment(DEVICE, 1500, REF, REF)
    with pytest.raises(errors.DeviceBusy):
        await lane.port.create_payment(DEVICE, 1500, REF2, REF2)
    await lane.port.create_payment(OTHER_DEVICE, 1500, "pd1_shop-1_4_SALE43_1", "k-other")


async def test_local_refusals_send_nothing(lane: Lane) -> None:
    before = await lane.record()
    with pytest.raises(errors.InvalidRequest):
        await lane.port.create_payment(DEVICE, 1500, "has spaces", "k1")
    with pytest.raises(errors.InvalidRequest):
        await lane.port.create_payment(DEVICE, 1, REF, REF)
    assert (await lane.record())["intents"] == before["intents"]


# -- refunds ------------------------------------------------------------------------------


async def test_total_refund(lane: Lane) -> None:
    attempt, payment_id = await lane.pay()
    refund = await lane.port.refund_payment(DEVICE, attempt, payment_id, None, "rf-1")
    assert (refund.amount_cents, refund.payment_id) == (1500, payment_id)
    if lane.name == "payment-intent":
        # a whole refund goes to the terminal, where the cashier completes it
        assert (refund.via, refund.state) == ("terminal", RefundState.PENDING)
        await lane.finish()
    now = await lane.port.get_refund(attempt, payment_id, refund.id)
    assert (now.state, now.amount_cents, now.is_final) == (RefundState.REFUNDED, 1500, True)
    payment = await lane.port.get_payment(payment_id)
    assert (payment.status, payment.refunded_cents, payment.refundable_cents) == (
        "refunded",
        1500,
        0,
    )
    if lane.name == "orders":
        view = await lane.port.get_payment_state(attempt)
        assert (view.state, view.payment_state) == ("FINISHED", "refunded")


async def test_partial_refunds_then_the_rest(lane: Lane) -> None:
    attempt, payment_id = await lane.pay(2000)
    first = await lane.port.refund_payment(DEVICE, attempt, payment_id, 500, "rf-1")
    assert (first.state, first.amount_cents, first.via) == (RefundState.REFUNDED, 500, "api")
    assert (await lane.port.get_refund(attempt, payment_id, first.id)).amount_cents == 500
    payment = await lane.port.get_payment(payment_id)
    assert (payment.status, payment.refundable_cents) == ("approved", 1500)
    rest = await lane.port.refund_payment(DEVICE, attempt, payment_id, None, "rf-2")
    assert (rest.amount_cents, rest.via) == (1500, "api")
    assert rest.id != first.id
    assert (await lane.port.get_payment(payment_id)).status == "refunded"


async def test_a_repeated_refund_with_the_same_key_refunds_once(lane: Lane) -> None:
    attempt, payment_id = await lane.pay(2000)
    first = await lane.port.refund_payment(DEVICE, attempt, payment_id, 700, "rf-same")
    again = await lane.port.refund_payment(DEVICE, attempt, payment_id, 700, "rf-same")
    assert again.id == first.id
    payment = await lane.port.get_payment(payment_id)
    assert payment.refunded_cents == 700
    assert len(payment.refunds) == 1


async def test_a_repeated_whole_refund_never_refunds_twice(lane: Lane) -> None:
    attempt, payment_id = await lane.pay()
    await lane.port.refund_payment(DEVICE, attempt, payment_id, None, "rf-1")
    if lane.name == "payment-intent":
        # still queued on the terminal: the device refuses a second job
        with pytest.raises(errors.DeviceBusy):
            await lane.port.refund_payment(DEVICE, attempt, payment_id, None, "rf-1")
        await lane.finish()
    with pytest.raises(errors.RefundExceedsBalance) as caught:
        await lane.port.refund_payment(DEVICE, attempt, payment_id, None, "rf-1")
    assert caught.value.refunded_cents == 1500
    payment = await lane.port.get_payment(payment_id)
    assert [r.amount_cents for r in payment.refunds] == [1500]


async def test_over_amount_refund_is_refused_locally(lane: Lane) -> None:
    attempt, payment_id = await lane.pay(1500)
    await lane.port.refund_payment(DEVICE, attempt, payment_id, 1000, "rf-1")
    with pytest.raises(errors.RefundExceedsBalance) as caught:
        await lane.port.refund_payment(DEVICE, attempt, payment_id, 501, "rf-2")
    assert (caught.value.paid_cents, caught.value.refunded_cents) == (1500, 1000)
    with pytest.raises(errors.InvalidRequest):
        await lane.port.refund_payment(DEVICE, attempt, payment_id, 0, "rf-3")
    record = await lane.record()
    assert [p["refunded_cents"] for p in record["payments"]] == [1000]
    assert record["refund_intents"] == []


async def test_a_rejected_payment_cannot_be_refunded(lane: Lane) -> None:
    attempt = await lane.port.create_payment(DEVICE, 1200, REF, REF)
    await lane.finish()
    payment_id = (await lane.port.get_payment_state(attempt)).payment_id
    assert payment_id is not None
    with pytest.raises(errors.InvalidRequest, match="rejected"):
        await lane.port.refund_payment(DEVICE, attempt, payment_id, None, "rf-1")


async def test_a_bad_refund_key_is_refused_before_anything(lane: Lane) -> None:
    attempt, payment_id = await lane.pay()
    with pytest.raises(errors.InvalidRequest, match="idempotency_key"):
        await lane.port.refund_payment(DEVICE, attempt, payment_id, None, "")
    assert (await lane.port.get_payment(payment_id)).refunded_cents == 0
