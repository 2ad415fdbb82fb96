"""The hand-written notify sender and the health-gated watchdog, against real datagram sockets."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import example, given
from hypothesis import strategies as st

from pointd.app.systemd_notify import Notifier, WatchdogLoop, watchdog_interval


class Listener:
    """An AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[tuple[str, Listener]]:
    address = str(tmp_path / "notify")
    listener = Listener(address)
    yield address, listener
    listener.sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[str, Listener]]:
    name = f"pointd-test-{secrets.token_hex(6)}"
    listener = Listener("\0" + name)
    yield "@" + name, listener
    listener.sock.close()


@pytest.mark.parametrize("which", ["path_listener", "abstract_listener"])
def test_messages_arrive_as_key_value_datagrams(which: str, request: pytest.FixtureRequest) -> None:
    address, listener = request.getfixturevalue(which)
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready("2 terminals online")
    assert notifier.status("relay connected")
    assert notifier.watchdog()
    assert notifier.extend_timeout(1.5)
    assert notifier.stopping("finishing sale S-1")
    assert listener.messages() == [
        "READY=1\nSTATUS=2 terminals online",
        "STATUS=relay connected",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=1500000",
        "STOPPING=1\nSTATUS=finishing sale S-1",
    ]


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_default_environment_is_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, path_listener: tuple[str, Listener]
) -> None:
    address, listener = path_listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    Notifier.from_environ().ready()
    assert listener.messages() == ["READY=1"]


@example("\ud800 lone surrogate\nWATCHDOG=1")
@example("ok\r\nREADY=1\u2028READY=1")
@given(st.text(alphabet=st.characters(categories=["L", "N", "Zs", "Zl", "Zp", "Cc", "Cs"])))
def test_status_text_can_never_forge_another_field(text: str) -> None:
    address = "\0" + f"pointd-test-{secrets.token_hex(6)}"
    listener = Listener(address)
    try:
        Notifier("@" + address[1:]).status(text)
        messages = listener.messages()
    finally:
        listener.sock.close()
    (message,) = messages
    assert message.count("\n") == 0
    assert message.startswith("STATUS=")


def test_a_dead_socket_is_logged_not_raised(
    tmp_path: Path, quiet_logs: list[MutableMapping[str, Any]]
) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.ready() is False
    assert quiet_logs[-1]["event"] == "notify_failed"


def test_unsupported_address_kinds_disable_the_notifier() -> None:
    assert not Notifier("vsock:2:1234").enabled


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "4242"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "twenty"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_sec(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


def test_watchdog_interval_defaults_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 2.0


class StopLoop(Exception):
    pass


async def test_watchdog_pings_only_after_a_passed_check(
    path_listener: tuple[str, Listener],
) -> None:
    address, listener = path_listener
    verdicts = iter([True, False, True, True, False])
    slept: list[float] = []

    async def check() -> bool:
        return next(verdicts)

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 5:
            raise StopLoop

    loop = WatchdogLoop(check, Notifier(address), interval=10.0, sleep=fake_sleep)
    with pytest.raises(StopLoop):
        await loop.run()
    assert slept == [10.0] * 5
    assert listener.messages() == ["WATCHDOG=1"] * 3


async def test_a_crashing_or_non_boolean_check_is_unhealthy(
    path_listener: tuple[str, Listener],
) -> None:
    address, listener = path_listener

    async def crash() -> bool:
        raise RuntimeError("serial reader died")

    async def vague() -> bool:
        return "yes"  # type: ignore[return-value]

    notifier = Notifier(address)
    assert await WatchdogLoop(crash, notifier, interval=10.0).beat() is False
    assert await WatchdogLoop(vague, notifier, interval=10.0).beat() is False
    assert listener.messages() == []


async def test_a_hanging_check_never_pings(path_listener: tuple[str, Listener]) -> None:
    address, listener = path_listener

    async def hang() -> bool:
        await asyncio.Event().wait()
        return True

    # The check is bounded by the ping interval; a tiny interval keeps the test instant.
    assert await WatchdogLoop(hang, Notifier(address), interval=0.01).beat() is False
    assert listener.messages() == []


async def test_a_stop_that_lands_as_the_check_answers_still_stops_the_loop(
    path_listener: tuple[str, Listener],
) -> None:
    # The daemon stops by cancelling its tasks and waiting for each. On Python 3.11 a
    # cancellation that arrives while asyncio.wait_for's inner task has just finished is
    # swallowed (wait_for returns the result), so a loop built on it never ends and the
    # failed daemon never exits. Here the check itself cancels the loop as it answers.
    address, _listener = path_listener
    looping: asyncio.Task[None] | None = None
    checks = 0

    async def answers_as_the_stop_lands() -> bool:
        nonlocal checks
        checks += 1
        if checks == 1:
            assert looping is not None
            looping.cancel()
        return True

    watchdog = WatchdogLoop(answers_as_the_stop_lands, Notifier(address), interval=0.01)
    looping = asyncio.create_task(watchdog.run())
    done, _ = await asyncio.wait({looping}, timeout=10)
    if not done:
        looping.cancel()  # lands in the sleep this time, so the test can end
        await asyncio.wait({looping})
    assert done, f"the watchdog loop went on after it was cancelled ({checks} checks)"
    assert looping.cancelled()


def test_a_notify_socket_nobody_reads_drops_pings_instead_of_blocking(
    path_listener: tuple[str, Listener],
) -> None:
    # The daemon sends from its event loop: a full queue must cost a missed ping, never a
    # daemon stopped until systemd reads. The sender runs in a thread so that a blocking
    # send fails this test instead of hanging it.
    address, listener = path_listener
    notifier = Notifier(address)
    outcome: list[bool] = []

    def ping_until_refused() -> None:
        for _ in range(1_000_000):
            if not notifier.watchdog():
                outcome.append(False)
                return
        outcome.append(True)

    sender = threading.Thread(target=ping_until_refused, daemon=True)
    sender.start()
    sender.join(timeout=60)
    assert not sender.is_alive(), "a send to a full notify socket blocked"
    assert outcome == [False]
    assert listener.messages()[:1] == ["WATCHDOG=1"]
