"""The bare-ASGI intake path: what Starlette used to do for it, refusal logging, disconnects,
and the server implementation `pointd relay` picks."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import pytest
from structlog.testing import capture_logs

from pointd.relay import cli
from pointd.relay.service import INTAKE_PATH, REFUSAL_LOG_INTERVAL
from tests.relay.harness import REF_A, RunningRelay, seed, with_reference


async def test_other_methods_on_the_intake_path_are_refused(sqlite_relay: RunningRelay) -> None:
    response = await sqlite_relay.client.get(INTAKE_PATH)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert (await sqlite_relay.service.storage.stats()).events == 0


async def test_answers_are_json_with_their_length(sqlite_relay: RunningRelay) -> None:
    body = with_reference(seed("000_intent_finished_mla.json"), REF_A)
    stored = await sqlite_relay.post_signed(body)
    assert stored.status_code == 200
    assert stored.headers["content-type"] == "application/json"
    assert int(stored.headers["content-length"]) == len(stored.content)
    assert stored.json()["status"] == "stored"
    refused = await sqlite_relay.post_signed(body, request_id="req-2", secret="wrong-secret")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "x-signature"
    assert refused.json() == {"error": "x-signature does not match"}


async def test_refusals_are_counted_and_logged_at_most_once_per_interval(
    sqlite_relay: RunningRelay,
) -> None:
    body = with_reference(seed("000_intent_finished_mla.json"), REF_A)
    with capture_logs() as logs:
        for n in range(5):
            response = await sqlite_relay.post_signed(body, request_id=f"r{n}", secret="bad")
            assert response.status_code == 401
        sqlite_relay.clock.now += REFUSAL_LOG_INTERVAL
        await sqlite_relay.post_signed(body, request_id="r5", secret="bad")
    refusals = [entry for entry in logs if entry["event"] == "intake_refused"]
    assert [entry["refusals_since_last_line"] for entry in refusals] == [1, 5]
    assert all("bad" not in str(entry) for entry in refusals)  # the secret never shows
    assert sqlite_relay.service.metrics.intake_counts()["unauthorized"] == 6


async def test_a_sender_that_goes_away_mid_body_stores_nothing(
    sqlite_relay: RunningRelay,
) -> None:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"id": "x', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": INTAKE_PATH,
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
    }
    await asyncio.wait_for(sqlite_relay.service.app(scope, receive, send), 10)
    assert sent == []
    assert sqlite_relay.service.metrics.intake_counts()["client_gone"] == 1
    assert (await sqlite_relay.service.storage.stats()).events == 0


def test_the_fast_server_parts_are_used_when_installed() -> None:
    expected_http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    assert cli.http_implementation() == expected_http
    factory = cli.loop_factory()
    if importlib.util.find_spec("uvloop") is None:
        assert factory is None
    else:
        assert factory is not None
        loop = factory()
        try:
            assert type(loop).__module__.startswith("uvloop")
        finally:
            loop.close()


def test_without_httptools_and_uvloop_the_relay_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_find_spec = importlib.util.find_spec

    def missing(name: str, *args: Any) -> Any:
        return None if name in {"httptools", "uvloop"} else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", missing)
    assert cli.http_implementation() == "h11"
    assert cli.loop_factory() is None
