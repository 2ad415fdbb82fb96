"""The relay consumer against a real relay: journal-then-ack, dedupe, restarts, health."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from pointd.relay.client import (
    BACKOFF_CAP,
    HealthState,
    RelayConsumer,
    RelayHealth,
)
from tests.relay.harness import (
    IO_TIMEOUT,
    REF_A,
    TOKENS,
    Journal,
    RunningRelay,
    make_settings,
    relay_clock,
    running_relay,
    seed,
    webhook,
    with_reference,
)
from tests.support.clock import ManualClock


def consumer_for(
    relay_url: str, journal: Journal, cursor: Journal, clock: ManualClock, **kwargs: object
) -> RelayConsumer:
    return RelayConsumer(
        relay_url,
        "store-a",
        TOKENS["store-a"],
        journal,
        cursor,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


async def _post_payments(relay: RunningRelay, first: int, count: int) -> None:
    for n in range(first, first + count):
        body = webhook("payment", {"id": str(n)}, n)
        response = await relay.post_signed(
            with_reference(seed("000_intent_finished_mla.json"), REF_A).replace(
                b"abcdef123", f"intent{n}".encode()
            ),
            request_id=f"rq-{n}",
        )
        assert response.status_code == 200
        assert body


async def test_events_are_acked_only_after_the_handler_journaled(relay: RunningRelay) -> None:
    await _post_payments(relay, 1, 3)
    journal = cursor = Journal(failures=1)
    consumer = consumer_for(relay.url, journal, cursor, relay.clock)
    try:
        with pytest.raises(OSError, match="disk full"):
            await consumer.poll_once(wait=0)
        assert cursor.cursor == 0
        assert await relay.service.storage.acked("store-a") == 0
        assert await consumer.poll_once(wait=0) == 3
        assert cursor.cursor == 3
        await consumer.flush_acks()
        assert await relay.service.storage.acked("store-a") == 3
        assert [e.cursor for e in journal.events] == [1, 2, 3]
        assert journal.events[0].body.startswith(b"{")
        assert await consumer.poll_once(wait=0) == 0
    finally:
        await consumer.close()


async def test_replayed_events_are_not_handed_up_twice(relay: RunningRelay) -> None:
    await _post_payments(relay, 1, 2)
    journal = cursor = Journal()
    consumer = consumer_for(relay.url, journal, cursor, relay.clock)
    try:
        await consumer.poll_once(wait=0)
        replay = await relay.admin(
            "POST", f"/admin/events/{journal.events[0].id}/assign", json={"store": "store-a"}
        )
        assert replay.status_code == 200
        assert await consumer.poll_once(wait=0) == 0
        assert cursor.cursor == 3
        assert len(journal.events) == 2
    finally:
        await consumer.close()


async def test_daemon_rechecks_mercado_pago_signature(relay: RunningRelay) -> None:
    await _post_payments(relay, 1, 1)
    ipn = await relay.client.post(
        "/mp/webhook",
        params={"topic": "point_integration_ipn", "id": "intent1-8ab5-4139-9aa3-abcd123"},
    )
    assert ipn.status_code == 200
    for secret, expected in ((relay.secret, True), ("wrong", False)):
        journal = Journal()
        consumer = consumer_for(
            relay.url, journal, journal, relay.clock, webhook_secret=secret
        )
        try:
            await consumer.poll_once(wait=0)
        finally:
            await consumer.close()
        assert [(e.kind, e.verified) for e in journal.events] == [
            ("intent", expected),
            ("ipn", None),
        ]


async def test_client_survives_relay_restarts_without_loss_or_duplicates(tmp_path: Path) -> None:
    clock = relay_clock()
    settings = make_settings(tmp_path, "sqlite", None)
    journal = cursor = Journal()
    states: list[HealthState] = []
    delays: list[float] = []

    async def short_sleep(delay: float) -> None:
        if delay == 3600.0:  # the canary loop's period: one canary is enough here
            await asyncio.Event().wait()
        delays.append(delay)
        await asyncio.sleep(0.02)  # paces retries while the relay is away; not a timing check

    async with running_relay(settings, clock=clock) as relay:
        port = relay.port
        consumer = consumer_for(
            relay.url,
            journal,
            cursor,
            clock,
            sleep=short_sleep,
            long_poll_wait=0.5,
            canary_interval=3600.0,
            on_health_change=lambda h: states.append(h.state),
        )
        task = asyncio.create_task(consumer.run())
        await _post_payments(relay, 1, 5)
        await journal.wait_for(5)
    try:
        while HealthState.DOWN not in states[1:]:  # noqa: ASYNC110 - set by the consumer task
            await asyncio.sleep(0.02)
        assert consumer.health.state == HealthState.DOWN
        async with running_relay(settings, clock=clock, port=port) as relay:
            await _post_payments(relay, 6, 5)
            await journal.wait_for(10)
            assert consumer.health.state == HealthState.CONNECTED
            assert cursor.cursor >= journal.events[-1].cursor
    finally:
        consumer.stop()
        await asyncio.wait_for(task, IO_TIMEOUT)
        await consumer.close()
    ids = [e.id for e in journal.events]
    assert len(ids) == len(set(ids)) == 10
    cursors = [e.cursor for e in journal.events]
    assert cursors == sorted(cursors)  # canaries take positions too, so only the order is fixed
    assert delays
    assert all(0 < d <= BACKOFF_CAP for d in delays)


async def test_backoff_is_capped_and_jittered() -> None:
    delays: list[float] = []
    consumer: RelayConsumer

    async def record(delay: float) -> None:
        if delay == 3600.0:  # the canary loop's period
            await asyncio.Event().wait()
        delays.append(delay)
        if len(delays) >= 10:
            consumer.stop()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    rolls = iter([0.0, 1.0] * 10)
    consumer = RelayConsumer(
        "http://127.0.0.1:9",
        "store-a",
        "t",
        journal := Journal(),
        journal,
        clock=relay_clock(),
        sleep=record,
        random=lambda: next(rolls),
        canary_interval=3600.0,
        transport=httpx.MockTransport(refuse),
    )
    try:
        await asyncio.wait_for(consumer.run(), IO_TIMEOUT)
    finally:
        await consumer.close()
    # ceilings 0.5, 1, 2, 4, 8, 16, 30, 30...; the roll picks the bottom or top half's edge
    assert delays == [0.25, 1.0, 1.0, 4.0, 4.0, 16.0, 15.0, 30.0, 15.0, 30.0]
    assert consumer.health.state == HealthState.DOWN
    assert "ConnectError" in consumer.health.detail


async def test_silent_relay_is_reported_when_the_canary_goes_missing(relay: RunningRelay) -> None:
    clock = relay.clock
    changes: list[RelayHealth] = []
    journal = Journal()
    swallowed = {"count": 0}

    class SwallowCanary(httpx.AsyncBaseTransport):
        """Answers the canary POST without storing it: a relay whose delivery path is broken."""

        def __init__(self) -> None:
            self._inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/canary") and swallowed["count"] == 0:
                swallowed["count"] += 1
                return httpx.Response(200, content=json.dumps({"id": 999_999}).encode())
            return await self._inner.handle_async_request(request)

    consumer = consumer_for(
        relay.url,
        journal,
        journal,
        clock,
        on_health_change=changes.append,
        canary_timeout=30.0,
        transport=SwallowCanary(),
    )
    try:
        await consumer.poll_once(wait=0)
        assert consumer.health.state == HealthState.CONNECTED
        await consumer.send_canary()
        clock.now += 10
        await consumer.poll_once(wait=0)
        assert consumer.health.state == HealthState.CONNECTED
        clock.now += 25
        await consumer.poll_once(wait=0)
        health = consumer.health
        assert health.state == HealthState.SILENT
        assert health.since == clock.now
        assert "canary" in health.detail
        assert [c.state for c in changes] == [HealthState.CONNECTED, HealthState.SILENT]
        consumer._canary = None  # the operator restarted the relay's delivery path
        await consumer.send_canary()
        clock.now += 0.5
        await consumer.poll_once(wait=0)
        assert consumer.health.state == HealthState.CONNECTED
        assert consumer.health.last_canary_rtt == pytest.approx(0.5)
        assert journal.events == []  # canaries never reach the daemon's handler
    finally:
        await consumer.close()


async def test_a_stream_with_no_events_at_all_is_silent(relay: RunningRelay) -> None:
    journal = Journal()
    consumer = consumer_for(relay.url, journal, journal, relay.clock, silence_after=90.0)
    try:
        await consumer.poll_once(wait=0)
        relay.clock.now += 89
        await consumer.poll_once(wait=0)
        assert consumer.health.state == HealthState.CONNECTED
        relay.clock.now += 2
        await consumer.poll_once(wait=0)
        assert consumer.health.state == HealthState.SILENT
        assert consumer.health.detail == "no event for 91 s"
        await relay.post_signed(with_reference(seed("000_intent_error_mla.json"), REF_A))
        await consumer.poll_once(wait=0)
        assert consumer.health.state == HealthState.CONNECTED
    finally:
        await consumer.close()


async def test_consumer_reports_refusals_as_down(relay: RunningRelay) -> None:
    consumer = RelayConsumer(
        relay.url, "store-b", TOKENS["store-a"], journal := Journal(), journal, clock=relay.clock
    )
    try:
        from pointd.relay.errors import RelayRefused

        with pytest.raises(RelayRefused) as refused:
            await consumer.poll_once(wait=0)
        assert refused.value.status == 404
        assert TOKENS["store-a"] not in repr(consumer)
    finally:
        await consumer.close()
