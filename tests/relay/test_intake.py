"""Intake over real HTTP on both backends: seeds, signatures, limits, duplicates, routing."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from pointd.cloud.signature import sign
from pointd.relay.service import INTAKE_PATH
from tests.relay.harness import REF_A, REF_B, SEEDS, RunningRelay, seed, webhook, with_reference

INTENT_SEEDS = sorted(p.name for p in SEEDS.glob("00[01]_intent_*.json"))
ALL_SEEDS = sorted(p.name for p in SEEDS.iterdir() if p.name != "README.md")


async def _count(relay: RunningRelay) -> int:
    return (await relay.service.storage.stats()).events


async def test_every_intent_seed_is_delivered_to_its_store(relay: RunningRelay) -> None:
    for index, name in enumerate(INTENT_SEEDS):
        body = with_reference(seed(name), REF_A if index % 2 == 0 else REF_B)
        response = await relay.post_signed(body, request_id=f"req-{name}")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "stored"
    events_a = await relay.events("store-a")
    events_b = await relay.events("store-b")
    assert len(events_a) + len(events_b) == len(INTENT_SEEDS)
    for event in events_a:
        body = base64.b64decode(event["body_b64"])
        assert REF_A.encode() in body
        assert event["kind"] == "intent"
        assert event["parse"] == "lenient"  # the seeds' "caller_id": 09876543
        assert event["signed"] is True
        assert event["id_source"] == "body"
        assert event["headers"]["x-request-id"].startswith("req-")
    assert all(REF_B.encode() in base64.b64decode(e["body_b64"]) for e in events_b)
    quarantined = await relay.admin("GET", "/admin/events", params={"status": "quarantined"})
    assert len(quarantined.json()["events"]) == len(INTENT_SEEDS)


async def test_verbatim_seeds_are_kept_unrouted_or_quarantined(relay: RunningRelay) -> None:
    for name in ALL_SEEDS:
        body = seed(name)
        query = {"data.id": "58980959081", "type": "stop_delivery_op_wh"} if "fraud" in name else {}
        response = await relay.post_signed(body, query=query, request_id=f"req-{name}")
        assert response.status_code == 200, (name, response.text)
    unrouted = (await relay.admin("GET", "/admin/events", params={"limit": 100})).json()["events"]
    assert len(unrouted) == len(ALL_SEEDS)
    stored = {base64.b64decode(e["body_b64"]) for e in unrouted}
    assert stored == {seed(name) for name in ALL_SEEDS}
    quarantined = (
        await relay.admin("GET", "/admin/events", params={"status": "quarantined"})
    ).json()["events"]
    invalid = {n for n in ALL_SEEDS if n.startswith(("000", "001", "003"))}
    assert {base64.b64decode(e["body_b64"]) for e in quarantined} == {seed(n) for n in invalid}
    # Seeds 000/001 repair their leading zeros, seed 003 its missing braces.
    assert {e["parse"] for e in quarantined} == {"lenient"}


async def test_payment_topics_follow_payment_ids_learned_from_intents(relay: RunningRelay) -> None:
    intent = with_reference(seed("000_intent_finished_mla.json"), REF_A)  # payment.id 123456789
    assert (await relay.post_signed(intent, request_id="r0")).status_code == 200
    payment = webhook("payment", {"id": "123456789"})
    fraud = webhook("stop_delivery_op_wh", {"payment_id": 123456789, "merchant_order": 1}, 2)
    claim = webhook("topic_claims_integration_wh", {"payment_id": 123456789, "id": "c1"}, 3)
    chargeback = seed("004_chargebacks.json").replace(b"81034165129", b"123456789")
    wrapper = webhook("point_integration_wh", {"id": "abcdef123-8ab5-4139-9aa3-abcd123"}, 4)
    other = webhook("payment", {"id": "999"}, 5)
    posts = [
        (payment, {"data.id": "123456789", "type": "payment"}),
        (fraud, {"data.id": "123456789", "type": "stop_delivery_op_wh"}),
        (claim, {"data.id": "c1", "type": "topic_claims_integration_wh"}),
        (chargeback, {"data.id": "217000061307271000", "type": "topic_chargebacks_wh"}),
        (wrapper, {"data.id": "abcdef123-8ab5-4139-9aa3-abcd123", "type": "point_integration_wh"}),
        (other, {"data.id": "999", "type": "payment"}),
    ]
    for index, (body, query) in enumerate(posts):
        response = await relay.post_signed(body, query=query, request_id=f"r{index + 1}")
        assert response.status_code == 200, response.text
    topics = [e["topic"] for e in await relay.events("store-a")]
    assert topics == [
        "point_integration_wh",
        "payment",
        "stop_delivery_op_wh",
        "topic_claims_integration_wh",
        "topic_chargebacks_wh",
        "point_integration_wh",
    ]
    assert await relay.events("store-b") == []
    unrouted = (await relay.admin("GET", "/admin/events")).json()["events"]
    assert [e["query"]["data.id"] for e in unrouted] == ["999"]


async def test_ipn_is_stored_unsigned_as_a_hint(relay: RunningRelay) -> None:
    intent = with_reference(seed("001_intent_confirmation_required.json"), REF_B)
    assert (await relay.post_signed(intent)).status_code == 200
    response = await relay.client.post(
        INTAKE_PATH, params={"topic": "payment", "id": "123456789"}, content=b""
    )
    assert response.status_code == 200
    events = await relay.events("store-b")
    assert [(e["kind"], e["signed"]) for e in events] == [("intent", True), ("ipn", False)]


@pytest.mark.parametrize(
    "case",
    ["forged", "missing", "wrong-secret", "stale", "future", "garbage", "wrong-request-id"],
)
async def test_bad_signatures_are_refused_and_nothing_is_stored(
    sqlite_relay: RunningRelay, case: str
) -> None:
    relay = sqlite_relay
    body = webhook("payment", {"id": "42"})
    query = {"data.id": "42", "type": "payment"}
    now = relay.clock.now
    kwargs: dict[str, object] = {
        "forged": {"signature": f"ts={int(now)},v1={'0' * 64}"},
        "missing": {"signature": None},
        "wrong-secret": {"secret": "not-the-secret"},
        "stale": {"ts": str(int(now - 601))},
        "future": {"ts": str(int(now + 601) * 1000)},
        "garbage": {"signature": "hello"},
        "wrong-request-id": {
            "signature": sign(relay.secret, data_id="42", request_id="other", ts=str(int(now)))
        },
    }[case]
    response = await relay.post_signed(body, query=query, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 401
    assert "error" in response.json()
    assert await _count(relay) == 0


async def test_signature_variants_are_accepted_and_recorded(sqlite_relay: RunningRelay) -> None:
    relay = sqlite_relay
    body = json.dumps({"type": "order", "data": {"id": "ORD01ABC"}, "id": 7}).encode()
    ts_ms = str(int(relay.clock.now * 1000))
    lower = sign(relay.secret, data_id="ord01abc", request_id="rq", ts=ts_ms)
    response = await relay.post_signed(
        body, query={"data.id": "ORD01ABC", "type": "order"}, request_id="rq", signature=lower
    )
    assert response.status_code == 200
    [event] = (await relay.admin("GET", "/admin/events")).json()["events"]
    assert event["id_source"] == "query-lower"


async def test_oversize_bodies_get_413_and_nothing_is_stored(relay: RunningRelay) -> None:
    limit = relay.service.config.intake.body_limit
    big = b"{" + b" " * limit + b"}"
    assert (await relay.post_signed(big)).status_code == 413

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(limit // 8192 + 2):
            yield b" " * 8192

    ts = str(int(relay.clock.now))
    headers = {"x-request-id": "rq-big", "x-signature": sign(
        relay.secret, data_id="1", request_id="rq-big", ts=ts)}
    try:
        response = await relay.client.post(
            INTAKE_PATH, params={"data.id": "1", "type": "payment"}, content=chunks(),
            headers=headers,
        )
    except httpx.TransportError:
        pass  # refused mid-body and closed: a client still sending may see only the reset
    else:
        assert response.status_code == 413
    assert await _count(relay) == 0


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("data.id=1&data.id=2&type=payment", {}),
        ("data.id=&type=payment", {}),
        ("data.id=%00x&type=payment", {}),
        ("data.id=1&type=payment&pad=" + "x" * 3000, {}),
        ("data.id=1&type=payment", {"x-request-id": "r" * 300}),
        ("data.id=1&type=payment", {"x-request-id": "bad\tid"}),
    ],
    ids=["repeated", "empty-id", "nul-in-id", "long-query", "long-request-id", "tab-in-request-id"],
)
async def test_malformed_requests_get_4xx_and_nothing_is_stored(
    sqlite_relay: RunningRelay, query: str, headers: dict[str, str]
) -> None:
    relay = sqlite_relay
    body = webhook("payment", {"id": "1"})
    signature = sign(relay.secret, data_id="1", request_id=None, ts=str(int(relay.clock.now)))
    response = await relay.client.post(
        f"{INTAKE_PATH}?{query}", content=body, headers={"x-signature": signature, **headers}
    )
    assert 400 <= response.status_code < 500
    assert response.json()["error"]
    assert await _count(relay) == 0


async def test_duplicates_are_answered_2xx_and_stored_once(relay: RunningRelay) -> None:
    body = with_reference(seed("000_intent_error_mla.json"), REF_A)
    first = await relay.post_signed(body, request_id="same")
    again = await relay.post_signed(body, request_id="same")
    retried = await relay.post_signed(body, request_id="other-delivery")
    assert [r.json()["status"] for r in (first, again, retried)] == [
        "stored",
        "duplicate",
        "duplicate",
    ]
    assert len({r.json()["event"] for r in (first, again, retried)}) == 1
    assert len(await relay.events("store-a")) == 1


async def test_unsigned_mode_stores_and_flags(tmp_path, backend) -> None:
    from tests.relay.harness import make_settings, running_relay

    name, dsn = backend
    settings = make_settings(tmp_path, name, dsn, signature_required=False)
    async with running_relay(settings) as relay:
        response = await relay.post_signed(webhook("payment", {"id": "5"}), signature=None)
        assert response.status_code == 200
        [event] = (await relay.admin("GET", "/admin/events")).json()["events"]
        assert event["signed"] is False


async def test_intake_rejects_other_methods(sqlite_relay: RunningRelay) -> None:
    relay = sqlite_relay
    response = await relay.client.get(INTAKE_PATH)
    assert response.status_code == 405
    assert isinstance(relay.client, httpx.AsyncClient)


async def test_ipn_fraud_alert_is_kept_unsigned_and_routed_by_its_payment(
    relay: RunningRelay,
) -> None:
    # Seed 003: IPN cannot be validated with the secret, so even a signature that would
    # verify as a webhook's is not checked, and the alert is a hint like any IPN.
    intent = with_reference(seed("000_intent_finished_mla.json"), REF_A).replace(
        b"123456789", b"23064274473"
    )
    assert (await relay.post_signed(intent, request_id="r-i")).status_code == 200
    query = {"topic": "delivery_cancellation", "id": "4945357007"}
    response = await relay.post_signed(
        seed("003_fraud_alert_fragment.txt"), query=query, request_id="r-ipn",
        signed_id="4945357007",
    )
    assert response.status_code == 200, response.text
    events = await relay.events("store-a")
    assert [(e["kind"], e["topic"], e["signed"], e["id_source"], e["parse"]) for e in events] == [
        ("intent", "point_integration_wh", True, "body", "lenient"),
        ("ipn", "delivery_cancellation", False, None, "lenient"),
    ]
    assert events[1]["headers"]["x-request-id"] == "r-ipn"
