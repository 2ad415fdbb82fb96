"""The simulator answers the situations of tests/fixtures/mercadopago/real/ as Mercado Pago does.

For each real body, the test drives the simulator into the same situation over HTTP and
compares: an error must have the same shape (the same keys at every level) and the same
code; an answer must carry every key of the real body, with the same JSON type, at every
level, and the same status and status_detail values. A few real bodies describe
situations the simulator never produces (REAL_ONLY, listed in docs/simulator.md).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pointd.sim.cloud import CloudSimulator, SimDevice
from tests.sim_cloud.conftest import (
    DEVICE,
    EVENT_WAIT,
    TOKEN,
    Receiver,
    SimFactory,
    advance,
)

REAL = Path(__file__).parent.parent / "fixtures" / "mercadopago" / "real"
FIXTURES = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in REAL.glob("*.json")}
AUTH = {"authorization": f"Bearer {TOKEN}"}
SAME_POS = "NEWLAND_N950__N950NCB801293324"
SHY = "NEWLAND_N950__N950NCB000000002"
UNKNOWN_ORDER = "ORD00000000000000000000000000"
INTENTS = "/point/integration-api"
# Real bodies for situations the simulator does not produce (docs/simulator.md).
REAL_ONLY = frozenset(
    {
        "orders_create_500_idempotency_validation",
        "orders_refund_409_in_progress",
        "orders_refund_409_movements_pending",
        "orders_refund_425_not_yet_enabled",
        "orders_refund_428_insufficient_money",
        "orders_refund_409_period_exceeded",
        "orders_refund_422_not_refundable",
        "terminals_setup_403_not_allowed",
        "terminals_list_200_empty",
    }
)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _carries(real: Any, sim: Any, where: str = "") -> list[str]:
    """Where ``sim`` lacks a key of ``real`` or has it with another JSON type."""
    if _kind(real) != _kind(sim):
        return [f"{where or '.'}: {_kind(real)} in the real body, {_kind(sim)} in the simulator"]
    if isinstance(real, dict):
        problems = []
        for key, value in real.items():
            if key not in sim:
                problems.append(f"{where}.{key}: missing")
            else:
                problems.extend(_carries(value, sim[key], f"{where}.{key}"))
        return problems
    if isinstance(real, list) and real and sim:
        return _carries(real[0], sim[0], f"{where}[0]")
    return []


def _keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_keys(value[0])] if value else []
    return _kind(value)


def order_body(cents: str = "15.00", ref: str = "ref_1", terminal: str = DEVICE) -> dict[str, Any]:
    return {
        "type": "point",
        "external_reference": ref,
        "transactions": {"payments": [{"amount": cents}]},
        "config": {"point": {"terminal_id": terminal}},
    }


class Driver:
    """Raw HTTP to the simulator, with the few steps the situations share."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.keys = 0

    def key(self) -> dict[str, str]:
        self.keys += 1
        return dict(AUTH, **{"x-idempotency-key": f"key-{self.keys}"})

    async def create(self, cents: str = "15.00", **extra: Any) -> httpx.Response:
        body = order_body(cents, **extra)
        return await self.http.post("/v1/orders", json=body, headers=self.key())

    async def order(self, cents: str = "15.00", *, run: float = 0.0, **extra: Any) -> str:
        created = await self.create(cents, **extra)
        assert created.status_code == 201, created.text
        if run:
            await advance(self.http, run)
        order_id: str = created.json()["id"]
        return order_id

    async def get(self, order_id: str) -> httpx.Response:
        return await self.http.get(f"/v1/orders/{order_id}", headers=AUTH)

    async def cancel(self, order_id: str, **headers: str) -> httpx.Response:
        return await self.http.post(
            f"/v1/orders/{order_id}/cancel", headers=dict(self.key(), **headers)
        )

    async def refund(self, order_id: str, body: Any = None) -> httpx.Response:
        return await self.http.post(f"/v1/orders/{order_id}/refund", json=body, headers=self.key())

    async def scenario(self, **rule: Any) -> None:
        answer = await self.http.post("/_sim/scenarios", json=rule)
        assert answer.status_code == 201, answer.text

    async def setup(self, terminal: str) -> httpx.Response:
        body = {"terminals": [{"id": terminal, "operating_mode": "PDV"}]}
        return await self.http.patch("/terminals/v1/setup", json=body, headers=AUTH)

    async def intent(self, amount: int = 1500) -> httpx.Response:
        info = {"external_reference": "r", "print_on_terminal": True, "ticket_number": "T"}
        body = {"amount": amount, "additional_info": info}
        return await self.http.post(
            f"{INTENTS}/devices/{DEVICE}/payment-intents", json=body, headers=AUTH
        )


Situation = Callable[[Driver], Awaitable[httpx.Response]]


async def _busy(d: Driver) -> httpx.Response:
    await d.order()
    return await d.create(ref="ref_2")


async def _key_reused(d: Driver) -> httpx.Response:
    headers = d.key()
    await d.http.post("/v1/orders", json=order_body(), headers=headers)
    return await d.http.post("/v1/orders", json=order_body("16.00"), headers=headers)


async def _cannot_cancel(d: Driver) -> httpx.Response:
    return await d.cancel(await d.order(run=2.0))


async def _already_canceled(d: Driver) -> httpx.Response:
    order_id = await d.order()
    await d.cancel(order_id)
    return await d.cancel(order_id)


async def _cancel_at_terminal(d: Driver) -> httpx.Response:
    return await d.cancel(await d.order(run=2.0), **{"x-allow-cancelable-status": "at_terminal"})


async def _already_refunded(d: Driver) -> httpx.Response:
    order_id = await d.order(run=10.0)
    await d.refund(order_id)
    return await d.refund(order_id)


async def _transaction_of(d: Driver, order_id: str) -> str:
    payment_id: str = (await d.get(order_id)).json()["transactions"]["payments"][0]["id"]
    return payment_id


async def _partial(d: Driver, order_id: str, amount: str) -> httpx.Response:
    transaction = await _transaction_of(d, order_id)
    return await d.refund(order_id, {"transactions": [{"id": transaction, "amount": amount}]})


async def _amount_exceeds(d: Driver) -> httpx.Response:
    return await _partial(d, await d.order(run=10.0), "99.00")


async def _tips(d: Driver) -> httpx.Response:
    await d.scenario(amount=1500, tip_cents=200)
    return await _partial(d, await d.order(run=10.0), "5.00")


async def _tipped_order(d: Driver) -> httpx.Response:
    await d.scenario(amount=1500, tip_cents=200)
    return await d.get(await d.order(run=10.0))


async def _partial_refund(d: Driver) -> httpx.Response:
    return await _partial(d, await d.order(run=10.0), "5.00")


async def _cannot_refund(d: Driver) -> httpx.Response:
    return await d.refund(await d.order())


async def _outcome(d: Driver, amount: str, seconds: float = 10.0) -> httpx.Response:
    return await d.get(await d.order(amount, run=seconds))


async def _declined_high_risk(d: Driver) -> httpx.Response:
    await d.scenario(amount=1500, outcome="finished_rejected", decline_detail="high_risk")
    return await _outcome(d, "15.00")


async def _terminal_owner(d: Driver) -> httpx.Response:
    return await d.create(terminal="PAX_A910__NOT0MINE")


async def _queued_intent(d: Driver) -> httpx.Response:
    await d.intent()
    return await d.intent()


async def _intent_blocked(d: Driver) -> httpx.Response:
    intent_id = (await d.intent()).json()["id"]
    await advance(d.http, 2.0)
    path = f"{INTENTS}/devices/{DEVICE}/payment-intents/{intent_id}"
    return await d.http.delete(path, headers=AUTH)


async def _intent_events(d: Driver) -> httpx.Response:
    await d.intent()
    await d.order(terminal=SAME_POS)
    return await d.http.get(
        f"{INTENTS}/payment-intents/events",
        params={"startDate": "2026-09-01", "endDate": "2026-09-30"},
        headers=AUTH,
    )


SITUATIONS: dict[str, Situation] = {
    "orders_create_409_terminal_busy": _busy,
    "orders_create_409_key_reused": _key_reused,
    "orders_create_403_terminal_owner": _terminal_owner,
    "orders_get_404_not_found": lambda d: d.get(UNKNOWN_ORDER),
    "orders_get_400_invalid_path_param": lambda d: d.get("not-an-id"),
    "orders_401_flat": lambda d: d.http.get(f"/v1/orders/{UNKNOWN_ORDER}"),
    "orders_cancel_409_cannot_cancel": _cannot_cancel,
    "orders_cancel_409_already_canceled": _already_canceled,
    "orders_refund_403_tips": _tips,
    "orders_refund_409_already_refunded": _already_refunded,
    "orders_refund_409_cannot_refund": _cannot_refund,
    "orders_refund_400_amount_exceeds": _amount_exceeds,
    "terminals_setup_412_one_pdv": lambda d: d.setup(SAME_POS),
    "terminals_setup_403_store_pos": lambda d: d.setup(SHY),
    "intent_create_409_queued": _queued_intent,
    "intent_cancel_409_blocked": _intent_blocked,
    "intent_401_invalid_token": lambda d: d.http.get(f"{INTENTS}/payment-intents/x"),
    "intent_events_400_dates": lambda d: d.http.get(
        f"{INTENTS}/payment-intents/events", headers=AUTH
    ),
    "orders_create_201": lambda d: d.create(),
    "orders_get_processed_with_tip": _tipped_order,
    "orders_get_action_required": lambda d: _outcome(d, "14.01"),
    "orders_get_failed_high_risk": _declined_high_risk,
    "orders_get_canceled_on_terminal": lambda d: _outcome(d, "15.01"),
    "orders_cancel_200_at_terminal": _cancel_at_terminal,
    "orders_refund_partial_201": _partial_refund,
    "terminals_list_200": lambda d: d.http.get("/terminals/v1/list", headers=AUTH),
    "terminals_setup_200": lambda d: d.setup(DEVICE),
    "intent_create_201": lambda d: d.intent(),
    "intent_events_200": _intent_events,
}


def test_every_real_fixture_is_compared_or_listed_as_real_only() -> None:
    compared = set(SITUATIONS) | {"order_webhook_processed"}
    assert compared | REAL_ONLY == set(FIXTURES)
    assert not compared & REAL_ONLY


async def _start(start_sim: SimFactory, receiver: Receiver) -> CloudSimulator:
    # DEVICE and SAME_POS share a store and POS, so that the one-PDV rule has a case.
    devices = (
        SimDevice(id=DEVICE, store_id="1000001", pos_id=1),
        SimDevice(id=SAME_POS, store_id="1000001", pos_id=1),
        SimDevice(id=SHY, store_id="1000002", pos_id=2, logged_in=False),
    )
    return await start_sim(receiver.url, devices=devices, start_time=1_789_000_000.0)


@pytest.mark.parametrize("name", sorted(SITUATIONS))
async def test_the_simulator_answers_like_the_real_body(
    name: str, start_sim: SimFactory, receiver: Receiver
) -> None:
    doc = FIXTURES[name]
    sim = await _start(start_sim, receiver)
    if name == "terminals_setup_200":
        sim.world.devices[SAME_POS].operating_mode = "STANDALONE"
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=EVENT_WAIT) as http:
        answer = await SITUATIONS[name](Driver(http))
    real, got = doc["body"], answer.json()
    assert answer.status_code == doc["status"], answer.text
    if "decision" in doc:
        assert _keys(got) == _keys(real), answer.text
        assert _first_code(got) == _first_code(real)
        return
    assert _carries(real, got) == [], answer.text
    _same_states(real, got)


def _first_code(body: dict[str, Any]) -> str:
    if "errors" in body:
        code: str = body["errors"][0]["code"]
        return code
    return str(body.get("code") or body.get("error"))


def _same_states(real: dict[str, Any], got: dict[str, Any]) -> None:
    if "status" in real and "transactions" in real:
        assert (got["status"], got["status_detail"]) == (real["status"], real["status_detail"])
        real_payment = real["transactions"]["payments"][0]
        payment = got["transactions"]["payments"][0]
        assert (payment["status"], payment["status_detail"]) == (
            real_payment["status"],
            real_payment["status_detail"],
        )


async def test_order_notifications_have_the_real_body(
    start_sim: SimFactory, receiver: Receiver
) -> None:
    sim = await _start(start_sim, receiver)
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=EVENT_WAIT) as http:
        await Driver(http).order(run=10.0)
    (hook,) = await receiver.wait_for(1)
    real = FIXTURES["order_webhook_processed"]["body"]
    # payment_method is the card the customer used: the simulator has none to tell.
    real_payment = real["data"]["transactions"]["payments"][0]
    expected = {k: v for k, v in real_payment.items() if k != "payment_method"}
    real = dict(real, data=dict(real["data"], transactions={"payments": [expected]}))
    assert _carries(real, hook.body) == []
    assert _keys(hook.body) == _keys(real)
    assert hook.query == {"data.id": hook.body["data"]["id"], "type": "order"}


async def test_the_intent_events_list_holds_no_orders(
    start_sim: SimFactory, receiver: Receiver
) -> None:
    sim = await _start(start_sim, receiver)
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=EVENT_WAIT) as http:
        listed = (await _intent_events(Driver(http))).json()["events"]
    intents = [i.id for i in sim.world.intents.values() if i.api == "intent"]
    assert [e["payment_intent_id"] for e in listed] == intents
    assert len(sim.world.intents) == 2
