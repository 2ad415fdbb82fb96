"""Fraud alerts reach the store, through real ``pointd relay`` processes and a real consumer.

- A ``stop_delivery_op_wh`` alert signed over an id other than its ``data.payment_id`` (its
  merchant order, its notification id) is accepted, and the field that matched is stored.
- An event stored before its route is known (a fraud alert, an IPN
  ``delivery_cancellation``, an intent wrapper, an order without its reference) is routed
  when a later event teaches the route, on SQLite and on PostgreSQL, and a
  ``pointd.relay.client.RelayConsumer`` receives it.
- A fraud alert still unroutable after ``delivery.unroutable_alert_after`` raises an alert:
  an error log line, a metric and the admin listing; teaching its route later still
  delivers it and clears the alert.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pointd.cloud.signature import sign
from pointd.relay.client import Delivery, RelayConsumer
from tests.relay.harness import (
    ADMIN_TOKEN,
    IO_TIMEOUT,
    REF_A,
    REF_B,
    SECRET,
    TOKENS,
    Journal,
    seed,
    with_reference,
)
from tests.relay.processes import relay_process, write_config

pytestmark = pytest.mark.slow
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
FRAUD = json.loads(seed("004_fraud_alert.json"))  # data.payment_id 58980959081
IPN_FRAUD = seed("003_fraud_alert_fragment.txt")  # payment_id 23064274473


def fraud_alert(payment_id: int, merchant_order: int, notification_id: str) -> bytes:
    """Seed 004's fraud alert about another payment."""
    body = json.loads(json.dumps(FRAUD))
    body["data"].update(payment_id=payment_id, merchant_order=merchant_order)
    body["id"] = notification_id
    return json.dumps(body).encode()


def intent(intent_id: str, payment_id: int, reference: str) -> bytes:
    """Seed 000's FINISHED intent, renamed, naming another payment, routed by reference."""
    return (
        with_reference(seed("000_intent_finished_mla.json"), reference)
        .replace(b"abcdef123-8ab5-4139-9aa3-abcd123", intent_id.encode())
        .replace(b"123456789", str(payment_id).encode())
    )


def order(order_id: str, reference: str | None, payment_id: str | None = None) -> bytes:
    """An Orders-API ``order`` webhook in the shape Mercado Pago sends (its payment's
    /v1/payments id under ``transactions.payments[].reference.id``)."""
    data: dict[str, Any] = {"id": order_id, "status": "processed", "type": "point"}
    if reference is not None:
        data["external_reference"] = reference
    if payment_id is not None:
        data["transactions"] = {"payments": [{"id": "PAY01AAA", "status": "processed",
                                              "reference": {"id": payment_id}}]}
    return json.dumps({"action": "order.processed", "type": "order", "id": order_id + "-n",
                       "data": data}).encode()


class Sender:
    """Posts notifications to one relay as Mercado Pago would, signed with the secret."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.count = 0

    async def post(
        self, body: bytes, query: dict[str, str] | None = None, signed_id: str | None = None
    ) -> httpx.Response:
        self.count += 1
        request_id = f"rq-{self.count}"
        headers = {"x-request-id": request_id}
        if signed_id is not None:
            headers["x-signature"] = sign(
                SECRET, data_id=signed_id, request_id=request_id, ts=str(int(time.time()))
            )
        return await self.client.post("/mp/webhook", params=query or {}, content=body,
                                      headers=headers)

    async def admin(self, path: str, **params: Any) -> Any:
        answer = await self.client.get(
            path, params=params, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert answer.status_code == 200, answer.text
        return answer.json() if path != "/metrics" else answer.text


def consumer(
    url: str, store: str, journal: Journal, delivery: Delivery = Delivery.STREAM
) -> RelayConsumer:
    return RelayConsumer(
        url, store, TOKENS[store], journal, journal, webhook_secret=SECRET,
        delivery=delivery, long_poll_wait=1.0, canary_interval=3600.0,
    )


def gauge(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not on the page")


async def test_a_fraud_alert_signed_over_another_of_its_ids_is_accepted(tmp_path: Path) -> None:
    async with (
        relay_process(write_config(tmp_path, "sqlite", None)) as (_process, url, _log),
        httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as client,
    ):
        sender = Sender(client)
        routed = await sender.post(intent("i-1", 7001, REF_A), signed_id="i-1")
        assert routed.status_code == 200, routed.text
        query = {"type": "stop_delivery_op_wh"}
        cases = [  # (signed id, the field it names)
            ("7001", "data.payment_id"),
            ("249940988000", "data.merchant_order"),
            ("n-77", "id"),
        ]
        for signed_id, _field in cases:
            answer = await sender.post(
                fraud_alert(7001, 249940988000, "n-77"),
                {**query, "data.id": signed_id},
                signed_id=signed_id,
            )
            assert answer.status_code == 200, (signed_id, answer.text)
        foreign = await sender.post(
            fraud_alert(7001, 249940988000, "n-78"), {**query, "data.id": "999"}, signed_id="999"
        )
        assert foreign.status_code == 401, foreign.text
        stream = await client.get(
            "/stores/store-a/events", headers={"authorization": f"Bearer {TOKENS['store-a']}"}
        )
    alerts = [e for e in stream.json()["events"] if e["topic"] == "stop_delivery_op_wh"]
    assert [(e["query"]["data.id"], e["signed_field"], e["signed"]) for e in alerts] == [
        (signed_id, field, True) for signed_id, field in cases
    ]
    assert {e["id_source"] for e in alerts} == {"query"}


@pytest.mark.parametrize("delivery", list(Delivery))
@pytest.mark.parametrize("backend_name", BACKENDS)
async def test_events_that_arrive_before_their_route_reach_the_store_that_it_names(
    tmp_path: Path, backend_name: str, delivery: Delivery, request: pytest.FixtureRequest
) -> None:
    dsn = request.getfixturevalue("postgres_dsn") if backend_name == "postgres" else None
    journals = {"store-a": Journal(), "store-b": Journal()}
    async with (
        relay_process(write_config(tmp_path, backend_name, dsn)) as (_process, url, log),
        httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as client,
    ):
        consumers = [
            consumer(url, store, journal, delivery) for store, journal in journals.items()
        ]
        running = [asyncio.create_task(c.run()) for c in consumers]
        sender = Sender(client)
        early = [  # each waits for a route that nothing has taught yet
            (fraud_alert(8001, 1, "n-1"), {"data.id": "8001", "type": "stop_delivery_op_wh"},
             "8001"),
            (IPN_FRAUD, {"topic": "delivery_cancellation", "id": "4945357007"}, None),
            (json.dumps({"type": "point_integration_wh", "data": {"id": "i-2"}}).encode(),
             {"data.id": "i-2", "type": "point_integration_wh"}, "i-2"),
            (order("ORD01AAA", None), {"data.id": "ORD01AAA", "type": "order"}, "ORD01AAA"),
        ]
        for body, query, signed_id in early:
            answer = await sender.post(body, query, signed_id)
            assert answer.status_code == 200, answer.text
        waiting = (await sender.admin("/admin/events", status="unrouted"))["events"]
        assert len(waiting) == len(early)
        # The intent teaches intent:i-2 and payment:8001, another intent (store-b) the IPN's
        # payment, and the order with its reference the order id.
        teachers = [
            (intent("i-2", 8001, REF_A), {}, "i-2"),
            (intent("i-3", 23064274473, REF_B), {}, "i-3"),
            (order("ORD01AAA", REF_A), {"data.id": "ORD01AAA", "type": "order"}, "ORD01AAA"),
        ]
        for body, query, signed_id in teachers:
            answer = await sender.post(body, query, signed_id)
            assert answer.status_code == 200, answer.text
        await journals["store-a"].wait_for(5)
        await journals["store-b"].wait_for(2)
        got_a, got_b = journals["store-a"].events, journals["store-b"].events
        assert (await sender.admin("/admin/events", status="unrouted"))["events"] == []
        rerouted = await log.wait_for("events_rerouted")
        for c in consumers:
            c.stop()
        await asyncio.wait_for(asyncio.gather(*running), IO_TIMEOUT)
        for c in consumers:
            await c.close()
    assert rerouted["level"] == "info"
    assert [e["asks"] for e in waiting] == [
        "payment:8001", "payment:23064274473", "intent:i-2", "intent:ORD01AAA",
    ]
    assert sorted((e.topic or "", e.query.get("data.id", "")) for e in got_a) == sorted([
        ("point_integration_wh", ""),  # the teaching intent
        ("stop_delivery_op_wh", "8001"),
        ("point_integration_wh", "i-2"),
        ("order", "ORD01AAA"),
        ("order", "ORD01AAA"),
    ])
    assert [(e.kind, e.topic) for e in got_b] == [
        ("intent", "point_integration_wh"),
        ("ipn", "delivery_cancellation"),
    ]
    # The daemon re-checks signatures itself: IPN is unsigned, the rest verify.
    assert [e.verified for e in got_b] == [True, None]
    assert all(e.verified for e in got_a)
    [alert] = [e for e in got_a if e.topic == "stop_delivery_op_wh"]
    assert alert.signed_field == "data.payment_id"


@pytest.mark.parametrize("backend_name", BACKENDS)
async def test_a_fraud_alert_on_an_orders_api_payment_reaches_the_orders_store(
    tmp_path: Path, backend_name: str, request: pytest.FixtureRequest
) -> None:
    # With the Orders API the store learns its payment ids only from order webhooks: the
    # fraud alert names nothing else, so the order must have taught the route.
    dsn = request.getfixturevalue("postgres_dsn") if backend_name == "postgres" else None
    journal = Journal()
    async with (
        relay_process(write_config(tmp_path, backend_name, dsn)) as (_process, url, _log),
        httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as client,
    ):
        store_a = consumer(url, "store-a", journal)
        running = asyncio.create_task(store_a.run())
        sender = Sender(client)
        order_query = {"data.id": "ORD01BBB", "type": "order"}
        taught = await sender.post(order("ORD01BBB", REF_A, "9100"), order_query, "ORD01BBB")
        assert taught.status_code == 200, taught.text
        alert = await sender.post(fraud_alert(9100, 1, "n-9"),
                                  {"data.id": "9100", "type": "stop_delivery_op_wh"}, "9100")
        assert alert.status_code == 200, alert.text
        await journal.wait_for(2)
        unrouted = (await sender.admin("/admin/events", status="unrouted"))["events"]
        store_a.stop()
        await asyncio.wait_for(running, IO_TIMEOUT)
        await store_a.close()
    assert unrouted == []
    assert [(e.topic, e.query.get("data.id")) for e in journal.events] == [
        ("order", "ORD01BBB"), ("stop_delivery_op_wh", "9100"),
    ]


@pytest.mark.parametrize("backend_name", BACKENDS)
async def test_a_fraud_alert_left_unroutable_raises_an_alert_until_its_route_is_taught(
    tmp_path: Path, backend_name: str, request: pytest.FixtureRequest
) -> None:
    dsn = request.getfixturevalue("postgres_dsn") if backend_name == "postgres" else None
    config = write_config(tmp_path, backend_name, dsn, "[delivery]\nunroutable_alert_after = 1\n")
    journal = Journal()
    async with (
        relay_process(config) as (_process, url, log),
        httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as client,
    ):
        sender = Sender(client)
        alert = await sender.post(
            fraud_alert(9001, 2, "n-9"), {"data.id": "9001", "type": "stop_delivery_op_wh"},
            signed_id="9001",
        )
        assert alert.status_code == 200
        # An unroutable notification that is not a fraud alert raises nothing.
        payment = json.dumps({"type": "payment", "data": {"id": "9002"}}).encode()
        assert (await sender.post(payment, {"data.id": "9002", "type": "payment"},
                                  signed_id="9002")).status_code == 200
        line = await log.wait_for("fraud_alert_unroutable")
        listed = (await sender.admin("/admin/events", status="alerted"))["events"]
        public = (await client.get("/metrics")).text
        assert gauge(public, "pointd_relay_unroutable_fraud_alerts") == 1
        assert gauge(public, "pointd_relay_fraud_alerts_alerted_total") == 1
        running = consumer(url, "store-a", journal)
        task = asyncio.create_task(running.run())
        taught = await sender.post(intent("i-9", 9001, REF_A), signed_id="i-9")
        assert taught.status_code == 200
        await journal.wait_for(2)
        got = journal.events
        after = (await client.get("/metrics")).text
        still = (await sender.admin("/admin/events", status="alerted"))["events"]
        running.stop()
        await asyncio.wait_for(task, IO_TIMEOUT)
        await running.close()
    assert line["level"] == "error"
    assert line["waits_for"] == "payment:9001"
    assert line["event_id"] == alert.json()["event"]
    assert [(e["id"], e["topic"]) for e in listed] == [
        (alert.json()["event"], "stop_delivery_op_wh")
    ]
    assert listed[0]["alerted_at"] is not None
    assert [e.topic for e in got] == ["stop_delivery_op_wh", "point_integration_wh"] or [
        e.topic for e in got
    ] == ["point_integration_wh", "stop_delivery_op_wh"]
    assert gauge(after, "pointd_relay_unroutable_fraud_alerts") == 0
    assert gauge(after, "pointd_relay_rerouted_events_total") == 1
    assert still == []
