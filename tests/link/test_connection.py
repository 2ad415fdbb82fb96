"""ArqConnection edge paths over a real socketpair: short writes and a failing upper layer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from pointd.link.arq import LinkTimers
from pointd.link.driver import ArqConnection
from pointd.link.errors import LinkNotSent
from pointd.link.frame import AckFrame, DataFrame, FrameDecoder
from pointd.link.ports import SocketPort

FAST = LinkTimers(ack_timeout=0.2, max_send_attempts=3, keepalive_interval=30.0)
WAIT = 5.0


class TrickleSocketPort(SocketPort):
    """A port whose kernel buffer takes at most 3 bytes per write, as a slow UART would."""

    def write(self, data: bytes) -> int:
        return super().write(data[:3])


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


async def _read_frame(sock: socket.socket) -> object:
    loop = asyncio.get_running_loop()
    decoder = FrameDecoder()
    while True:
        for item in decoder.feed(await loop.sock_recv(sock, 1)):
            return item


async def test_short_writes_are_completed_in_order(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.setblocking(False)
    connection = ArqConnection(
        TrickleSocketPort(ours), on_payload=lambda p: None, on_lost=lambda r: None, timers=FAST
    )
    payload = b"dsev=info\x1fl1=" + b"X" * 200
    sending = asyncio.create_task(connection.send(payload))
    frame = await asyncio.wait_for(_read_frame(theirs), WAIT)
    assert frame == DataFrame(1, payload)
    theirs.send(AckFrame(1).to_bytes())
    await asyncio.wait_for(sending, WAIT)
    connection.close()


async def test_a_failing_upper_layer_does_not_kill_the_link(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.setblocking(False)
    delivered: list[bytes] = []

    def on_payload(payload: bytes) -> None:
        delivered.append(payload)
        if len(delivered) == 1:
            raise RuntimeError("bug in the layer above")

    connection = ArqConnection(
        SocketPort(ours), on_payload=on_payload, on_lost=lambda r: None, timers=FAST
    )
    theirs.send(DataFrame(1, b"Qid=A").to_bytes())
    assert await asyncio.wait_for(_read_frame(theirs), WAIT) == AckFrame(1)
    theirs.send(DataFrame(2, b"Qid=B").to_bytes())
    assert await asyncio.wait_for(_read_frame(theirs), WAIT) == AckFrame(2)
    assert delivered == [b"Qid=A", b"Qid=B"]
    assert connection.is_open
    connection.close()


async def test_peer_closing_fails_pending_sends_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reasons: list[str] = []
    connection = ArqConnection(
        SocketPort(ours), on_payload=lambda p: None, on_lost=reasons.append, timers=FAST
    )
    theirs.close()
    for _ in range(200):
        if reasons:
            break
        await asyncio.sleep(0.01)  # waiting for the kernel to report the closed peer
    assert len(reasons) == 1
    assert "closed" in reasons[0]
    with pytest.raises(LinkNotSent):
        await connection.send(b"Qid=A")
    connection.close()
    assert len(reasons) == 1
