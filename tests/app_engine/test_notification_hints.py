"""Every relayed notification is a fetch hint: the API's answer, never the body, decides.

The engine, its journal and the core are real; the cloud is the scripted fake of
``test_idempotent_reconcile``; the relayed events are classified by the relay's own
classifier, as in production.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from pointd.app.notifications import NotificationHandler, read_notification
from pointd.cloud.errors import OutcomeUnknown, ServerError
from pointd.cloud.port import IntentView
from pointd.core.events import FraudAlerted, IntentObserved, ObservationSource
from pointd.core.states import SaleState
from pointd.relay.client import RelayEvent
from pointd.relay.notification import classify
from tests.app_engine.test_idempotent_reconcile import (
    CENTS,
    PAYMENT,
    REFERENCE,
    Rig,
    approved_payment,
    make_rig,
)

INTENT = "7d8c70b6-2ac8-4c57-a441-c319088ca3ca"
FOREIGN_PAYMENT = "22200000001"


def relayed(body: bytes, query: dict[str, str], event_id: int = 1) -> RelayEvent:
    classified = classify(body, query)
    return RelayEvent(id=event_id, cursor=event_id, kind=classified.kind.value,
                      topic=classified.topic, received_at=0.0, parse=classified.parse.value,
                      signed=True, id_source="data.id", query=query, headers={}, body=body)


def intent_body(state: str, payment_id: str | None = None,
                reference: str = REFERENCE) -> bytes:
    body: dict[str, Any] = {"id": INTENT, "state": state, "created_at": "2026-11-22 10:00:00",
                            "additional_info": {"external_reference": reference}}
    if payment_id is not None:
        body["payment"] = {"id": int(payment_id), "state": "approved", "type": "credit_card"}
    return json.dumps(body).encode()


def view(state: str, payment_id: str | None = None) -> IntentView:
    return IntentView(INTENT, state, payment_id, None, REFERENCE, CENTS)


@pytest.mark.parametrize("state", ["FINISHED", "CONFIRMATION_REQUIRED", "CANCELED", "OPEN"])
def test_an_intent_body_is_read_only_for_its_id_and_reference(state: str) -> None:
    reading = read_notification(relayed(intent_body(state, FOREIGN_PAYMENT),
                                        {"data.id": INTENT, "type": "point_integration_wh"}))
    assert reading.events == ()
    assert reading.intent_hints == (INTENT,)
    assert reading.reference == REFERENCE
    assert reading.payment_hints == ()


@pytest.mark.parametrize(("topic", "body", "query"), [
    ("stop_delivery_op_wh",
     {"type": "stop_delivery_op_wh", "data": {"id": "ALERT-1", "payment_id": int(PAYMENT)}},
     {"type": "stop_delivery_op_wh", "data.id": "ALERT-1"}),
    # IPN (seed 003): the resource id is in the query; the body may be anything.
    ("delivery_cancellation", {}, {"topic": "delivery_cancellation", "id": PAYMENT}),
    ("delivery_cancellation", {"resource": PAYMENT, "topic": "delivery_cancellation"},
     {"topic": "delivery_cancellation", "id": PAYMENT}),
])
def test_both_fraud_topics_name_the_payment(topic: str, body: dict[str, Any],
                                           query: dict[str, str]) -> None:
    reading = read_notification(relayed(json.dumps(body).encode(), query))
    assert reading.events == (FraudAlerted(PAYMENT),), topic


def test_a_fraud_alert_without_a_usable_payment_id_is_only_noted() -> None:
    for query in ({"topic": "delivery_cancellation"},
                  {"topic": "delivery_cancellation", "id": "not-a-payment"}):
        reading = read_notification(relayed(b"{}", query))
        assert reading.events == ()
        assert "delivery_cancellation" in reading.note


async def open_sale(tmp_path: Path) -> Rig:
    rig = make_rig(tmp_path, idempotent=False, answers=[INTENT])
    rig.cloud.intents[INTENT] = view("OPEN")
    await rig.start_sale()
    await rig.until("the intent", lambda: rig.sale().intent_id == INTENT)
    return rig


async def test_a_finished_body_naming_another_payment_is_answered_by_the_api(
        tmp_path: Path) -> None:
    rig = await open_sale(tmp_path)
    journal = rig.engine.journal
    await NotificationHandler(rig.engine, journal)(
        [relayed(intent_body("FINISHED", FOREIGN_PAYMENT), {"data.id": INTENT})], 1)
    await rig.until("the fetch answered", lambda: rig.kinds()[-1] == "IntentObserved")
    assert rig.cloud.called("get_state")[-1] == INTENT
    assert rig.cloud.called("get_payment") == []
    assert (rig.sale().state, rig.sale().payment_id) == (SaleState.OPEN, None)
    assert journal.notification_seen("relay:1")

    # The API says FINISHED with the real payment: that one, and only it, is verified.
    rig.cloud.intents[INTENT] = view("FINISHED", PAYMENT)
    rig.cloud.payments[PAYMENT] = approved_payment()
    await NotificationHandler(rig.engine, journal)(
        [relayed(intent_body("FINISHED", FOREIGN_PAYMENT), {"data.id": INTENT}, 2)], 2)
    await rig.until("approval", lambda: rig.sale().state is SaleState.APPROVED)
    assert rig.cloud.called("get_payment") == [PAYMENT]
    assert rig.sale().approved_payment_id == PAYMENT
    sources = {e.source for _s, _a, e in rig.engine.journal.replay()
               if isinstance(e, IntentObserved)}
    assert sources == {ObservationSource.POLL}
    await rig.engine.stop()


async def test_a_flood_of_hints_for_one_intent_costs_at_most_two_fetches(
        tmp_path: Path) -> None:
    rig = await open_sale(tmp_path)
    before = len(rig.cloud.called("get_state"))
    gate = asyncio.Event()
    answer = rig.cloud.get_payment_state

    async def slow_answer(intent_id: str) -> IntentView:
        await gate.wait()
        return await answer(intent_id)

    rig.cloud.get_payment_state = slow_answer  # type: ignore[method-assign]
    for _ in range(500):
        assert rig.engine.hint_intent(INTENT)
    await asyncio.sleep(0)
    gate.set()
    await rig.until("the hints answered", lambda: not rig.engine._hinted)
    assert len(rig.cloud.called("get_state")) - before == 2
    await rig.engine.stop()


async def test_an_unknown_intent_is_fetched_only_for_an_attempt_still_reconciling(
        tmp_path: Path) -> None:
    rig = make_rig(tmp_path, idempotent=False, answers=[OutcomeUnknown("read timeout")])
    rig.cloud.intents[INTENT] = view("ON_TERMINAL")

    async def reconciliation_unanswered(query: object) -> object:
        raise ServerError(503, "internal_error", "try later")

    rig.cloud.find_attempt = reconciliation_unanswered  # type: ignore[assignment]
    await rig.start_sale()
    await rig.until("reconciling", lambda: rig.sale().state is SaleState.CREATE_UNKNOWN)
    assert not rig.engine.hint_intent(INTENT)  # no reference: a stranger's intent
    assert not rig.engine.hint_intent(INTENT, "pd1_loja-1_1_S1_2")  # not the attempt
    assert not rig.engine.hint_intent(INTENT, "pd1_other_1_S1_1")  # not this store
    assert rig.engine.hint_intent(INTENT, REFERENCE)
    await rig.until("adopted", lambda: rig.sale().intent_id == INTENT)
    assert rig.sale().state is SaleState.ON_TERMINAL
    assert rig.cloud.called("get_state") == [INTENT]
    await rig.engine.stop()


class CountingEngine:
    """The rig's real engine, with the hints and submissions it is given counted."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.intent_hints: list[str] = []
        self.submitted: list[object] = []

    async def submit(self, event: Any, *, notification_key: str | None = None) -> object:
        self.submitted.append(event)
        return await self.engine.submit(event, notification_key=notification_key)

    def hint_intent(self, intent_id: str, external_reference: str | None = None) -> bool:
        self.intent_hints.append(intent_id)
        return bool(self.engine.hint_intent(intent_id, external_reference))

    def hint_payment(self, payment_id: str) -> bool:
        return bool(self.engine.hint_payment(payment_id))


async def test_a_redelivered_batch_is_journaled_and_acted_on_once(tmp_path: Path) -> None:
    # The relay sends a batch again after a crash before the ack: a new handler (a new
    # daemon process) on the same journal hints nothing and submits nothing a second time,
    # whether the event became a core event (the fraud alert) or only a hint.
    rig = await open_sale(tmp_path)
    journal = rig.engine.journal
    engine = CountingEngine(rig.engine)
    batch = [
        relayed(intent_body("FINISHED", FOREIGN_PAYMENT), {"data.id": INTENT}, 1),
        relayed(json.dumps({"type": "stop_delivery_op_wh",
                            "data": {"id": "ALERT-1", "payment_id": int(PAYMENT)}}).encode(),
                {"type": "stop_delivery_op_wh", "data.id": "ALERT-1"}, 2),
        relayed(intent_body("OPEN"), {"data.id": INTENT}, 3),
    ]
    first = NotificationHandler(engine, journal)
    await first(batch[:2], 2)
    again = NotificationHandler(engine, journal)
    await again(batch, 3)
    assert engine.intent_hints == [INTENT, INTENT]  # events 1 and 3, once each
    assert engine.submitted == [FraudAlerted(PAYMENT)]
    assert (first.counts, again.counts) == ({"intent": 1, "webhook": 1},
                                            {"duplicate": 2, "intent": 1})
    assert journal.relay_cursor() == "3"
    assert all(journal.notification_seen(f"relay:{n}") for n in (1, 2, 3))
    await rig.engine.stop()
