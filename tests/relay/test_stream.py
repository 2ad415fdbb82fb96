"""The streaming delivery leg: pushed at commit, the same events as long-poll, and the client's
fallback to long-poll when the stream is refused or buffered."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from pointd.relay import sse
from pointd.relay.client import Delivery, HealthState, RelayConsumer
from pointd.relay.storage import StoredEvent
from tests.relay.harness import (
    IO_TIMEOUT,
    REF_A,
    TOKENS,
    Journal,
    RunningRelay,
    seed,
    webhook,
    with_reference,
)

INTENT = seed("000_intent_finished_mla.json")


def intent(n: int) -> bytes:
    return with_reference(INTENT, REF_A).replace(b"abcdef123", f"intent{n}".encode())


async def post_intents(relay: RunningRelay, first: int, count: int) -> None:
    for n in range(first, first + count):
        response = await relay.post_signed(intent(n), request_id=f"rq-{n}")
        assert response.status_code == 200


class Stream:
    """A raw reader of one relay stream: the messages as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.messages: list[sse.Message] = []
        self._decoder = sse.Decoder()
        self._chunks = response.aiter_raw()

    async def until(self, count: int) -> list[sse.Message]:
        """Read until ``count`` event messages (the opening one excluded) have arrived."""

        async def read() -> None:
            while len(self.events()) < count:
                self.messages += self._decoder.feed(await anext(self._chunks))

        await asyncio.wait_for(read(), IO_TIMEOUT)
        return self.events()

    def events(self) -> list[sse.Message]:
        return [m for m in self.messages if m.event == ""]


@contextlib.asynccontextmanager
async def open_stream(
    relay: RunningRelay, store: str = "store-a", **headers: str
) -> AsyncIterator[Stream]:
    request = relay.client.build_request(
        "GET",
        f"/stores/{store}/stream",
        headers={"authorization": f"Bearer {TOKENS[store]}", **headers},
    )
    response = await relay.client.send(request, stream=True)
    try:
        yield Stream(response)
    finally:
        await response.aclose()


class CountingReads:
    """Counts the service's storage reads (to show a stream pushes without reading)."""

    def __init__(self, relay: RunningRelay) -> None:
        self.count = 0
        storage = relay.service.storage
        original = storage.read

        async def read(store: str, after: int, limit: int) -> list[StoredEvent]:
            self.count += 1
            return await original(store, after, limit)

        storage.read = read  # type: ignore[method-assign]


async def test_a_stream_pushes_each_event_at_its_commit_as_long_poll_reads_it(
    relay: RunningRelay,
) -> None:
    await post_intents(relay, 1, 2)
    async with open_stream(relay, **{"last-event-id": "1"}) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"] == "text/event-stream"
        assert stream.response.headers["x-accel-buffering"] == "no"
        backlog = await stream.until(1)  # event 2, read from storage after the cursor
        opening = stream.messages[0]
        assert opening.event == "open"
        assert json.loads(opening.data)["cursor"] == 1
        reads = CountingReads(relay)
        await post_intents(relay, 3, 5)
        pushed = await stream.until(6)
        assert reads.count == 0, "a committed event was read back instead of pushed"
    polled = await relay.events("store-a", after=1)
    assert [json.loads(m.data) for m in pushed] == polled
    assert [m.id for m in pushed] == [str(e["cursor"]) for e in polled]
    assert backlog[0].id == "2"


async def test_a_stream_carries_events_rerouted_by_a_later_commit(relay: RunningRelay) -> None:
    payment = webhook("payment", {"id": "123456789"}, 7)
    async with open_stream(relay) as stream:
        waiting = await relay.post_signed(
            payment, query={"data.id": "123456789", "type": "payment"}, request_id="rq-pay"
        )
        assert waiting.status_code == 200
        # The intent teaches payment 123456789's route: the waiting event follows it.
        teaching = with_reference(seed("000_intent_finished_mla.json"), REF_A)
        assert (await relay.post_signed(teaching, request_id="rq-intent")).status_code == 200
        events = [json.loads(m.data) for m in await stream.until(2)]
    assert [e["kind"] for e in events] == ["intent", "webhook"]
    assert [e["cursor"] for e in events] == [1, 2]


async def test_stream_refusals(relay: RunningRelay) -> None:
    cases: list[tuple[dict[str, str], str, int]] = [
        ({}, "store-a", 401),
        ({"authorization": f"Bearer {TOKENS['store-b']}"}, "store-a", 404),
        ({"authorization": f"Bearer {TOKENS['store-a']}"}, "nowhere", 404),
        ({"authorization": f"Bearer {TOKENS['store-a']}", "last-event-id": "x1"}, "store-a", 400),
    ]
    for headers, store, status in cases:
        response = await relay.client.get(f"/stores/{store}/stream", headers=headers)
        assert response.status_code == status, (headers, store)
        assert "error" in response.json()


async def test_relay_shutdown_ends_open_streams(relay: RunningRelay) -> None:
    async with open_stream(relay) as stream:
        await stream.until(0)
        relay.service.begin_shutdown()

        async def to_the_end() -> None:
            async for _chunk in stream.response.aiter_raw():
                pass

        await asyncio.wait_for(to_the_end(), IO_TIMEOUT)


def consumer_for(
    relay: RunningRelay, journal: Journal, url: str | None = None, **kwargs: Any
) -> RelayConsumer:
    return RelayConsumer(
        url or relay.url,
        "store-a",
        TOKENS["store-a"],
        journal,
        journal,
        clock=relay.clock,
        canary_interval=3600.0,
        **kwargs,
    )


@contextlib.asynccontextmanager
async def running(consumer: RelayConsumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        consumer.stop()
        await asyncio.wait_for(task, IO_TIMEOUT)
        await consumer.close()


async def test_the_consumer_streams_by_default_and_acks_coalesced(relay: RunningRelay) -> None:
    acks: list[int] = []

    class CountAcks(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self._inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/ack"):
                acks.append(json.loads(request.content)["cursor"])
            return await self._inner.handle_async_request(request)

    journal = cursor = Journal()
    consumer = consumer_for(relay, journal, transport=CountAcks())
    async with running(consumer):
        await post_intents(relay, 1, 1)
        await journal.wait_for(1)
        assert consumer.delivery is Delivery.STREAM
        assert consumer.health.delivery == "stream"
        await post_intents(relay, 2, 19)
        await journal.wait_for(20)
        await consumer.flush_acks()
        assert await relay.service.storage.acked("store-a") == cursor.cursor
    assert [e.cursor for e in journal.events] == sorted(e.cursor for e in journal.events)
    assert len({e.id for e in journal.events}) == 20
    # 20 events arrived within the ack delay of one another: a few acks, not one each.
    assert 1 <= len(acks) <= 5
    assert acks == sorted(acks)


class RefuseStream(httpx.AsyncBaseTransport):
    """An older relay, or a proxy that refuses event streams: /stream answers 404."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream"):
            self.refused += 1
            return httpx.Response(404, text="Not Found")
        return await self._inner.handle_async_request(request)


async def test_the_consumer_long_polls_when_the_stream_is_refused(relay: RunningRelay) -> None:
    journal = Journal()
    transport = RefuseStream()
    consumer = consumer_for(relay, journal, transport=transport, long_poll_wait=1.0)
    async with running(consumer):
        await post_intents(relay, 1, 3)
        await journal.wait_for(3)
        assert consumer.delivery is Delivery.LONG_POLL
        assert consumer.health.state == HealthState.CONNECTED
        assert consumer.health.delivery == "long-poll"
    assert transport.refused == 1  # tried once, then long-poll until STREAM_RETRY_AFTER


class BufferingProxy:
    """A TCP proxy that holds back every response to a /stream request until the upstream
    closes it — what a reverse proxy with response buffering on does to an event stream."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self.server: asyncio.Server | None = None
        self.streams_held = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
        first = await reader.readuntil(b"\r\n\r\n")
        held = b"/stream" in first.split(b"\r\n", 1)[0]
        self.streams_held += held
        up_writer.write(first)

        async def forward_requests() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
            up_writer.close()

        async def forward_answers() -> None:
            buffered = b""
            while data := await up_reader.read(65536):
                if held:
                    buffered += data
                else:
                    writer.write(data)
            writer.write(buffered)
            writer.close()

        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await asyncio.gather(forward_requests(), forward_answers())

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


async def test_the_consumer_long_polls_behind_a_proxy_that_buffers(relay: RunningRelay) -> None:
    proxy = BufferingProxy(relay.port)
    url = await proxy.start()
    journal = Journal()
    consumer = consumer_for(
        relay,
        journal,
        url,
        long_poll_wait=1.0,
        stream_open_timeout=0.5,  # the opening message is held back for good here
    )
    try:
        async with running(consumer):
            await post_intents(relay, 1, 3)
            await journal.wait_for(3)
            assert consumer.delivery is Delivery.LONG_POLL
    finally:
        await proxy.stop()
    assert proxy.streams_held == 1
    assert [e.headers["x-request-id"] for e in journal.events] == ["rq-1", "rq-2", "rq-3"]


@pytest.mark.parametrize("delivery", list(Delivery))
async def test_stop_returns_while_the_consumer_waits_for_the_relay(
    relay: RunningRelay, delivery: Delivery
) -> None:
    journal = Journal()
    consumer = consumer_for(relay, journal, delivery=delivery)
    task = asyncio.create_task(consumer.run())
    await post_intents(relay, 1, 1)
    await journal.wait_for(1)
    consumer.stop()
    await asyncio.wait_for(task, IO_TIMEOUT / 2)  # a long-poll holds 25 s; stop must not wait
    await consumer.close()
