"""Orders-API ``order`` notifications route to their store by ``data.external_reference``.

The body is the shape the cloud simulator sends (docs/simulator.md, "Orders API"), signed
over the lower-cased order id as the simulator signs it by default.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from pointd.cloud.signature import sign
from pointd.relay.notification import Kind, classify, intent_key, payment_key
from tests.relay.harness import REF_A, REF_B, RunningRelay

ORDER_A = "ORD01JQ4S4KY8HWQ6NA5PXB65B3D3"
ORDER_B = "ORD01JQ4S4KY8HWQ6NA5PXB65B3ZZ"


def order_body(order_id: str, reference: str | None, status: str = "processed",
               notification_id: str = "1") -> bytes:
    data: dict[str, Any] = {"id": order_id, "status": status, "type": "point",
                            "total_amount": "15.00"}
    if reference is not None:
        data["external_reference"] = reference
    return json.dumps({"action": f"order.{status}", "api_version": "v1",
                       "application_id": "1234567890", "date_created": "2026-11-22T04:00:00Z",
                       "id": notification_id, "live_mode": False, "type": "order",
                       "user_id": "123456789", "data": data}).encode()


def query(order_id: str) -> dict[str, str]:
    return {"data.id": order_id, "type": "order"}


def test_an_order_with_our_reference_names_its_store_and_teaches_its_id() -> None:
    classified = classify(order_body(ORDER_A, REF_A), query(ORDER_A))
    assert classified.kind is Kind.WEBHOOK
    assert classified.topic == "order"
    assert classified.store == "store-a"
    assert classified.asks == intent_key(ORDER_A)
    assert classified.teaches == (intent_key(ORDER_A),)


def test_an_order_webhook_as_mercado_pago_sends_it_teaches_its_payments() -> None:
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "mercadopago" / "real" / (
        "order_webhook_processed.json")
    body = json.dumps(json.loads(fixture.read_text(encoding="utf-8"))["body"]).encode()
    classified = classify(body, query("ORD01K6Z3TV9CQ2B8M4XG7H5JWN0E"))
    # transactions.payments[].reference.id: the /v1/payments id a fraud alert will name.
    assert payment_key("123456789") in classified.teaches


def test_an_order_names_its_payments_as_the_orders_api_spells_them_too() -> None:
    document = json.loads(order_body(ORDER_A, REF_A))
    document["data"]["transactions"] = {"payments": [{"id": "PAY1", "reference_id": "555"}]}
    classified = classify(json.dumps(document).encode(), query(ORDER_A))
    assert classified.teaches == (intent_key(ORDER_A), payment_key("555"))


def test_an_order_without_a_reference_asks_for_its_id() -> None:
    classified = classify(order_body(ORDER_A, None), query(ORDER_A))
    assert classified.store is None
    assert classified.asks == intent_key(ORDER_A)
    bodiless = classify(b"", query(ORDER_A))
    assert bodiless.asks == intent_key(ORDER_A)


def test_a_reference_not_in_our_format_routes_nowhere() -> None:
    for reference in ("information", "pd1_Store_1_S_1", "pd2_store-a_1_S1_1", ""):
        assert classify(order_body(ORDER_A, reference), query(ORDER_A)).store is None


async def _post(relay: RunningRelay, body: bytes, order_id: str, request_id: str) -> None:
    ts = str(int(relay.clock.now * 1000))
    signature = sign(relay.secret, data_id=order_id.lower(), request_id=request_id, ts=ts)
    response = await relay.post_signed(body, query=query(order_id), request_id=request_id,
                                       signature=signature)
    assert response.status_code == 200, response.text


async def test_orders_reach_their_stores_and_a_later_bare_one_follows_the_order(
        relay: RunningRelay) -> None:
    await _post(relay, order_body(ORDER_A, REF_A, "at_terminal", "1"), ORDER_A, "r1")
    await _post(relay, order_body(ORDER_B, REF_B, "processed", "2"), ORDER_B, "r2")
    # A later notification names only the order: the id learned above routes it.
    await _post(relay, order_body(ORDER_A, None, "processed", "3"), ORDER_A, "r3")
    # An order nobody taught, without a reference: kept for operators, not guessed.
    await _post(relay, order_body("ORD01UNKNOWN00000000000000", None, "processed", "4"),
                "ORD01UNKNOWN00000000000000", "r4")

    events_a = await relay.events("store-a")
    assert [(e["topic"], e["signed"]) for e in events_a] == [("order", True), ("order", True)]
    statuses = [json.loads(base64.b64decode(e["body_b64"]))["data"]["status"] for e in events_a]
    assert statuses == ["at_terminal", "processed"]
    assert [e["topic"] for e in await relay.events("store-b")] == ["order"]
    unrouted = (await relay.admin("GET", "/admin/events")).json()["events"]
    assert [e["query"]["data.id"] for e in unrouted] == ["ORD01UNKNOWN00000000000000"]
