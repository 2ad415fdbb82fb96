"""The real ``pointd run``'s ``/metrics``: prometheus_client's text, what a store needs to watch.

Rules under test (docs/operations.md, "Metrics"): off unless ``[metrics] listen`` is set;
then ``GET /metrics`` answers sale outcomes, sales held, verification latency, journal
commit latency, the relay link and the age of its last delivery, and each register link
with its retransmissions; anything else is refused, and a client that sends half a request
holds nothing up.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e_daemon.harness import CONFIRMATION_APPROVED_CENTS, SIM_SALE_SECONDS
from tests.technician.conftest import OpenShop, Shop

pytestmark = pytest.mark.slow


def _url(shop: Shop) -> str:
    for line in shop.daemon_log().splitlines():
        found = re.search(r'"url": "(http://127\.0\.0\.1:\d+/metrics)"', line)
        if found:
            return found.group(1)
    raise AssertionError("the daemon never said where /metrics is")


async def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(url)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


async def test_metrics_answer_what_the_store_is_doing(open_shop: OpenShop) -> None:
    async with open_shop(relay="process",
                         daemon_config={"metrics": {"listen": "127.0.0.1:0"}}) as shop:
        await shop.lane_ready()
        url = _url(shop)
        await shop.approved_sale("m-1")
        held = shop.sale(CONFIRMATION_APPROVED_CENTS, "m-held")
        await shop.until_intent("m-held")
        await shop.rig.sim.advance(SIM_SALE_SECONDS)
        await shop.wait_status("the sale held", lambda s: s["holds"] == 1)

        samples = await _scrape(url)
        assert samples[("pointd_sales_ended_total", (("outcome", "handed_over"),))] == 1
        assert samples[("pointd_sales_held", ())] == 1
        assert samples[("pointd_verify_seconds_count", (("result", "ok"),))] >= 1
        assert samples[("pointd_journal_commit_seconds_count", ())] >= 10
        assert samples[("pointd_register_link_up", (("lane", "1"),))] == 1
        assert samples[("pointd_register_retransmits_total", (("lane", "1"),))] >= 0
        assert samples[("pointd_relay_connected", ())] == 1
        assert 0 <= samples[("pointd_relay_last_event_age_seconds", ())] < 120
        assert samples[("pointd_build_info", (("version", "0.1.0"),))] == 1

        host, port = url.removeprefix("http://").split("/")[0].split(":")
        # Half a request, never finished: the next scrape is answered all the same.
        _reader, idle = await asyncio.open_connection(host, int(port))
        idle.write(b"GET /metr")
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).status_code == 200
            assert (await http.post(url)).status_code == 405
            assert (await http.get(url.replace("/metrics", "/"))).status_code == 404
        idle.close()
        held.cancel()


async def test_no_metrics_address_means_no_endpoint(open_shop: OpenShop) -> None:
    async with open_shop() as shop:
        await shop.lane_ready()
        assert "pointd metrics on" not in shop.daemon_log()
        _code, status = await shop.pointctl("status")
        assert status["ready"] is True  # and no metrics task among the daemon's parts
