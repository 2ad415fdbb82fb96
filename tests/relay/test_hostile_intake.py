"""A real ``pointd relay`` keeps answering genuine notifications while hostile bodies arrive.

On main the relay read every body before its signature, and re-read invalid JSON with a
super-linear pass: one unsigned body of escaped quotes at the body limit held its event
loop for minutes, so a genuine fraud alert sent meanwhile would miss Mercado Pago's 22 s
deadline (and fraud alerts are never resent). Here each hostile request, and each genuine
one sent right behind it, must be answered within IO_TIMEOUT: a ceiling hundreds of times
what either takes, so a busy machine cannot fail the test, while main fails it by minutes.
Latency itself is measured by bench/relay_hostile.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from pointd.cloud.signature import sign
from tests.relay.harness import IO_TIMEOUT, REF_A, SECRET, TOKENS, seed, with_reference
from tests.relay.processes import relay_process, write_config
from tests.security.hostile_bodies import crafted_bodies

pytestmark = pytest.mark.slow
BODY_LIMIT = 262144  # the default intake.body_limit
HOSTILE = ("escaped-quotes", "quote-pairs-after-a-leading-zero", "empty-lists", "id-members")


def genuine(n: int) -> tuple[bytes, dict[str, str]]:
    """A signed Point intent notification for store-a, as Mercado Pago signs it."""
    intent_id = f"g{n:08d}-8ab5-4139-9aa3-abcd123"
    body = with_reference(seed("000_intent_finished_mla.json"), REF_A).replace(
        b"abcdef123-8ab5-4139-9aa3-abcd123", intent_id.encode()
    )
    request_id = f"genuine-{n}"
    signature = sign(SECRET, data_id=intent_id, request_id=request_id, ts=str(int(time.time())))
    return body, {"x-request-id": request_id, "x-signature": signature}


async def test_genuine_notifications_are_answered_while_hostile_bodies_arrive(
    tmp_path: Path,
) -> None:
    bodies = crafted_bodies(BODY_LIMIT)
    config = write_config(tmp_path, "sqlite", None)
    async with relay_process(config) as (_process, url, _log):
        for round_number, name in enumerate(HOSTILE):
            await _one_round(url, bodies[name], round_number, name)
        async with httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as client:
            events = await client.get(
                "/stores/store-a/events",
                params={"after": 0},
                headers={"authorization": f"Bearer {TOKENS['store-a']}"},
            )
    got = [event["headers"]["x-request-id"] for event in events.json()["events"]]
    assert got == [f"genuine-{n}" for n in range(len(HOSTILE))]


async def _one_round(url: str, body: bytes, round_number: int, name: str) -> None:
    """Two hostile requests (a webhook, an IPN), then a genuine one right behind them."""
    async with httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as client:
        hostile = [
            asyncio.create_task(_refusal(client, query, body))
            for query in (
                {"data.id": "1", "type": "stop_delivery_op_wh"},
                {"topic": "delivery_cancellation", "id": "1"},
            )
        ]
        genuine_body, headers = genuine(round_number)
        answer = await client.post("/mp/webhook", content=genuine_body, headers=headers)
        assert answer.status_code == 200, (name, answer.text)
        assert (await client.get("/healthz")).status_code == 200
        unsigned, ipn = await asyncio.gather(*hostile)
    assert unsigned in {401, None}, name
    # Anyone may post IPN; a large one is refused before it is read.
    assert ipn in {413, None}, name


async def _refusal(client: httpx.AsyncClient, query: dict[str, str], body: bytes) -> int | None:
    """The status of a hostile request, or None when the relay reset the connection: it
    closes a refused one without reading the rest of the body, and a client still sending
    may see only the reset. A slow answer still fails the test (ReadTimeout)."""
    try:
        response = await client.post("/mp/webhook", params=query, content=body)
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
        return None
    return response.status_code
