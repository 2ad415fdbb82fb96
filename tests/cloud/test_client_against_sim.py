"""Every client call against the cloud simulator, over real loopback HTTP."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pointd.cloud import errors
from pointd.cloud.client import PointApiClient
from pointd.cloud.port import AttemptQuery, CloudPort, PaymentIntentBackend
from pointd.cloud.sites import Site
from pointd.sim.cloud import CloudSimulator, SimDevice
from tests.cloud.conftest import DEVICE, OTHER_DEVICE, TOKEN, FakeClock, sim_config

REF = "pd1_shop-1_3_SALE42_1"


async def finish(sim: CloudSimulator) -> None:
    await sim.advance(60)


async def test_list_devices_filters_and_normalises(client: PointApiClient) -> None:
    devices = await client.list_devices()
    assert [d.id for d in devices] == [DEVICE, OTHER_DEVICE]
    # the simulator sends a numeric store id as a JSON int, as Mercado Pago may
    assert devices[0].store_id == "1000001"
    assert [d.id for d in await client.list_devices(store_id="store-b")] == [OTHER_DEVICE]
    assert [d.id for d in await client.list_devices(pos_id=1)] == [DEVICE]


async def test_list_devices_walks_every_page(fake_clock: FakeClock) -> None:
    many = tuple(SimDevice(id=f"PAX_A910__SMARTPOS{n:04d}", pos_id=n) for n in range(1, 124))
    async with (
        CloudSimulator(sim_config(devices=many)) as sim,
        PointApiClient(sim.base_url, TOKEN, clock=fake_clock, sleep=fake_clock.sleep) as api,
    ):
        pages = [page async for page in api.device_pages()]
        devices = await api.list_devices()
    assert [len(p.devices) for p in pages] == [50, 50, 23]
    assert [d.id for d in devices] == [d.id for d in many]


async def test_create_get_and_verify_an_approved_payment(
    sim: CloudSimulator, client: PointApiClient
) -> None:
    created = await client.create_payment_intent(DEVICE, 2550, REF, ticket_number="A-0001")
    assert created.amount == 2550
    assert created.external_reference == REF
    assert (await client.get_payment_intent(created.id)).state == "OPEN"
    await finish(sim)
    intent = await client.get_payment_intent(created.id)
    assert intent.state == "FINISHED"
    assert intent.payment_id is not None
    payment = await client.get_payment(intent.payment_id)
    assert payment.status == "approved"
    assert payment.amount_cents == 2550
    assert payment.currency_id == "ARS"
    assert payment.collector_id == str(sim.config.collector_id)
    assert payment.external_reference == REF
    assert payment.last_four_digits is not None
    assert [p.id for p in await client.search_payments(REF)] == [payment.id]
    assert await client.search_payments("pd1_other_1_X_1") == []


async def test_second_create_on_a_busy_device_is_device_busy(client: PointApiClient) -> None:
    await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    with pytest.raises(errors.DeviceBusy):
        await client.create_payment_intent(DEVICE, 1500, "pd1_shop-1_3_SALE42_2", ticket_number="T")
    # another device is not affected
    await client.create_payment_intent(
        OTHER_DEVICE, 1500, "pd1_shop-1_4_SALE43_1", ticket_number="T"
    )


async def test_cancel_while_open_then_cannot_cancel_after(
    sim: CloudSimulator, client: PointApiClient
) -> None:
    first = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    assert await client.cancel_payment_intent(DEVICE, first.id) == first.id
    assert (await client.get_payment_intent(first.id)).state == "CANCELED"
    second = await client.create_payment_intent(
        DEVICE, 1500, "pd1_shop-1_3_SALE42_2", ticket_number="T"
    )
    await sim.advance(sim.config.delays.take)
    with pytest.raises(errors.CannotCancel):
        await client.cancel_payment_intent(DEVICE, second.id)


async def test_unknown_intent_and_payment_are_not_found(client: PointApiClient) -> None:
    with pytest.raises(errors.NotFound):
        await client.get_payment_intent("00000000-0000-0000-0000-000000000000")
    with pytest.raises(errors.NotFound):
        await client.get_payment("99")
    with pytest.raises(errors.NotFound):
        await client.last_intent_event("nope")


async def test_a_wrong_token_is_unauthorized(sim: CloudSimulator, fake_clock: FakeClock) -> None:
    async with PointApiClient(
        sim.base_url, "TEST-wrong", clock=fake_clock, sleep=fake_clock.sleep
    ) as api:
        with pytest.raises(errors.Unauthorized) as caught:
            await api.list_devices()
    assert "TEST-wrong" not in str(caught.value)


async def test_the_simulator_refuses_what_the_client_would_refuse(
    sim: CloudSimulator, fake_clock: FakeClock
) -> None:
    # a client configured for the wrong site skips the MLA rule; the simulator still applies it
    async with PointApiClient(
        sim.base_url, TOKEN, site=Site.MLM, clock=fake_clock, sleep=fake_clock.sleep
    ) as api:
        with pytest.raises(errors.BadRequest, match="ticket_number"):
            await api.create_payment_intent(DEVICE, 1500, REF)


async def test_events_and_last_event(sim: CloudSimulator, client: PointApiClient) -> None:
    created = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await finish(sim)
    today = sim.world.wall(sim.clock.now()).date()
    events = await client.intent_events(today - timedelta(days=1), today)
    assert [(e.payment_intent_id, e.status) for e in events] == [(created.id, "FINISHED")]
    assert await client.intent_events(today + timedelta(days=1), today + timedelta(days=2)) == []
    last = await client.last_intent_event(created.id)
    assert (last.payment_intent_id, last.status) == (created.id, "FINISHED")
    assert last.created_on is not None
    assert last.created_on.endswith("Z")


async def test_operating_mode_changes_only_after_a_restart(
    sim: CloudSimulator, client: PointApiClient
) -> None:
    assert await client.set_operating_mode(DEVICE, "STANDALONE") == "STANDALONE"
    assert (await client.list_devices(pos_id=1))[0].operating_mode == "PDV"
    sim.world.restart_device(DEVICE)
    assert (await client.list_devices(pos_id=1))[0].operating_mode == "STANDALONE"
    with pytest.raises(errors.BadRequest, match="PDV"):
        await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")


async def test_mode_change_on_a_device_nobody_is_logged_into_is_forbidden(
    fake_clock: FakeClock,
) -> None:
    devices = (SimDevice(id=DEVICE, logged_in=False),)
    async with (
        CloudSimulator(sim_config(devices=devices)) as sim,
        PointApiClient(sim.base_url, TOKEN, clock=fake_clock, sleep=fake_clock.sleep) as api,
    ):
        with pytest.raises(errors.Forbidden):
            await api.set_operating_mode(DEVICE, "PDV")


async def test_integrator_get_and_patch(client: PointApiClient) -> None:
    assert (await client.get_integrator()).event_channel_devices == ()
    await client.patch_integrator(["email"])
    assert (await client.get_integrator()).event_channel_devices == ("email",)


async def test_refund_intent_create_get_finish_and_cancel_rules(
    sim: CloudSimulator, client: PointApiClient
) -> None:
    intent = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await finish(sim)
    payment_id = (await client.get_payment_intent(intent.id)).payment_id
    assert payment_id is not None
    refund = await client.create_refund_intent(DEVICE, payment_id)
    assert (refund.payment_id, refund.device_id) == (payment_id, DEVICE)
    assert (await client.get_refund_intent(refund.id)).state == "OPEN"
    # one queued intent per device, refunds included
    with pytest.raises(errors.DeviceBusy):
        await client.create_payment_intent(DEVICE, 1500, "pd1_shop-1_3_SALE42_2", ticket_number="T")
    await sim.advance(sim.config.delays.take)
    with pytest.raises(errors.CannotCancel):
        await client.cancel_refund_intent(DEVICE, refund.id)
    await finish(sim)
    assert (await client.get_refund_intent(refund.id)).state == "FINISHED"
    payment = await client.get_payment(payment_id)
    assert payment.status == "refunded"
    assert [r.amount_cents for r in payment.refunds] == [1500]


async def test_refund_intent_cancel_while_open(sim: CloudSimulator, client: PointApiClient) -> None:
    intent = await client.create_payment_intent(DEVICE, 1500, REF, ticket_number="T")
    await finish(sim)
    payment_id = (await client.get_payment_intent(intent.id)).payment_id
    assert payment_id is not None
    refund = await client.create_refund_intent(DEVICE, payment_id)
    assert await client.cancel_refund_intent(DEVICE, refund.id) == refund.id
    assert (await client.get_refund_intent(refund.id)).state == "CANCELED"
    with pytest.raises(errors.NotFound):
        await client.create_refund_intent(OTHER_DEVICE, payment_id)


async def test_payment_intent_backend_implements_the_port(
    sim: CloudSimulator, client: PointApiClient
) -> None:
    port: CloudPort = PaymentIntentBackend(client)
    terminals = await port.list_terminals()
    assert [t.id for t in terminals] == [DEVICE, OTHER_DEVICE]
    intent_id = await port.create_payment(DEVICE, 1500, REF, "idem-1", ticket_number="T")
    view = await port.get_payment_state(intent_id)
    assert (view.state, view.is_final, view.amount_cents, view.external_reference) == (
        "OPEN",
        False,
        1500,
        REF,
    )
    await finish(sim)
    view = await port.get_payment_state(intent_id)
    assert view.state == "FINISHED"
    assert view.is_final
    assert view.payment_id is not None
    assert (await port.get_payment(view.payment_id)).status == "approved"
    assert [p.id for p in await port.find_payments(REF)] == [view.payment_id]
    now = sim.world.wall(sim.clock.now()).timestamp()
    found = await port.find_attempt(AttemptQuery(DEVICE, REF, 1500, since=now, now=now))
    assert found.intent is not None
    assert (found.intent.id, found.intent.state) == (intent_id, "FINISHED")
    known = AttemptQuery(
        DEVICE, REF, 1500, since=now, now=now, known_intents=frozenset({intent_id})
    )
    assert [p.id for p in (await port.find_attempt(known)).payments] == [view.payment_id]
    second = await port.create_payment(
        DEVICE, 1500, "pd1_shop-1_3_SALE42_2", "idem-2", ticket_number="T"
    )
    await port.cancel_payment(DEVICE, second)
    assert (await port.get_payment_state(second)).state == "CANCELED"
    assert "TEST-" not in repr(port)


async def test_the_port_fills_mlas_required_ticket_number(
    sim: CloudSimulator, client: PointApiClient
) -> None:
    port = PaymentIntentBackend(client)
    intent_id = await port.create_payment(DEVICE, 1500, REF, "idem-1")
    assert (await client.get_payment_intent(intent_id)).ticket_number == REF
