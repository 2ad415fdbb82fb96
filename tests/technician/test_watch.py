"""``pointctl watch`` against the real ``pointd run``: a sale's every step reaches the screen.

Rule under test (docs/control-socket.md, event topics): a subscriber gets one ``sale``
event per state a sale passes through and ``status`` events when the snapshot changes;
``watch --json`` prints the status, then each event, as one JSON line each; ``watch``
redraws the status with the recent events under it; Ctrl-C ends both with exit 0.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from pointd.control.cli import CLEAR_SCREEN
from tests.technician.conftest import WAIT_CEILING, WATCH_SCREEN_END, OpenShop

pytestmark = pytest.mark.slow

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


async def test_watch_json_prints_every_state_of_a_real_sale(open_shop: OpenShop) -> None:
    async with open_shop(relay="process") as shop:
        await shop.lane_ready()
        watch, first = await shop.watch("--json")
        assert watch.stdout is not None
        await shop.approved_sale("watch-1")

        events: list[dict[str, Any]] = [json.loads(first)]
        async with asyncio.timeout(WAIT_CEILING):
            while not any(e["event"] == "sale" and e["data"]["state"] == "handed_over"
                          for e in events):
                line = await watch.stdout.readline()
                assert line, "pointctl watch --json ended early"
                events.append(json.loads(line))  # every line is one JSON object
        assert await shop.stop_watch(watch) == 0

    assert events[0]["event"] == "status"  # the state before any change
    assert events[0]["data"]["ready"] is True
    states = [e["data"]["state"] for e in events if e["event"] == "sale"]
    assert states[0] in ("requested", "creating", "open")
    assert {"open", "approved", "handed_over"} <= set(states), states
    assert len(states) == len(set(states)), "one event per state"
    sale = next(e["data"] for e in events if e["event"] == "sale")
    assert sale["lane"] == "1"
    assert sale["amount_cents"] == 2500
    assert re.fullmatch(ISO, sale["at"])
    assert any(e["event"] == "status" for e in events)


async def test_watch_redraws_with_the_sale_in_its_recent_events(open_shop: OpenShop) -> None:
    async with open_shop() as shop:
        await shop.lane_ready()
        watch, first = await shop.watch()
        assert watch.stdout is not None
        assert first.startswith(CLEAR_SCREEN.encode())
        assert b"no problems" in first
        await shop.approved_sale("watch-2")
        screen = b""
        async with asyncio.timeout(WAIT_CEILING):
            while not re.search(rf"{ISO}  sale \S+ lane 1: handed_over 25.00".encode(), screen):
                screen = await watch.stdout.readuntil(WATCH_SCREEN_END)
        assert await shop.stop_watch(watch) == 0
    text = screen.decode()
    assert "recent events (UTC):" in text
    assert re.search(rf"{ISO}  sale \S+ lane 1: approved 25.00", text), text
    assert "LANE" in text
    assert "CONDITION" in text
