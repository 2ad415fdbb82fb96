"""Attempts to get a notification past the relay's x-signature check, or to bend what it stores.

tests/relay already refuses forged, missing, stale, far-future, wrong-secret and
wrong-request-id signatures. Here: header spellings (duplicates, upper case, spaces), the
window edge in seconds and milliseconds, unit swaps, id case games, a signature valid for
one id carried onto another (body id against query id), request-id swaps, and an unsigned
IPN trying to shadow a signed webhook. Each is refused, or accepted only as documented in
pointd/cloud/signature.py and then stores nothing about an id the signature did not cover.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pointd.cloud.signature import MILLISECONDS_THRESHOLD, sign
from tests.relay.harness import (
    REF_A,
    REF_B,
    RunningRelay,
    make_settings,
    relay_clock,
    running_relay,
    seed,
    webhook,
    with_reference,
)

INTAKE = "/mp/webhook"
WINDOW = 600  # intake.ts_window's default, seconds
INTENT_A = with_reference(seed("000_intent_finished_mla.json"), REF_A)
INTENT_A_ID = "abcdef123-8ab5-4139-9aa3-abcd123"  # the seed's id


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    """A relay for store-a and store-b on SQLite, with a hand-moved clock."""
    async with running_relay(make_settings(tmp_path, "sqlite", None), clock=relay_clock()) as r:
        r.extra["database"] = tmp_path / "relay.sqlite3"
        yield r


def stored(relay: RunningRelay) -> list[dict[str, Any]]:
    """Every stored notification, oldest first."""
    with sqlite3.connect(f"file:{relay.extra['database']}?mode=ro", uri=True) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM events ORDER BY id")]


async def post(
    relay: RunningRelay,
    body: bytes,
    headers: list[tuple[str, str]],
    query: dict[str, str] | None = None,
) -> httpx.Response:
    """POST exactly these headers (repeats kept) to the intake."""
    return await relay.client.post(INTAKE, params=query or {}, content=body, headers=headers)


def now_s(relay: RunningRelay) -> int:
    return int(relay.clock.now)


def payment_signature(relay: RunningRelay, data_id: str, request_id: str, ts: str) -> str:
    return sign(relay.secret, data_id=data_id, request_id=request_id, ts=ts)


# ---- header spellings ------------------------------------------------------------------------


async def test_a_second_x_signature_header_cannot_carry_another_ids_signature(
    relay: RunningRelay,
) -> None:
    ts = str(now_s(relay))
    good = payment_signature(relay, "42", "rq-1", ts)
    other = payment_signature(relay, "43", "rq-1", ts)
    body = webhook("payment", {"id": "42"})
    query = {"data.id": "42", "type": "payment"}
    garbage = f"ts={ts},v1={'0' * 64}"
    for first, second in ((good, garbage), (garbage, other), (other, garbage)):
        response = await post(
            relay,
            body,
            [("x-request-id", "rq-1"), ("x-signature", first), ("x-signature", second)],
            query,
        )
        assert response.status_code == 401, (first, second, response.text)
    assert stored(relay) == []
    # The last header is the one checked: a valid one there is accepted, for its own id only.
    response = await post(
        relay,
        body,
        [("x-request-id", "rq-1"), ("x-signature", garbage), ("x-signature", good)],
        query,
    )
    assert response.status_code == 200
    [event] = stored(relay)
    assert event["asks"] == "payment:42"


async def test_a_second_x_request_id_header_does_not_split_what_is_checked_from_what_is_stored(
    relay: RunningRelay,
) -> None:
    ts = str(now_s(relay))
    signature = payment_signature(relay, "42", "rq-2", ts)
    body = webhook("payment", {"id": "42"})
    query = {"data.id": "42", "type": "payment"}
    response = await post(
        relay,
        body,
        [("x-request-id", "rq-2"), ("x-request-id", "rq-evil"), ("x-signature", signature)],
        query,
    )
    assert response.status_code == 401
    response = await post(
        relay,
        body,
        [("x-request-id", "rq-evil"), ("x-request-id", "rq-2"), ("x-signature", signature)],
        query,
    )
    assert response.status_code == 200
    [event] = stored(relay)
    assert event["request_id"] == "rq-2"


@pytest.mark.parametrize(
    "spell",
    [
        lambda ts, v1: f"ts={ts},v1={v1.upper()}",
        lambda ts, v1: f"TS={ts},V1={v1}",
        lambda ts, v1: f"ts = {ts} ,  v1 = {v1}",
        lambda ts, v1: f"v1={v1},ts={ts}",
        lambda ts, v1: f"ts={ts},v1={v1},v0=ignored",
    ],
    ids=["upper-hex", "upper-keys", "spaces", "reordered", "extra-part"],
)
async def test_harmless_spellings_of_a_valid_signature_are_accepted_for_its_own_id(
    relay: RunningRelay, spell: Any
) -> None:
    ts = str(now_s(relay))
    v1 = payment_signature(relay, "42", "rq-3", ts).split("v1=")[1]
    response = await post(
        relay,
        webhook("payment", {"id": "42"}),
        [("x-request-id", "rq-3"), ("x-signature", spell(ts, v1))],
        {"data.id": "42", "type": "payment"},
    )
    assert response.status_code == 200, response.text
    [event] = stored(relay)
    assert (event["asks"], event["signed"]) == ("payment:42", 1)


@pytest.mark.parametrize(
    "spell",
    [
        lambda ts, v1: f"ts={ts},v1={v1[:-1]} {v1[-1]}",
        lambda ts, v1: f"ts=+{ts},v1={v1}",
        lambda ts, v1: f"ts={ts}.0,v1={v1}",
        lambda ts, v1: f"ts={ts},v1={v1}00",
        lambda ts, v1: f"ts={ts};v1={v1}",
        lambda ts, v1: f"ts={ts},v1=sha256={v1}",
        lambda ts, v1: f"ts=0{ts},v1={v1}",
    ],
    ids=[
        "space-in-hex",
        "signed-ts",
        "decimal-ts",
        "long-hex",
        "semicolon",
        "prefixed",
        "zero-padded-ts",
    ],
)
async def test_mangled_signatures_are_refused(relay: RunningRelay, spell: Any) -> None:
    ts = str(now_s(relay))
    v1 = payment_signature(relay, "42", "rq-4", ts).split("v1=")[1]
    response = await post(
        relay,
        webhook("payment", {"id": "42"}),
        [("x-request-id", "rq-4"), ("x-signature", spell(ts, v1))],
        {"data.id": "42", "type": "payment"},
    )
    assert response.status_code == 401, response.text
    assert stored(relay) == []


# ---- the time window -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "unit", "accepted"),
    [
        (-WINDOW, "s", True),
        (-WINDOW - 1, "s", False),
        (WINDOW, "s", True),
        (WINDOW + 1, "s", False),
        (-WINDOW, "ms", True),
        (-WINDOW - 0.001, "ms", False),
        (WINDOW, "ms", True),
        (WINDOW + 0.001, "ms", False),
    ],
)
async def test_the_window_edge_is_the_same_in_seconds_and_milliseconds(
    relay: RunningRelay, offset: float, unit: str, accepted: bool
) -> None:
    moment = relay.clock.now + offset
    ts = str(round(moment * 1000)) if unit == "ms" else str(int(moment))
    response = await relay.post_signed(
        webhook("payment", {"id": "42"}), ts=ts, query={"data.id": "42", "type": "payment"}
    )
    assert response.status_code == (200 if accepted else 401), response.text
    assert len(stored(relay)) == (1 if accepted else 0)


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda ts: str(int(ts) * 1000),
        lambda ts: str(int(ts) // 1000),
        lambda ts: ts + "000",
    ],
)
async def test_a_signature_cannot_be_moved_to_the_other_unit(
    relay: RunningRelay, rewrite: Any
) -> None:
    # A captured signature is stale; rewriting its ts into "now" in another unit must fail.
    old = str(now_s(relay) - 10 * WINDOW)
    v1 = payment_signature(relay, "42", "rq-5", old).split("v1=")[1]
    response = await post(
        relay,
        webhook("payment", {"id": "42"}),
        [("x-request-id", "rq-5"), ("x-signature", f"ts={rewrite(old)},v1={v1}")],
        {"data.id": "42", "type": "payment"},
    )
    assert response.status_code == 401
    assert stored(relay) == []


async def test_a_ts_just_below_the_millisecond_threshold_is_read_as_seconds_and_refused(
    relay: RunningRelay,
) -> None:
    response = await relay.post_signed(
        webhook("payment", {"id": "42"}),
        ts=str(MILLISECONDS_THRESHOLD - 1),
        query={"data.id": "42", "type": "payment"},
    )
    assert response.status_code == 401
    assert stored(relay) == []


# ---- id games --------------------------------------------------------------------------------


async def test_a_lower_case_signature_accepts_a_case_variant_of_the_same_id_only(
    relay: RunningRelay,
) -> None:
    ts = str(now_s(relay))
    body = json.dumps({"type": "order", "data": {"id": "ORD01ABC"}, "id": 7}).encode()
    lower = sign(relay.secret, data_id="ord01abc", request_id="rq-6", ts=ts)
    response = await post(
        relay,
        body,
        [("x-request-id", "rq-6"), ("x-signature", lower)],
        {"data.id": "ORD01ABC", "type": "order"},
    )
    assert response.status_code == 200
    [event] = stored(relay)
    assert event["id_source"] == "query-lower"
    assert event["asks"].lower() == "intent:ord01abc"


async def test_an_exact_case_signature_does_not_cover_another_casing(relay: RunningRelay) -> None:
    ts = str(now_s(relay))
    exact = sign(relay.secret, data_id="ORD01ABC", request_id="rq-7", ts=ts)
    body = json.dumps({"type": "order", "data": {"id": "ord01abc"}, "id": 7}).encode()
    response = await post(
        relay,
        body,
        [("x-request-id", "rq-7"), ("x-signature", exact)],
        {"data.id": "ord01abc", "type": "order"},
    )
    assert response.status_code == 401
    assert stored(relay) == []


async def test_a_signature_for_one_payment_replayed_after_it_stores_nothing_new(
    relay: RunningRelay,
) -> None:
    ts = str(now_s(relay))
    signature = payment_signature(relay, "111", "rq-8", ts)
    headers = [("x-request-id", "rq-8"), ("x-signature", signature)]
    query = {"data.id": "111", "type": "payment"}
    assert (await post(relay, webhook("payment", {"id": "111"}), headers, query)).status_code == 200
    # Same signed query and headers, the body now names another payment and another store.
    forged = json.dumps(
        {"type": "payment", "data": {"id": "222", "external_reference": REF_B}, "id": 8}
    ).encode()
    response = await post(relay, forged, headers, query)
    assert response.status_code in {200, 401}
    assert [event["asks"] for event in stored(relay)] == ["payment:111"]


async def test_a_payment_signature_cannot_be_carried_onto_another_payment_in_the_body(
    relay: RunningRelay,
) -> None:
    # The forged copy arrives first (the attacker wins the race, or MP sent no request id).
    ts = str(now_s(relay))
    headers = [
        ("x-request-id", "rq-9"),
        ("x-signature", payment_signature(relay, "111", "rq-9", ts)),
    ]
    forged = json.dumps({"type": "payment", "data": {"id": "222"}, "id": 9}).encode()
    response = await post(relay, forged, headers, {"data.id": "111", "type": "payment"})
    assert response.status_code == 401 or all(
        event["asks"] == "payment:111" for event in stored(relay)
    ), stored(relay)


async def test_an_intent_signature_cannot_teach_routes_for_another_intent(
    relay: RunningRelay,
) -> None:
    ts = str(now_s(relay))
    # Mercado Pago signs a Point intent with the body's id; the attacker keeps that id in
    # the query and puts another intent (routed to store-b, naming another payment) in the body.
    signature = sign(relay.secret, data_id=INTENT_A_ID, request_id="rq-10", ts=ts)
    other = json.loads(INTENT_A.decode().replace('"caller_id": 09876543', '"caller_id": 1'))
    other.update(id="evil-intent-1", payment={"id": 999, "state": "approved"})
    other["additional_info"]["external_reference"] = REF_B
    response = await post(
        relay,
        json.dumps(other).encode(),
        [("x-request-id", "rq-10"), ("x-signature", signature)],
        {"data.id": INTENT_A_ID},
    )
    events = stored(relay)
    assert response.status_code == 401 or all(
        "evil-intent-1" not in (event["teaches"] + (event["asks"] or "")) for event in events
    ), events


async def test_an_intent_signed_by_its_body_id_cannot_be_renamed(relay: RunningRelay) -> None:
    ts = str(now_s(relay))
    signature = sign(relay.secret, data_id=INTENT_A_ID, request_id="rq-11", ts=ts)
    renamed = INTENT_A.replace(INTENT_A_ID.encode(), b"evil-intent-2")
    response = await post(relay, renamed, [("x-request-id", "rq-11"), ("x-signature", signature)])
    assert response.status_code == 401
    assert stored(relay) == []


# ---- request ids -----------------------------------------------------------------------------


async def test_request_ids_cannot_be_swapped_dropped_or_added(relay: RunningRelay) -> None:
    ts = str(now_s(relay))
    query_1, query_2 = ({"data.id": i, "type": "payment"} for i in ("1", "2"))
    sig_1 = payment_signature(relay, "1", "rq-a", ts)
    sig_2 = payment_signature(relay, "2", "rq-b", ts)
    unsigned_rid = sign(relay.secret, data_id="1", request_id=None, ts=ts)
    attempts = [
        (query_1, [("x-request-id", "rq-b"), ("x-signature", sig_1)]),
        (query_2, [("x-request-id", "rq-a"), ("x-signature", sig_2)]),
        (query_1, [("x-signature", sig_1)]),
        (query_1, [("x-request-id", "rq-new"), ("x-signature", unsigned_rid)]),
        (query_1, [("x-request-id", "RQ-A"), ("x-signature", sig_1)]),
    ]
    for query, headers in attempts:
        response = await post(relay, webhook("payment", {"id": query["data.id"]}), headers, query)
        assert response.status_code == 401, (query, headers)
    assert stored(relay) == []


async def test_an_unsigned_ipn_cannot_shadow_a_signed_webhook_with_the_same_request_id(
    relay: RunningRelay,
) -> None:
    ipn = await post(
        relay, b"", [("x-request-id", "rq-shadow")], {"topic": "payment", "id": "424242"}
    )
    assert ipn.status_code == 200
    intent = await relay.post_signed(INTENT_A, request_id="rq-shadow")
    assert intent.status_code == 200
    assert any(event["store"] == "store-a" for event in stored(relay)), stored(relay)
