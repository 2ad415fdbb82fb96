"""Relay processes: SIGKILL under load loses nothing answered 2xx, and a consumer on either
delivery leg journals all of it once; two replicas share PostgreSQL on either leg."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from pointd.cloud.signature import sign
from pointd.relay.client import Delivery, RelayConsumer
from tests.relay.harness import (
    IO_TIMEOUT,
    SECRET,
    TOKENS,
    Journal,
    seed,
    with_reference,
)
from tests.relay.processes import relay_process, write_config

pytestmark = pytest.mark.slow
LEGS = [pytest.param(leg, id=str(leg)) for leg in Delivery]
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
ROOT = Path(__file__).resolve().parents[2]
INTENT = seed("000_intent_finished_mla.json")
# Long enough for a stream of several hundred notifications on a loaded 2-core machine.
STREAM_TIMEOUT = 30.0


def signed_intent(store: str, n: int) -> tuple[bytes, dict[str, str]]:
    """A unique intent notification for a store, with its Mercado Pago headers."""
    lane = 1 if store == "store-a" else 2
    body = with_reference(INTENT, f"pd1_{store}_{lane}_S{n}_1").replace(
        b"abcdef123", f"i{n:06d}".encode()
    )
    intent_id = f"i{n:06d}-8ab5-4139-9aa3-abcd123"
    request_id = f"req-{store}-{n}"
    signature = sign(SECRET, data_id=intent_id, request_id=request_id, ts=str(int(time.time())))
    return body, {"x-request-id": request_id, "x-signature": signature}


async def stream(
    urls: Sequence[str],
    stores: Sequence[str],
    answered: dict[str, str],
    stop: asyncio.Event,
    senders: int = 6,
) -> None:
    """Send signed notifications until ``stop``; record each answered 2xx by request id."""
    counter = iter(range(1_000_000))

    async def sender(index: int) -> None:
        async with httpx.AsyncClient(timeout=IO_TIMEOUT) as client:
            while not stop.is_set():
                n = next(counter)
                store = stores[n % len(stores)]
                body, headers = signed_intent(store, n)
                try:
                    response = await client.post(
                        f"{urls[(n + index) % len(urls)]}/mp/webhook", content=body, headers=headers
                    )
                except httpx.TransportError:
                    await asyncio.sleep(0.01)  # the relay is being killed; pace the retry
                    continue
                if response.status_code == 200:
                    answered[headers["x-request-id"]] = store

    await asyncio.gather(*(sender(i) for i in range(senders)))


async def read_all(url: str, store: str) -> list[dict[str, object]]:
    """Every event of a store's stream."""
    events: list[dict[str, object]] = []
    async with httpx.AsyncClient(timeout=IO_TIMEOUT) as client:
        after = 0
        while True:
            response = await client.get(
                f"{url}/stores/{store}/events",
                params={"after": after, "limit": 500},
                headers={"authorization": f"Bearer {TOKENS[store]}"},
            )
            assert response.status_code == 200
            page = response.json()
            if not page["events"]:
                return events
            events += page["events"]
            after = page["cursor"]


def store_consumer(url: str, store: str, journal: Journal, delivery: Delivery) -> RelayConsumer:
    return RelayConsumer(
        url,
        store,
        TOKENS[store],
        journal,
        journal,
        delivery=delivery,
        long_poll_wait=1.0,
        canary_interval=3600.0,
    )


async def until_journaled(journal: Journal, expected: set[str]) -> None:
    deadline = time.monotonic() + STREAM_TIMEOUT
    while time.monotonic() < deadline and not expected <= {  # noqa: ASYNC110 - consumer task
        e.headers["x-request-id"] for e in journal.events
    }:
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("delivery", LEGS)
@pytest.mark.parametrize("backend_name", BACKENDS)
async def test_sigkill_under_load_loses_nothing_answered_2xx(
    tmp_path: Path, backend_name: str, delivery: Delivery, request: pytest.FixtureRequest
) -> None:
    dsn = request.getfixturevalue("postgres_dsn") if backend_name == "postgres" else None
    config = write_config(tmp_path, backend_name, dsn)
    answered: dict[str, str] = {}
    stop = asyncio.Event()
    journal = Journal()
    async with relay_process(config) as (process, url, _log):
        port = int(url.rpartition(":")[2])
        reader = store_consumer(url, "store-a", journal, delivery)
        reading = asyncio.create_task(reader.run())
        sending = asyncio.create_task(stream([url], ["store-a"], answered, stop))
        deadline = time.monotonic() + STREAM_TIMEOUT
        while len(answered) < 200 and time.monotonic() < deadline:  # noqa: ASYNC110 - counts filled by sender tasks
            await asyncio.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # mid-stream: requests are in flight
        await process.wait()
        stop.set()
        await asyncio.wait_for(sending, IO_TIMEOUT)
    assert len(answered) >= 200
    try:
        # The same port: the consumer, still running, reconnects to the restarted relay.
        async with relay_process(config, port) as (_process, url, _log):
            await until_journaled(journal, set(answered))
            events = await read_all(url, "store-a")
    finally:
        reader.stop()
        await asyncio.wait_for(reading, IO_TIMEOUT)
        await reader.close()
    events = [e for e in events if e["kind"] != "canary"]  # the consumer's, at its start
    delivered = {e["headers"]["x-request-id"] for e in events}  # type: ignore[index]
    lost = set(answered) - delivered
    assert lost == set(), f"{len(lost)} of {len(answered)} answered notifications lost"
    assert len(delivered) == len(events)  # stored once each
    journaled = [e.headers["x-request-id"] for e in journal.events]
    assert set(answered) <= set(journaled), "answered 2xx but never journaled"
    assert len(journaled) == len(set(journaled)), "journaled twice"
    assert reader.delivery is delivery


@pytest.mark.postgres
@pytest.mark.parametrize("delivery", LEGS)
async def test_two_replicas_on_one_database_deliver_each_store_only_its_own(
    tmp_path: Path, postgres_dsn: str, delivery: Delivery
) -> None:
    config = write_config(tmp_path, "postgres", postgres_dsn)
    answered: dict[str, str] = {}
    stop = asyncio.Event()
    async with relay_process(config) as (_p1, url1, _l1), relay_process(config) as (_p2, url2, _l2):
        handlers = {"store-a": Journal(), "store-b": Journal()}
        # Each store reads from the replica its events are not all posted to: half of them
        # reach it only through the database's notification to the other replica.
        consumers = [
            store_consumer(url, store, handlers[store], delivery)
            for url, store in ((url1, "store-a"), (url2, "store-b"))
        ]
        running = [asyncio.create_task(c.run()) for c in consumers]
        sending = asyncio.create_task(stream([url1, url2], ["store-a", "store-b"], answered, stop))
        deadline = time.monotonic() + STREAM_TIMEOUT
        while len(answered) < 200 and time.monotonic() < deadline:  # noqa: ASYNC110 - counts filled by sender tasks
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(sending, IO_TIMEOUT)
        expected = {store: {r for r, s in answered.items() if s == store} for store in handlers}
        deadline = time.monotonic() + STREAM_TIMEOUT
        while time.monotonic() < deadline and any(  # noqa: ASYNC110 - filled by consumer tasks
            len(handlers[s].events) < len(expected[s]) for s in handlers
        ):
            await asyncio.sleep(0.05)
        for consumer in consumers:
            consumer.stop()
        await asyncio.wait_for(asyncio.gather(*running), IO_TIMEOUT)
        for consumer in consumers:
            await consumer.close()
        async with httpx.AsyncClient(timeout=IO_TIMEOUT) as client:
            cross = await client.get(
                f"{url2}/stores/store-b/events",
                headers={"authorization": f"Bearer {TOKENS['store-a']}"},
            )
            assert cross.status_code == 404
    assert len(answered) >= 200
    for store, handler in handlers.items():
        got = [e.headers["x-request-id"] for e in handler.events]
        assert len(got) == len(set(got)), f"duplicates handed to {store}"
        assert set(got) == expected[store], f"{store}: lost or foreign events"
        assert all(f"pd1_{store}_".encode() in e.body for e in handler.events)
