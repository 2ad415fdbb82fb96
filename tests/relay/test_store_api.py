"""Store delivery, admin API, health and metrics over real HTTP, on both backends."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.relay.harness import (
    ADMIN_TOKEN,
    IO_TIMEOUT,
    REF_A,
    REF_B,
    TOKENS,
    RunningRelay,
    seed,
    webhook,
    with_reference,
)

INTENT = seed("000_intent_finished_mla.json")


def intent(reference: str, n: int) -> bytes:
    return with_reference(INTENT, reference).replace(b"abcdef123", f"intent{n}".encode())


@pytest.mark.parametrize(
    ("path", "method"),
    [("/stores/{s}/events", "GET"), ("/stores/{s}/ack", "POST"), ("/stores/{s}/canary", "POST")],
)
async def test_a_store_token_never_reaches_another_store(
    relay: RunningRelay, path: str, method: str
) -> None:
    await relay.post_signed(intent(REF_B, 1))
    answers = {}
    for name, store, token in [
        ("other-store", "store-b", TOKENS["store-a"]),
        ("unknown-store", "nowhere", TOKENS["store-a"]),
        ("admin-token", "store-b", ADMIN_TOKEN),
        ("no-token", "store-b", None),
        ("bad-scheme", "store-b", "Basic x"),
    ]:
        headers = {}
        if token is not None:
            headers["authorization"] = token if token.startswith("Basic") else f"Bearer {token}"
        response = await relay.client.request(
            method, path.format(s=store), headers=headers, json={"cursor": 1}
        )
        answers[name] = (response.status_code, response.content)
    assert answers["other-store"] == answers["unknown-store"] == answers["admin-token"]
    assert answers["other-store"][0] == 404
    assert answers["no-token"][0] == answers["bad-scheme"][0] == 401
    assert (await relay.service.storage.acked("store-b")) == 0
    assert len(await relay.events("store-b")) == 1


async def test_long_poll_wakes_when_an_event_arrives(relay: RunningRelay) -> None:
    waiting = asyncio.create_task(relay.events("store-a", wait=20.0))
    await asyncio.sleep(0.05)  # let the long-poll reach the relay before the event
    assert not waiting.done()
    await relay.post_signed(intent(REF_A, 1))
    events = await asyncio.wait_for(waiting, IO_TIMEOUT)
    assert len(events) == 1


async def test_long_poll_returns_empty_after_wait(sqlite_relay: RunningRelay) -> None:
    relay = sqlite_relay
    response = await relay.client.get(
        "/stores/store-a/events",
        params={"wait": 0.05},
        headers={"authorization": f"Bearer {TOKENS['store-a']}"},
    )
    assert response.json() == {"events": [], "cursor": 0}


async def test_a_long_poll_asking_more_than_the_relay_allows_is_shortened(tmp_path) -> None:
    # A daemon asks 25 s by default; a relay whose operator lowered the timeout must answer
    # empty after its own limit, not refuse the poll and take the store off the air.
    from tests.relay.harness import make_settings, running_relay

    async with running_relay(make_settings(tmp_path, "sqlite", None, long_poll_timeout=1)) as relay:
        response = await asyncio.wait_for(
            relay.client.get(
                "/stores/store-a/events",
                params={"wait": 25},
                headers={"authorization": f"Bearer {TOKENS['store-a']}"},
            ),
            IO_TIMEOUT,
        )
    assert response.status_code == 200
    assert response.json() == {"events": [], "cursor": 0}


async def test_ack_replay_and_default_cursor(relay: RunningRelay) -> None:
    for n in range(1, 5):
        await relay.post_signed(intent(REF_A, n), request_id=f"r{n}")
    auth = {"authorization": f"Bearer {TOKENS['store-a']}"}
    ack = await relay.client.post("/stores/store-a/ack", json={"cursor": 2}, headers=auth)
    assert ack.json() == {"acked": 2}
    back = await relay.client.post("/stores/store-a/ack", json={"cursor": 1}, headers=auth)
    assert back.json() == {"acked": 2}  # never moves back
    beyond = await relay.client.post("/stores/store-a/ack", json={"cursor": 99}, headers=auth)
    assert beyond.json() == {"acked": 4}  # never beyond what exists
    page = (await relay.client.get("/stores/store-a/events", headers=auth)).json()
    assert page == {"events": [], "cursor": 4}  # default: after the acknowledged cursor
    replay = await relay.events("store-a", after=1)
    assert [e["cursor"] for e in replay] == [2, 3, 4]


@pytest.mark.parametrize(
    ("params", "body"),
    [
        ({"after": "-1"}, None),
        ({"after": "x"}, None),
        ({"wait": "1e9"}, None),
        ({"wait": "nan"}, None),
        ({"limit": "0"}, None),
        (None, b"[1]"),
        (None, b'{"cursor": -3}'),
        (None, b'{"cursor": true}'),
        (None, b"not json"),
    ],
)
async def test_store_api_rejects_bad_parameters(
    sqlite_relay: RunningRelay, params: dict[str, str] | None, body: bytes | None
) -> None:
    relay = sqlite_relay
    auth = {"authorization": f"Bearer {TOKENS['store-a']}"}
    if params is not None:
        response = await relay.client.get("/stores/store-a/events", params=params, headers=auth)
    else:
        response = await relay.client.post("/stores/store-a/ack", content=body, headers=auth)
    assert response.status_code == 400
    assert response.json()["error"]


async def test_admin_assigns_an_unrouted_event_and_learns_its_routes(relay: RunningRelay) -> None:
    verbatim = seed("000_intent_finished_mlb.json")  # external_reference "information"
    stored = (await relay.post_signed(verbatim)).json()
    [listed] = (await relay.admin("GET", "/admin/events")).json()["events"]
    assert listed["id"] == stored["event"]
    denied = await relay.client.post(
        f"/admin/events/{listed['id']}/assign",
        json={"store": "store-a"},
        headers={"authorization": f"Bearer {TOKENS['store-a']}"},
    )
    assert denied.status_code == 403
    for bad in ({"store": "nowhere"}, {"store": 3}, {}):
        answer = await relay.admin("POST", f"/admin/events/{listed['id']}/assign", json=bad)
        assert answer.status_code == 400
    assert (
        await relay.admin("POST", "/admin/events/999999/assign", json={"store": "store-a"})
    ).status_code == 404
    assert (
        await relay.admin("POST", "/admin/events/x/assign", json={"store": "store-a"})
    ).status_code == 400
    assigned = await relay.admin(
        "POST", f"/admin/events/{listed['id']}/assign", json={"store": "store-a"}
    )
    assert assigned.json()["cursor"] == 1
    assert [e["id"] for e in await relay.events("store-a")] == [listed["id"]]
    assert (await relay.admin("GET", "/admin/events")).json()["events"] == []
    # The assigned intent taught its payment id: the payment's webhook now routes by itself.
    await relay.post_signed(
        webhook("payment", {"id": "123456789"}),
        query={"data.id": "123456789", "type": "payment"},
        request_id="pay",
    )
    assert [e["topic"] for e in await relay.events("store-a")] == [
        "point_integration_wh",
        "payment",
    ]
    stats = (await relay.admin("GET", "/admin/stats")).json()
    assert stats["missing_stores"] == ["store-b"]  # store-a polled just now
    relay.clock.now += relay.service.config.delivery.canary_window + 1
    assert (await relay.admin("GET", "/admin/stats")).json()["missing_stores"] == [
        "store-a",
        "store-b",
    ]
    assert stats["events"] == 2
    assert stats["unrouted"] == 0
    assert stats["stores"][0]["store"] == "store-a"


async def test_canary_travels_the_store_stream(relay: RunningRelay) -> None:
    auth = {"authorization": f"Bearer {TOKENS['store-b']}"}
    sent = (await relay.client.post("/stores/store-b/canary", headers=auth)).json()
    [event] = await relay.events("store-b")
    assert (event["id"], event["kind"], event["cursor"]) == (sent["id"], "canary", sent["cursor"])
    assert await relay.events("store-a") == []
    assert (await relay.admin("GET", "/admin/events")).json()["events"] == []


async def test_retention_purges_old_events_and_cursors_keep_counting(relay: RunningRelay) -> None:
    await relay.post_signed(intent(REF_A, 1), request_id="old")
    await relay.post_signed(webhook("payment", {"id": "777"}), query={"data.id": "777"})
    relay.clock.now += 3 * 86400
    assert await relay.service.run_cleanup() == 0
    relay.clock.now += 5 * 86400
    await relay.post_signed(intent(REF_A, 2), request_id="new")
    assert await relay.service.run_cleanup() == 2
    assert [e["cursor"] for e in await relay.events("store-a")] == [2]
    assert (await relay.admin("GET", "/admin/events")).json()["events"] == []


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_health_ready_and_metrics(relay: RunningRelay) -> None:
    assert (await relay.client.get("/healthz")).text == "ok\n"
    assert (await relay.client.get("/readyz")).status_code == 200
    await relay.post_signed(intent(REF_A, 1))
    await relay.post_signed(intent(REF_A, 1))
    await relay.post_signed(webhook("payment", {"id": "1"}), signature=None)
    await relay.post_signed(seed("003_fraud_alert_fragment.txt"), request_id="frag")
    public = await relay.client.get("/metrics")
    assert public.status_code == 200
    assert public.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(public.text)
    for name, labels, value in [
        ("pointd_relay_intake_total", (("outcome", "stored"),), 2),
        ("pointd_relay_intake_total", (("outcome", "duplicate"),), 1),
        ("pointd_relay_intake_total", (("outcome", "unauthorized"),), 1),
        ("pointd_relay_unrouted_events", (), 1),
        ("pointd_relay_quarantined_events", (), 2),
        ("pointd_relay_unroutable_fraud_alerts", (), 0),
        ("pointd_relay_stores", (), 2),
        ("pointd_relay_stores_missing", (), 2),
        ("pointd_relay_delivery_lag_events_max", (), 1),
        ("pointd_relay_commit_seconds_count", (), 3),
    ]:
        assert found[(name, labels)] == value, (name, labels)
    assert "x-signature" not in public.text
    # Without the admin token nothing names a store.
    for store in TOKENS:
        assert store not in public.text
    assert all(("store", s) not in labels for _n, labels in found for s in TOKENS)
    admin = await relay.admin("GET", "/metrics")
    assert admin.status_code == 200
    per_store = samples(admin.text)
    assert per_store[("pointd_relay_delivery_lag_events", (("store", "store-a"),))] == 1
    assert per_store[("pointd_relay_store_missing", (("store", "store-b"),))] == 1
    assert per_store[("pointd_relay_events", ())] == 2
    wrong = await relay.client.get("/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert all(store not in wrong.text for store in TOKENS)


async def test_admin_api_is_off_without_a_token(tmp_path, backend) -> None:
    from tests.relay.harness import make_settings, running_relay

    name, dsn = backend
    async with running_relay(make_settings(tmp_path, name, dsn, admin_token=None)) as relay:
        answer = await relay.admin("GET", "/admin/stats")
        assert answer.status_code == 404


async def test_admin_listing_pages_by_cursor_so_volume_hides_nothing(relay: RunningRelay) -> None:
    async def post_unrouted(first: int, count: int) -> None:
        for n in range(first, first + count):
            body = webhook("payment", {"id": f"9{n}"}, n)
            query = {"data.id": f"9{n}", "type": "payment"}
            answer = await relay.post_signed(body, query=query, request_id=f"u-{n}")
            assert answer.status_code == 200

    await post_unrouted(0, 7)
    seen: list[int] = []
    cursor = 0
    for page_number in range(10):
        params = {"after": cursor, "limit": 3}
        page = (await relay.admin("GET", "/admin/events", params=params)).json()
        if not page["events"]:
            break
        seen += [event["id"] for event in page["events"]]
        cursor = page["cursor"]
        if page_number == 0:
            await post_unrouted(100, 5)  # a burst between two pages pushes nothing out of view
    assert len(seen) == 12
    assert seen == sorted(seen)
    assert len(set(seen)) == 12
    empty = (await relay.admin("GET", "/admin/events", params={"after": seen[-1]})).json()
    assert empty == {"events": [], "cursor": seen[-1]}
    bad = await relay.admin("GET", "/admin/events", params={"after": "-1"})
    assert bad.status_code == 400
    status = await relay.admin("GET", "/admin/events", params={"status": "nope"})
    assert status.status_code == 400
    assert "alerted" in status.json()["error"]
