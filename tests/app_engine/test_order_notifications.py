"""Orders-API ``order`` notifications reach the daemon as fetch hints for the order id.

The body is the shape the cloud simulator sends (docs/simulator.md, "Orders API"); the
relay's own classifier gives the event its topic, as it does in production.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pointd.app.notifications import NotificationHandler, read_notification
from pointd.core.events import IntentObserved, ObservationSource
from pointd.relay.client import RelayEvent
from pointd.relay.notification import classify
from tests.app_engine.test_idempotent_reconcile import (
    ORDER,
    REFERENCE,
    order_view,
)
from tests.app_engine.test_idempotent_reconcile import (
    make_rig as make_engine_rig,
)


def order_body(order_id: str = ORDER, status: str = "processed") -> dict[str, Any]:
    return {
        "action": f"order.{status}", "api_version": "v1", "application_id": "1234567890",
        "date_created": "2026-11-22T04:00:00Z", "id": "1", "live_mode": False,
        "type": "order", "user_id": "123456789",
        "data": {"id": order_id, "external_reference": REFERENCE, "status": status,
                 "type": "point", "total_amount": "25.00"},
    }


def relayed(body: bytes, query: dict[str, str], event_id: int = 1) -> RelayEvent:
    classified = classify(body, query)
    return RelayEvent(id=event_id, cursor=event_id, kind=classified.kind.value,
                      topic=classified.topic, received_at=0.0, parse=classified.parse.value,
                      signed=True, id_source="data.id", query=query, headers={}, body=body)


@pytest.mark.parametrize("status", ["processed", "failed", "action_required", "canceled",
                                    "expired", "refunded", "at_terminal"])
def test_every_order_status_is_only_a_hint_for_the_order(status: str) -> None:
    body = json.dumps(order_body(status=status)).encode()
    reading = read_notification(relayed(body, {"data.id": ORDER, "type": "order"}))
    assert reading.intent_hints == (ORDER,)
    assert reading.events == ()
    assert reading.payment_hints == ()


def test_an_order_named_only_in_the_query_is_still_hinted() -> None:
    reading = read_notification(relayed(b"", {"data.id": ORDER, "type": "order"}))
    assert reading.intent_hints == (ORDER,)


def test_an_order_notification_without_an_id_is_kept_as_seen_not_guessed() -> None:
    body = order_body()
    del body["data"]["id"]
    reading = read_notification(relayed(json.dumps(body).encode(), {"type": "order"}))
    assert reading.intent_hints == ()
    assert "order" in reading.note


async def test_the_handler_fetches_a_known_order_and_ignores_a_foreign_one(
        tmp_path: Path) -> None:
    rig = make_engine_rig(tmp_path, idempotent=True, answers=[ORDER])
    rig.cloud.intents[ORDER] = order_view("OPEN")
    await rig.start_sale()
    await rig.until("the order", lambda: rig.sale().intent_id == ORDER)
    rig.cloud.intents[ORDER] = order_view("ON_TERMINAL")
    fetched = len(rig.cloud.called("get_state"))
    journal = rig.engine.journal
    handler = NotificationHandler(rig.engine, journal)
    statements: list[str] = []
    journal._db.set_trace_callback(statements.append)

    foreign = json.dumps(order_body("ORD01FOREIGN0000000000000000")).encode()
    ours = json.dumps(order_body(status="at_terminal")).encode()
    await handler([relayed(foreign, {"data.id": "ORD01FOREIGN0000000000000000",
                                     "type": "order"}, 1),
                   relayed(ours, {"data.id": ORDER, "type": "order"}, 2)], 3)
    # The batch (both seen keys and the cursor) is one fsynced transaction, and the hints
    # are acted on only after it.
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
        "BEGIN IMMEDIATE", "COMMIT"]
    journal._db.set_trace_callback(None)
    assert journal.notification_seen("relay:1")
    assert journal.notification_seen("relay:2")
    assert journal.relay_cursor() == "3"
    await rig.until("the fetch", lambda: rig.sale().intent_state == "ON_TERMINAL")
    assert rig.cloud.called("get_state")[fetched:] == [ORDER]
    sources = [e.source for _s, _at, e in rig.engine.journal.replay()
               if isinstance(e, IntentObserved)]
    # The notification decided nothing: every observation is an answer of the API.
    assert ObservationSource.NOTIFICATION not in sources
    assert ObservationSource.POLL in sources
    await rig.engine.stop()
