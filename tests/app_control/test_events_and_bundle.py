"""Pushed sale/status/relay/terminal events, the support bundle, and the handler table."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import tarfile
from typing import Any

from pointd.app.control_handlers import DaemonHandlers
from pointd.app.engine import Alert
from pointd.control.client import ControlClient, Event
from pointd.control.methods import DAEMON_METHODS
from tests.app_control.conftest import ACCESS_TOKEN, IO_TIMEOUT, STORE_TOKEN, T0, Rig

HELD_DETAIL = "CONFIRMATION_REQUIRED: verifying the payment before handover"


async def next_events(client: ControlClient, count: int) -> list[Event]:
    events = client.events()
    return [await asyncio.wait_for(anext(events), IO_TIMEOUT) for _ in range(count)]


async def collect_until(client: ControlClient, done: Any) -> list[Event]:
    seen: list[Event] = []
    events = client.events()
    while not done(seen):
        seen.append(await asyncio.wait_for(anext(events), IO_TIMEOUT))
    return seen


async def test_every_state_change_is_pushed_once_as_a_sale_event(rig: Rig) -> None:
    await rig.client.call("subscribe", {"topics": ["sale"]})

    await rig.held_sale("S5", 1, 2599, "555")
    events = await collect_until(rig.client, lambda seen: len(seen) == 3)

    assert [(e.topic, e.data["state"]) for e in events] == [
        ("sale", "creating"), ("sale", "open"), ("sale", "held")]
    assert events[-1].data == {"sale_id": "S5", "lane": "1", "state": "held",
                               "amount_cents": 2599, "payment_id": "555",
                               "detail": HELD_DETAIL,
                               "at": "2026-11-18T11:06:40Z"}
    await rig.client.call("override", {"sale_id": "S5", "decision": "release",
                                       "reason": "slip seen"})
    (final,) = await next_events(rig.client, 1)
    assert final.data["state"] == "overridden"
    # No pending event was left for an unchanged state (the pending PaymentVerified).
    assert rig.client.drain_events() == []


async def test_status_events_follow_changes_not_the_clock(rig: Rig) -> None:
    await rig.client.call("subscribe", {"topics": ["status"]})
    await rig.held_sale("S5", 1, 2599, "555")
    events = await collect_until(rig.client, lambda seen: seen and seen[-1].data["holds"] == 1)
    assert events[-1].data["lanes"][0]["sale"]["state"] == "held"
    for _ in range(10):
        await asyncio.sleep(0)
    rig.client.drain_events()

    rig.handlers.publish_status()
    rig.handlers.publish_status()
    for _ in range(10):
        await asyncio.sleep(0)
    assert rig.client.drain_events() == []

    rig.terminals.conditions[2] = "terminal_not_pdv"
    rig.handlers.publish_terminals()
    (status,) = await next_events(rig.client, 1)
    assert "lane 2: terminal_not_pdv" in status.data["problems"]


async def test_relay_and_terminal_events(rig: Rig) -> None:
    await rig.client.call("subscribe", {"topics": ["relay", "terminal"]})
    rig.relay.status = {"state": "down", "since": T0, "detail": "connection refused"}
    rig.handlers.publish_relay()
    rig.handlers.publish_terminals()
    relay, lane1, lane2 = await next_events(rig.client, 3)
    assert (relay.topic, relay.data["state"], relay.data["connected"]) == ("relay", "down", False)
    assert (lane1.topic, lane1.data["lane"], lane2.data["lane"]) == ("terminal", "1", "2")


async def test_alerts_are_kept_bounded_and_shown_in_status(rig: Rig) -> None:
    for n in range(150):
        rig.handlers.add_alert(Alert(T0, f"S{n}", "warning", f"alert {n}"))
    assert len(rig.handlers.alerts) == 100
    status = await rig.client.call("status")
    assert [a["message"] for a in status["alerts"]] == [f"alert {n}" for n in range(140, 150)]


async def test_a_failing_publish_never_fails_the_engine_step(rig: Rig) -> None:
    class Broken:
        def publish(self, topic: str, data: Any) -> int:
            raise RuntimeError("socket gone")

        def connection_report(self) -> list[dict[str, Any]]:
            return []

    rig.events.sink = Broken()
    intent = await rig.open_sale("S6", 2, 1000)
    assert intent
    rig.handlers.add_alert(Alert(T0, "S6", "warning", "still shown"))
    rig.handlers.publish_relay()
    rig.handlers.publish_terminals()
    assert rig.handlers.alerts[-1].message == "still shown"


async def test_a_failing_lane_view_becomes_a_problem(rig: Rig) -> None:
    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("usb backend exploded")

    rig.terminals.snapshot = broken  # type: ignore[method-assign]
    status = await rig.client.call("status")
    assert status["lanes"] == []
    assert "the lane terminal view failed (see the daemon log)" in status["problems"]


async def test_bundle_carries_status_history_and_logs_without_any_secret(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")
    await rig.client.call("cancel", {"sale_id": "S5"})
    rig.handlers.add_alert(Alert(T0, "S5", "critical", f"token {ACCESS_TOKEN} leaked here"))
    rig.logs.extend([f"GET /v1/payments Authorization: Bearer {ACCESS_TOKEN}",
                     f"relay store_token={STORE_TOKEN}", f"plain {STORE_TOKEN} in text"])
    rig.handlers._config = {"relay": {"url": f"https://relay.test/?t={STORE_TOKEN}"}}

    answer = await rig.client.call("bundle")

    content = base64.b64decode(answer["content_b64"])
    assert hashlib.sha256(content).hexdigest() == answer["sha256"]
    assert answer["filename"] == "pointd-bundle-20261118T110640Z.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        members = {m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
                   for m in tar.getmembers()}
    assert set(members) == {"README.txt", "status.json", "sales.json", "config.json",
                            "versions.json", "connections.json", "logs.txt"}
    for name, data in members.items():
        for secret in (ACCESS_TOKEN, STORE_TOKEN, ACCESS_TOKEN[-20:]):
            assert secret.encode() not in data, f"{name} leaks a secret"
    status = json.loads(members["status.json"])
    assert status["holds"] == 1
    assert {t["timer"] for t in status["pending_timers"]} == {"verify", "escalate"}
    history = json.loads(members["sales.json"])
    assert [s["sale_id"] for s in history["sales"]] == ["S5"]
    assert {(a["method"], a["outcome"]) for a in history["audit"]} == {
        ("cancel", "requested"), ("cancel", "done")}
    assert json.loads(members["versions.json"])["pointd"] == "0.1.0"
    assert b"GET /v1/payments" in members["logs.txt"]


def test_the_handler_table_is_exactly_the_catalogue(rig: Rig) -> None:
    handlers: DaemonHandlers = rig.handlers
    assert set(handlers) == set(DAEMON_METHODS)
    assert len(handlers) == len(DAEMON_METHODS)
    for name, spec in DAEMON_METHODS.items():
        # A read is the method itself; a mutating method comes wrapped to audit its outcome.
        wrapped = not hasattr(handlers[name], "__self__")
        assert wrapped == spec.mutating, name
