"""Mercado Pago's own bodies (tests/fixtures/mercadopago/real/) through the client.

Every error body goes through the client's transport and error tree over an httpx
MockTransport, and must raise the decision its fixture names; every answer body goes
through the model that reads it. The fixtures name their source and how sure it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from pointd.cloud import errors
from pointd.cloud.client import PointApiClient
from pointd.cloud.models import IntentEvent, PaymentIntent
from pointd.cloud.order_backend import order_view
from pointd.cloud.orders import Order, OrderPayment, TerminalPage
from pointd.cloud.wire import CallKind
from tests.cloud.conftest import TOKEN, FakeClock

REAL = Path(__file__).parent.parent / "fixtures" / "mercadopago" / "real"
FIXTURES = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in REAL.glob("*.json")}
ERRORS = sorted(name for name, doc in FIXTURES.items() if "decision" in doc)
ANSWERS = sorted(name for name, doc in FIXTURES.items() if doc.get("parse_as"))
METHOD = {
    CallKind.READ: "GET",
    CallKind.CREATE: "POST",
    CallKind.CANCEL: "POST",
    CallKind.UPDATE: "PATCH",
    CallKind.REFUND: "POST",
}


def test_every_fixture_names_its_source_and_confidence() -> None:
    assert len(ERRORS) >= 20
    assert len(ANSWERS) >= 10
    for name, doc in FIXTURES.items():
        assert doc["source"].strip(), name
        assert doc["confidence"].split()[0].rstrip(":;") in {"high", "medium", "low"}, name


async def _answer(status: int, body: Any, kind: CallKind, clock: FakeClock) -> BaseException:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    async with PointApiClient(
        "https://api.example.test",
        TOKEN,
        clock=clock,
        sleep=clock.sleep,
        random=lambda: 0.5,
        transport=httpx.MockTransport(handler),
        max_get_attempts=1,
    ) as client:
        call = (
            client.get_json("/v1/orders/ORD1")
            if kind is CallKind.READ
            else client.send_json(METHOD[kind], "/v1/orders", "/v1/orders", {}, kind)
        )
        with pytest.raises(errors.CloudError) as caught:
            await call
    return caught.value


@pytest.mark.parametrize("name", ERRORS)
async def test_each_real_error_body_leads_to_its_decision(name: str, fake_clock: FakeClock) -> None:
    doc = FIXTURES[name]
    raised = await _answer(doc["status"], doc["body"], CallKind(doc["call"]), fake_clock)
    assert type(raised).__name__ == doc["decision"], raised
    if isinstance(raised, errors.Rejected):
        assert raised.status == doc["status"]
        assert raised.error, "the code must be read from the body"
        assert TOKEN not in str(raised)


def _read(doc: dict[str, Any]) -> dict[str, Any]:
    body = doc["body"]
    kind = doc["parse_as"]
    if kind == "Order":
        order = Order.from_json(body)
        payment = order.payment
        assert payment is not None
        order_view(order)  # every documented status maps without raising
        return {
            "status": order.status,
            "detail": order.status_detail,
            "payment_status": payment.status,
            "payment_detail": payment.status_detail,
            "reference_id": payment.reference_id,
            "paid_cents": payment.paid_cents,
            "tip_cents": payment.tip_cents,
            "refunds": len(order.refunds),
        }
    if kind == "OrderNotification":
        payment = OrderPayment.from_json(body["data"]["transactions"]["payments"][0])
        return {"reference_id": payment.reference_id, "payment_detail": payment.status_detail}
    if kind == "TerminalPage":
        page = TerminalPage.from_json(body)
        modes = [t.operating_mode for t in page.terminals]
        return {"terminals": len(page.terminals), "mode": modes[0] if modes else None}
    if kind == "PaymentIntent":
        return {"amount": PaymentIntent.from_json(body).amount}
    assert kind == "IntentEvents"
    return {"events": len([IntentEvent.from_json(e) for e in body["events"]])}


@pytest.mark.parametrize("name", ANSWERS)
def test_each_real_answer_parses_to_the_documented_facts(name: str) -> None:
    doc = FIXTURES[name]
    facts = _read(doc)
    for key, expected in doc["expect"].items():
        assert facts[key] == expected, (name, key)
