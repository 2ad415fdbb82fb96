"""The control server over a real unix socket: framing abuse, params, audit, events, logs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from pointd.control.client import ControlClient
from pointd.control.errors import ControlError, MethodError
from pointd.control.methods import DAEMON_METHODS, DAEMON_TOPICS
from pointd.control.protocol import MAX_REQUEST_BYTES, ErrorCode
from pointd.control.server import (
    MAX_SUBSCRIBER_BUFFER,
    REQUEST_LOG_SIZE,
    Caller,
    ControlServer,
    Param,
)
from tests.control.conftest import IO_TIMEOUT, RawLine
from tests.control.fake_daemon import FakeDaemon, serve


def _error(response: dict[str, Any]) -> dict[str, Any]:
    assert "error" in response, response
    error: dict[str, Any] = response["error"]
    return error


async def test_methods_describes_every_method(raw: RawLine) -> None:
    response = await raw.request({"id": 1, "method": "methods"})
    listed = {m["name"]: m for m in response["result"]["methods"]}
    assert set(listed) == set(DAEMON_METHODS) | {"methods", "subscribe", "connections"}
    for name, spec in DAEMON_METHODS.items():
        assert listed[name]["mutating"] is spec.mutating
        assert listed[name]["description"] == spec.description
        assert set(listed[name]["params"]) == set(spec.params)
    assert listed["override"]["params"]["decision"]["choices"] == ["release", "void"]
    assert listed["verify"]["min_interval"] == 1.0
    assert set(response["result"]["topics"]) == set(DAEMON_TOPICS)
    assert response["result"]["access"] == "admin"  # the tests run as root


async def test_response_carries_the_request_id(raw: RawLine) -> None:
    assert (await raw.request({"id": "abc", "method": "holds"}))["id"] == "abc"
    assert (await raw.request({"method": "holds"}))["id"] is None


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{not json", ErrorCode.BAD_JSON),
        (b"\xff\xfe", ErrorCode.BAD_JSON),
        (b"[1, 2]", ErrorCode.BAD_REQUEST),
        (b'{"id": 1}', ErrorCode.BAD_REQUEST),
        (b'{"id": 1, "method": 7}', ErrorCode.BAD_REQUEST),
        (b'{"id": [1], "method": "status"}', ErrorCode.BAD_REQUEST),
        (b'{"id": true, "method": "status"}', ErrorCode.BAD_REQUEST),
        (b'{"id": 1, "method": "status", "extra": 1}', ErrorCode.BAD_REQUEST),
        (b'{"id": 1, "method": "status", "params": [1]}', ErrorCode.BAD_PARAMS),
        (b'{"id": 1, "method": "frobnicate"}', ErrorCode.UNKNOWN_METHOD),
    ],
)
async def test_bad_requests_get_an_error_and_the_connection_stays_usable(
    raw: RawLine, line: bytes, code: ErrorCode
) -> None:
    await raw.send(line + b"\n")
    assert _error(await raw.receive())["code"] == code
    assert "result" in await raw.request({"id": 2, "method": "holds"})


async def test_unknown_method_points_at_methods(raw: RawLine) -> None:
    error = _error(await raw.request({"id": 1, "method": "refundd"}))
    assert "'refundd'" in error["message"]
    assert "methods" in error["message"]


async def test_oversize_line_is_skipped_even_when_it_arrives_in_pieces(raw: RawLine) -> None:
    piece = b'{"id": 1, "method": "status", "params": {"x": "' + b"a" * 4000
    for _ in range(MAX_REQUEST_BYTES // 4000 + 2):
        await raw.send(piece)
    await raw.send(b'"}}\n')
    error = _error(await raw.receive())
    assert error["code"] == ErrorCode.LINE_TOO_LONG
    assert (await raw.request({"id": 9, "method": "holds"}))["id"] == 9


async def test_blank_lines_are_bad_json_not_a_crash(raw: RawLine) -> None:
    await raw.send(b"\n")
    assert _error(await raw.receive())["code"] == ErrorCode.BAD_JSON


@pytest.mark.parametrize(
    ("method", "params", "param"),
    [
        ("sale", {}, "sale_id"),
        ("sale", {"sale_id": 5}, "sale_id"),
        ("sale", {"sale_id": ""}, "sale_id"),
        ("sale", {"sale_id": "S-1", "verbose": True}, "verbose"),
        ("sales", {"limit": "10"}, "limit"),
        ("sales", {"limit": True}, "limit"),
        ("sales", {"limit": 0}, "limit"),
        ("sales", {"limit": 1001}, "limit"),
        ("sales", {"state": "paid"}, "state"),
        ("override", {"sale_id": "S-1", "decision": "approve", "reason": "ok ok"}, "decision"),
        ("override", {"sale_id": "S-1", "decision": "release"}, "reason"),
        ("override", {"sale_id": "S-1", "decision": "release", "reason": "x" * 501}, "reason"),
        ("cancel", {}, "sale_id"),
        ("cancel", {"sale_id": "S-1", "lane": "1"}, "sale_id"),
        ("refund", {"sale_id": "S-1", "amount_cents": 12.5}, "amount_cents"),
        ("refund", {"sale_id": "S-1", "amount_cents": -1}, "amount_cents"),
        ("subscribe", {"topics": ["nope"]}, "topics"),
        ("subscribe", {"topics": "sale"}, "topics"),
    ],
)
async def test_bad_params_name_the_param_and_nothing_runs(
    raw: RawLine, daemon: FakeDaemon, method: str, params: dict[str, Any], param: str
) -> None:
    error = _error(await raw.request({"id": 1, "method": method, "params": params}))
    assert error["code"] == ErrorCode.BAD_PARAMS
    assert error["param"] == param
    assert repr(param) in error["message"] or param in error["message"]
    assert daemon.timeline == []


async def test_valid_params_reach_the_handler_typed(raw: RawLine, daemon: FakeDaemon) -> None:
    response = await raw.request(
        {"id": 1, "method": "sales", "params": {"lane": "1", "limit": 5, "state": "held"}}
    )
    assert response["result"] == {"sales": []}
    assert daemon.calls() == [("sales", {"lane": "1", "limit": 5, "state": "held"})]


async def test_null_optional_param_counts_as_absent(raw: RawLine, daemon: FakeDaemon) -> None:
    await raw.request({"id": 1, "method": "cancel", "params": {"sale_id": "S-1", "lane": None}})
    assert daemon.calls() == [("cancel", {"sale_id": "S-1"})]


async def test_mutating_call_is_audited_before_it_runs(raw: RawLine, daemon: FakeDaemon) -> None:
    daemon.hold("S-2")
    params = {"sale_id": "S-2", "decision": "release", "reason": "manager saw the receipt"}
    response = await raw.request({"id": 1, "method": "override", "params": params})
    assert response["result"] == {"sale_id": "S-2", "state": "overridden"}
    assert daemon.timeline == [
        ("audit", (0, "override", params)),
        ("call", (0, "override", params)),
    ]


async def test_failed_audit_means_the_call_does_not_run(raw: RawLine, daemon: FakeDaemon) -> None:
    daemon.hold("S-2")
    daemon.audit_fails = True
    params = {"sale_id": "S-2", "decision": "release", "reason": "manager saw the receipt"}
    error = _error(await raw.request({"id": 1, "method": "override", "params": params}))
    assert error["code"] == ErrorCode.AUDIT_FAILED
    assert daemon.calls() == []
    assert daemon.sales["S-2"]["state"] == "held"


async def test_read_only_calls_are_not_audited(raw: RawLine, daemon: FakeDaemon) -> None:
    await raw.request({"id": 1, "method": "status"})
    await raw.request({"id": 2, "method": "verify", "params": {"payment_id": "1"}})
    assert daemon.audits() == []


async def test_handler_errors_pass_their_code(raw: RawLine) -> None:
    error = _error(await raw.request({"id": 1, "method": "sale", "params": {"sale_id": "S-9"}}))
    assert error == {"code": "not_found", "message": "no sale 'S-9'"}
    error = _error(
        await raw.request(
            {
                "id": 2,
                "method": "override",
                "params": {"sale_id": "S-1", "decision": "void", "reason": "test it"},
            }
        )
    )
    assert error["code"] == ErrorCode.CONFLICT


async def test_handler_crash_is_internal_without_leaking_its_text(sock_dir: Path) -> None:
    server = ControlServer(sock_dir / "c.sock", record_audit=lambda *_: None)

    async def explode(caller: Caller) -> None:
        raise RuntimeError("token APP_USR-secret-value in a traceback")

    async def not_json(caller: Caller) -> object:
        return object()

    server.register("explode", explode, mutating=True, params={}, description="d")
    server.register("odd", not_json, mutating=False, params={}, description="d")
    await server.start()
    try:
        raw = await RawLine.open(server.path)
        error = _error(await raw.request({"id": 1, "method": "explode"}))
        assert error["code"] == ErrorCode.INTERNAL
        assert "unknown" in error["message"]  # a mutating call that crashed: outcome unknown
        assert "APP_USR" not in error["message"]
        assert _error(await raw.request({"id": 2, "method": "odd"}))["code"] == ErrorCode.INTERNAL
        assert "result" in await raw.request({"id": 3, "method": "methods"})
        await raw.close()
    finally:
        await server.close()


async def test_rate_limit_uses_the_injected_clock(sock_dir: Path, daemon: FakeDaemon) -> None:
    now = [100.0]
    server = serve(daemon, str(sock_dir / "c.sock"), monotonic=lambda: now[0])
    await server.start()
    try:
        raw = await RawLine.open(server.path)
        verify = {"method": "verify", "params": {"payment_id": "77"}}
        assert "result" in await raw.request({"id": 1, **verify})
        now[0] += 0.4
        error = _error(await raw.request({"id": 2, **verify}))
        assert error["code"] == ErrorCode.RATE_LIMITED
        assert error["retry_after"] == pytest.approx(0.6)
        now[0] += 0.6
        assert "result" in await raw.request({"id": 3, **verify})
        assert [c for c in daemon.calls() if c[0] == "verify"] == [
            ("verify", {"payment_id": "77"}),
            ("verify", {"payment_id": "77"}),
        ]
        await raw.close()
    finally:
        await server.close()


async def test_subscribers_get_their_topics_only(server: ControlServer) -> None:
    async with (
        await ControlClient.connect(server.path) as every,
        await ControlClient.connect(server.path) as sales_only,
        await ControlClient.connect(server.path) as not_subscribed,
    ):
        assert await every.call("subscribe") == {"topics": sorted(DAEMON_TOPICS)}
        assert await sales_only.call("subscribe", {"topics": ["sale"]}) == {"topics": ["sale"]}
        assert server.publish("relay", {"connected": False}) == 1
        assert server.publish("sale", {"sale_id": "S-1", "state": "held"}) == 2
        got_every = [
            await asyncio.wait_for(anext(aiter(every.events())), IO_TIMEOUT) for _ in range(2)
        ]
        got_sale = await asyncio.wait_for(anext(aiter(sales_only.events())), IO_TIMEOUT)
        assert [e.topic for e in got_every] == ["relay", "sale"]
        assert got_sale.data == {"sale_id": "S-1", "state": "held"}
        # Calls still work on a subscribed connection, with events interleaved.
        assert "lanes" in await sales_only.call("status")
        assert not_subscribed.drain_events() == []


async def test_publishing_an_undeclared_topic_is_a_bug(server: ControlServer) -> None:
    with pytest.raises(ValueError, match="not registered"):
        server.publish("salez", {})


async def test_slow_subscriber_is_dropped_and_does_not_stall_others(
    server: ControlServer,
) -> None:
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(str(server.path))
    stalled.sendall(b'{"id": 1, "method": "subscribe"}\n')
    async with await ControlClient.connect(server.path) as healthy:
        await healthy.call("subscribe")
        await asyncio.sleep(0)  # let the server read the stalled client's subscribe
        async with asyncio.timeout(IO_TIMEOUT):
            while len(server.connection_report()) < 2 or not all(  # noqa: ASYNC110
                c["subscribed"] for c in server.connection_report()
            ):
                await asyncio.sleep(0.01)
        payload = {"blob": "x" * 8192}
        events = healthy.events()
        rounds = 0
        while len(server.connection_report()) == 2:
            rounds += 1
            assert rounds < 10 * MAX_SUBSCRIBER_BUFFER // 8192, "stalled client never dropped"
            server.publish("status", payload)
            # The healthy client keeps up: each event arrives before the next is published.
            event = await asyncio.wait_for(anext(events), IO_TIMEOUT)
            assert event.data == payload
        assert server.publish("status", payload) == 1
        await asyncio.wait_for(anext(events), IO_TIMEOUT)
    stalled.close()


async def test_request_log_keeps_the_last_twenty(raw: RawLine) -> None:
    for number in range(REQUEST_LOG_SIZE + 5):
        await raw.request({"id": number, "method": "holds"})
    await raw.send(b"nonsense\n")
    await raw.receive()
    report = (await raw.request({"id": "last", "method": "connections"}))["result"]
    (mine,) = report["connections"]
    log = mine["requests"]
    assert len(log) == REQUEST_LOG_SIZE
    assert log[-1] == {**log[-1], "method": None, "outcome": "bad_json"}
    assert log[-2]["id"] == REQUEST_LOG_SIZE + 4
    assert log[-2]["outcome"] == "ok"
    assert mine["uid"] == 0
    assert mine["access"] == "admin"


async def test_socket_mode_and_group(sock_dir: Path, daemon: FakeDaemon) -> None:
    server = serve(daemon, str(sock_dir / "c.sock"), read_group="nogroup")
    await server.start()
    try:
        info = server.path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == 65534
        assert os.listdir(sock_dir) == ["c.sock"]  # no staging leftovers
    finally:
        await server.close()
    assert not server.path.exists()


async def test_stale_socket_is_replaced(sock_dir: Path, daemon: FakeDaemon) -> None:
    path = sock_dir / "c.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a crashed daemon leaves
    server = serve(daemon, str(path))
    await server.start()
    try:
        raw = await RawLine.open(path)
        assert "result" in await raw.request({"id": 1, "method": "holds"})
        await raw.close()
    finally:
        await server.close()


async def test_live_socket_is_not_stolen(server: ControlServer, daemon: FakeDaemon) -> None:
    second = serve(daemon, str(server.path))
    with pytest.raises(ControlError, match="another process"):
        await second.start()
    raw = await RawLine.open(server.path)
    assert "result" in await raw.request({"id": 1, "method": "holds"})
    await raw.close()


async def test_a_regular_file_in_the_way_is_left_alone(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    path.write_text("keep me")
    server = ControlServer(path, record_audit=lambda *_: None)
    with pytest.raises(ControlError, match="not a socket"):
        await server.start()
    assert path.read_text() == "keep me"


async def test_close_drops_connections(server: ControlServer) -> None:
    client = await ControlClient.connect(server.path)
    await client.call("subscribe")
    await server.close()
    events = [e async for e in client.events()]
    assert events == []
    await client.close()


def test_registering_twice_or_bad_exactly_one_of_is_refused(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "c.sock", record_audit=lambda *_: None)

    async def handler(caller: Caller) -> None:
        return None

    with pytest.raises(ValueError, match="already registered"):
        server.register("methods", handler, mutating=False, params={}, description="d")
    with pytest.raises(ValueError, match="exactly_one_of"):
        server.register(
            "x",
            handler,
            mutating=False,
            params={"a": Param(str, "a")},
            description="d",
            exactly_one_of=("a",),
        )


async def test_async_audit_hook_is_awaited(sock_dir: Path) -> None:
    order: list[str] = []

    async def audit(uid: int, method: str, params: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        order.append("audit")

    async def act(caller: Caller) -> str:
        order.append("act")
        return "done"

    server = ControlServer(sock_dir / "c.sock", record_audit=audit)
    server.register("act", act, mutating=True, params={}, description="d")
    await server.start()
    try:
        raw = await RawLine.open(server.path)
        assert (await raw.request({"id": 1, "method": "act"}))["result"] == "done"
        assert order == ["audit", "act"]
        await raw.close()
    finally:
        await server.close()


def test_method_error_keeps_its_code() -> None:
    error = MethodError(ErrorCode.CONFLICT, "busy", lane="1")
    assert (error.code, error.message, error.extra) == (ErrorCode.CONFLICT, "busy", {"lane": "1"})
    assert json.dumps(error.extra)
