"""Arbitrary register payloads through the daemon's RegisterSession over a real pty.

Rules: a payload that does not decode is answered with ERROR carrying the decoder's code
and reaches nothing behind the session; whatever arrives, the session keeps running and
answers the next request. tests/register covers chosen bad payloads; this throws any.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from pointd.link.arq import LinkTimers
from pointd.link.driver import LinkDriver
from pointd.link.frame import MAX_MESSAGE_TYPE, MIN_MESSAGE_TYPE
from pointd.register import messages as m
from pointd.register.session import RegisterSession
from pointd.sim.register import DaemonRejected, RegisterEmulator
from tests.replay.engine_stub import StubEngine
from tests.security.loop_thread import LoopThread

# A short ACK timer so the HELLO written before the daemon opened the pty is soon resent.
FAST = LinkTimers(ack_timeout=0.1, max_send_attempts=3, keepalive_interval=30.0)
# Waiting for a reply over the pty; generous, never a timing check.
REPLY_WAIT = 5.0
LOOK_INTERVAL = 0.005


class Lane:
    """Emulator, session and stub engine on a loop thread, the session reading a real pty."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="rfuzz-"))
        self.loop = LoopThread()
        self.loop.call(self._open())

    async def _open(self) -> None:
        self.emulator = await RegisterEmulator.open_pty(self.directory / "register", timers=FAST)
        self.engine = StubEngine()
        self.session = RegisterSession(lane=3, language="es", handler=self.engine)
        self.engine.attach(self.session)
        link = LinkDriver(self.emulator.device_path, timers=FAST,
                          reconnect_min_delay=0.01, reconnect_max_delay=0.05)
        self.task = asyncio.get_running_loop().create_task(self.session.run(link))
        await asyncio.wait_for(self.emulator.hello(), REPLY_WAIT)

    async def throw(self, payload: bytes) -> tuple[list[m.Error], int]:
        """Send one payload; return the ERRORs it drew and how many requests reached the engine."""
        errors, requests = len(self.emulator.errors), len(self.engine.requests)
        expected = _decodes(payload)
        await asyncio.wait_for(self.emulator.send_payload(payload), REPLY_WAIT)
        if expected is not None:
            await self._until(lambda: len(self.emulator.errors) > errors)
        return self.emulator.errors[errors:], len(self.engine.requests) - requests

    async def alive(self) -> bool:
        """The session answers a STATUS (a reply, or ERROR unknown_sale) and still runs."""
        refused: m.ErrorCode | None = None
        try:
            await asyncio.wait_for(self.emulator.status("probe-1"), REPLY_WAIT)
        except DaemonRejected as exc:
            refused = exc.error.code
        if refused is m.ErrorCode.HELLO_REQUIRED:
            await asyncio.wait_for(self.emulator.hello(), REPLY_WAIT)
            return await self.alive()
        assert refused in {None, m.ErrorCode.UNKNOWN_SALE}, refused
        return not self.task.done()

    async def _until(self, condition: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPLY_WAIT
        while not condition():
            assert loop.time() < deadline, "no ERROR came back"
            await asyncio.sleep(LOOK_INTERVAL)

    async def _close(self) -> None:
        self.session.stop()
        await asyncio.wait_for(self.task, REPLY_WAIT)
        await self.engine.close()
        await self.emulator.close()

    def close(self) -> None:
        self.loop.call(self._close())
        self.loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _decodes(payload: bytes) -> m.ErrorCode | None:
    """The error code the daemon must answer with, or None when the payload decodes."""
    try:
        m.decode_message(payload)
    except m.MessageError as exc:
        return exc.code
    return None


@pytest.fixture(scope="module")
def lane() -> Iterator[Lane]:
    with structlog.testing.capture_logs():
        opened = Lane()
        yield opened
        opened.close()


field_keys = st.sampled_from(["id", "amount", "terminal", "versions", "version", "lang",
                              "reason", "sale", "lines", "x"])
field_values = st.text(alphabet=st.characters(max_codepoint=0x17F, exclude_characters="\x1f"),
                       max_size=20)
fields = st.lists(st.tuples(field_keys, field_values), max_size=4).map(
    lambda pairs: b"\x1f".join(f"{k}={v}".encode() for k, v in pairs)
)
# Requests the register may send, minus HELLO (tested on its own: it resets the connection).
request_types = st.sampled_from([t for t in m.MessageType if t is not m.MessageType.HELLO])
# The link only frames payloads whose type byte is printable ASCII (tests/link covers frames
# that break that rule); anything else a register sends must be answered here.
type_bytes = st.integers(MIN_MESSAGE_TYPE, MAX_MESSAGE_TYPE).filter(lambda b: b != ord("H"))
payloads = st.one_of(
    st.builds(lambda t, body: bytes([t]) + body, type_bytes, st.binary(max_size=120)),
    st.builds(lambda t, body: bytes([t]) + body, request_types, fields),
    st.builds(lambda t, body: bytes([t]) + body, type_bytes, fields),
)


@settings(max_examples=60, deadline=None)
@given(payload=payloads)
def test_any_payload_is_answered_and_the_session_keeps_serving(lane: Lane, payload: bytes) -> None:
    expected = _decodes(payload)
    errors, reached = lane.loop.call(lane.throw(payload))
    if expected is not None:
        assert [e.code for e in errors] == [expected], (payload, errors)
        assert all(e.text for e in errors)
        assert reached == 0, "an undecodable payload reached the engine"
    assert lane.loop.call(lane.alive()), "the session stopped"
