"""The daemon's and the relay's logs, as a technician reads them from the real processes.

Rules under test (docs/operations.md, "Logs"): every line either process writes is one JSON
object (no plain-text line in the stream); the libraries log at WARNING by default, so no
per-request httpx line and no apscheduler "job executed" line buries the daemon's own; the
relay logs each stored notification once with its id, kind, topic and route and never a
secret; the daemon's relay link going down is a warning.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from tests.e2e_daemon.harness import eventually
from tests.technician.conftest import WAIT_CEILING, OpenShop, Shop

pytestmark = pytest.mark.slow


def _lines(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        entry = json.loads(line)  # a plain-text line fails here
        assert isinstance(entry, dict)
        entries.append(entry)
    return entries


def _relay_down_warned(shop: Shop) -> bool:
    return any(e.get("event") == "relay_health" and e.get("state") == "down"
               and e["level"] == "warning" for e in _lines(shop.daemon_log()))


async def test_both_logs_are_json_lines_a_technician_can_read(open_shop: OpenShop) -> None:
    async with open_shop(relay="process", relay_log_level="info") as shop:
        await shop.lane_ready()
        await shop.approved_sale("log-1")
        await shop.approved_sale("log-2")
        relay = shop.rig.relay
        assert relay is not None
        await relay.stop()
        await eventually("the daemon to warn that the relay is down",
                         lambda: _relay_down_warned(shop), WAIT_CEILING)
        await relay.start()
        relay_text = (shop.rig.state_dir / "relay.log").read_text()
        daemon = _lines(shop.daemon_log())
        secrets = shop.rig.secrets

    libraries = [e for e in daemon if str(e.get("logger", "")).split(".")[0]
                 in ("httpx", "httpcore", "apscheduler")]
    assert libraries == [], libraries[:3]
    assert not [e for e in daemon if e["event"] == "cloud.call" and e["level"] == "info"]
    assert {"daemon.ready", "journal.replayed"} <= {e["event"] for e in daemon}

    relay_lines = _lines(relay_text)
    stored = [e for e in relay_lines if e["event"] == "notification_stored"]
    ids = Counter(e["event_id"] for e in stored)
    assert ids, "the relay logged no stored notification"
    assert max(ids.values()) == 1, "each stored notification is logged once"
    for entry in stored:
        assert entry["route"] == "tech-shop"
        assert entry["kind"]
        assert entry["level"] == "info"
    for secret in (secrets.webhook_secret, secrets.store_token, secrets.access_token):
        assert secret not in relay_text
