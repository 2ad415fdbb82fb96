"""The asyncio driver over a REAL pty: the test holds the master and plays the register's link."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pointd.link.arq import LinkTimers
from pointd.link.driver import LinkDriver, LinkLost, LinkUp, PayloadReceived
from pointd.link.errors import LinkConfigError, LinkNotSent, LinkOutcomeUnknown
from pointd.link.frame import AckFrame, DataFrame, NakFrame
from pointd.link.trace import ByteTap
from pointd.sim.register.ports import with_bad_crc
from tests.support.pty_peer import PtyPeer

# Short timers so the retransmission paths finish in well under a second; the timer logic
# itself is pinned with explicit clocks in test_arq.py.
FAST = LinkTimers(ack_timeout=0.1, max_send_attempts=3, keepalive_interval=30.0)
WAIT = 5.0


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[PtyPeer]:
    pty_peer = PtyPeer(tmp_path / "register")
    yield pty_peer
    with contextlib.suppress(OSError, FileNotFoundError):
        pty_peer.unplug()


@pytest.fixture
async def driver(peer: PtyPeer) -> AsyncIterator[LinkDriver]:
    link = LinkDriver(
        str(peer.link_path), timers=FAST, reconnect_min_delay=0.01, reconnect_max_delay=0.05
    )
    task = asyncio.create_task(link.run())
    assert await asyncio.wait_for(link.next_event(), WAIT) == LinkUp(1)
    yield link
    link.close()
    await asyncio.wait_for(task, WAIT)


async def test_received_frame_is_acked_and_delivered(peer: PtyPeer, driver: LinkDriver) -> None:
    peer.write(DataFrame(1, b"Sid=A1\x1famount=1500").to_bytes())
    assert await peer.next_frame() == AckFrame(1)
    event = await asyncio.wait_for(driver.next_event(), WAIT)
    assert event == PayloadReceived(b"Sid=A1\x1famount=1500")


async def test_send_completes_on_ack(peer: PtyPeer, driver: LinkDriver) -> None:
    sending = asyncio.create_task(driver.send(b"dsev=info"))
    frame = await peer.next_frame()
    assert frame == DataFrame(1, b"dsev=info")
    assert not sending.done()
    peer.write(AckFrame(1).to_bytes())
    await asyncio.wait_for(sending, WAIT)


async def test_bad_crc_is_answered_with_nak_then_retransmission_accepted(
    peer: PtyPeer, driver: LinkDriver
) -> None:
    frame = DataFrame(3, b"Qid=A1")
    peer.write(b"\x00noise" + with_bad_crc(frame))
    assert await peer.next_frame() == NakFrame(3)
    peer.write(frame.to_bytes())
    assert await peer.next_frame() == AckFrame(3)
    assert await asyncio.wait_for(driver.next_event(), WAIT) == PayloadReceived(b"Qid=A1")


async def test_retransmitted_frame_is_acked_again_but_delivered_once(
    peer: PtyPeer, driver: LinkDriver
) -> None:
    frame = DataFrame(5, b"Sid=A1\x1famount=1500").to_bytes()
    peer.write(frame)
    assert await peer.next_frame() == AckFrame(5)
    peer.write(frame)  # as if our ACK had been lost
    assert await peer.next_frame() == AckFrame(5)
    peer.write(DataFrame(6, b"Qid=A1").to_bytes())
    assert await peer.next_frame() == AckFrame(6)
    events = [await asyncio.wait_for(driver.next_event(), WAIT) for _ in range(2)]
    assert events == [PayloadReceived(b"Sid=A1\x1famount=1500"), PayloadReceived(b"Qid=A1")]


async def test_lost_ack_causes_retransmission_with_the_same_seq(
    peer: PtyPeer, driver: LinkDriver
) -> None:
    sending = asyncio.create_task(driver.send(b"rid=A1\x1foutcome=approved"))
    first = await peer.next_frame()
    second = await peer.next_frame()  # no ACK from us: the driver sends it again
    assert first == second
    assert isinstance(second, DataFrame)
    peer.write(AckFrame(second.seq).to_bytes())
    await asyncio.wait_for(sending, WAIT)


async def test_silent_peer_means_outcome_unknown_and_the_link_reopens(
    peer: PtyPeer, driver: LinkDriver
) -> None:
    sending = asyncio.create_task(driver.send(b"dsev=info"))
    queued = asyncio.create_task(driver.send(b"dsev=warn"))
    with pytest.raises(LinkOutcomeUnknown):
        await asyncio.wait_for(sending, WAIT)
    with pytest.raises(LinkNotSent):
        await asyncio.wait_for(queued, WAIT)
    lost = await asyncio.wait_for(driver.next_event(), WAIT)
    assert isinstance(lost, LinkLost)
    assert "no ACK" in lost.reason
    assert await asyncio.wait_for(driver.next_event(), WAIT) == LinkUp(2)


async def test_send_is_shielded_from_the_callers_cancellation(
    peer: PtyPeer, driver: LinkDriver
) -> None:
    sending = asyncio.create_task(driver.send(b"whid=A1\x1freason=held"))
    first = await peer.next_frame()
    sending.cancel()
    # The frame is still ours to finish: it is retransmitted, not abandoned.
    assert await peer.next_frame() == first


async def test_unplug_and_replug_reconnects(peer: PtyPeer, driver: LinkDriver) -> None:
    peer.unplug()
    lost = await asyncio.wait_for(driver.next_event(), WAIT)
    assert isinstance(lost, LinkLost)
    with pytest.raises(LinkNotSent):
        await driver.send(b"dsev=info")
    peer.plug()
    assert await asyncio.wait_for(driver.next_event(), WAIT) == LinkUp(2)
    peer.write(DataFrame(1, b"Qid=A1").to_bytes())
    assert await peer.next_frame() == AckFrame(1)


async def test_port_is_opened_exclusively(peer: PtyPeer, driver: LinkDriver) -> None:
    other = LinkDriver(str(peer.link_path), reconnect_min_delay=0.01, reconnect_max_delay=0.01)
    task = asyncio.create_task(other.run())
    await asyncio.sleep(0.05)  # a few refused open attempts; nothing to wait for otherwise
    assert not other.is_up
    other.close()
    await asyncio.wait_for(task, WAIT)


async def test_unknown_url_scheme_is_a_config_error() -> None:
    link = LinkDriver("nosuchscheme://x")
    with pytest.raises(LinkConfigError):
        await asyncio.wait_for(link.run(), WAIT)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(LinkConfigError):
        LinkDriver("/dev/null", baudrate=0)
    with pytest.raises(LinkConfigError):
        LinkDriver("/dev/null", reconnect_min_delay=2.0, reconnect_max_delay=1.0)


async def test_tap_records_both_directions_and_events(peer: PtyPeer, tmp_path: Path) -> None:
    clock = asyncio.get_running_loop().time
    tap = ByteTap(clock)
    link = LinkDriver(str(peer.link_path), timers=FAST, tap=tap)
    task = asyncio.create_task(link.run())
    await asyncio.wait_for(link.next_event(), WAIT)
    peer.write(DataFrame(1, b"Qid=A1").to_bytes())
    await peer.next_frame()
    link.close()
    await asyncio.wait_for(task, WAIT)
    records = tap.records()
    assert [r.dir for r in records] == ["event", "rx", "tx", "event"]
    assert records[1].data == DataFrame(1, b"Qid=A1").to_bytes()
    assert records[2].data == AckFrame(1).to_bytes()
    assert records[0].note.startswith("opened")
    assert records[-1].note.startswith("lost")


async def test_status_tells_up_or_down_since_when_why_and_the_retransmissions(
    peer: PtyPeer, driver: LinkDriver
) -> None:
    assert driver.status.up
    assert driver.status.problem is None
    assert driver.status.retransmits == 0
    sending = asyncio.create_task(driver.send(b"rid=A1\x1foutcome=approved"))
    await peer.next_frame()
    second = await peer.next_frame()  # no ACK: sent again
    peer.write(AckFrame(second.seq).to_bytes())
    await asyncio.wait_for(sending, WAIT)
    assert driver.status.retransmits == 1

    up_since = driver.status.since
    peer.unplug()
    assert isinstance(await asyncio.wait_for(driver.next_event(), WAIT), LinkLost)
    down = driver.status
    assert not down.up
    assert down.since >= up_since
    assert down.problem is not None
    assert down.retransmits == 1  # kept across connections


async def test_a_port_that_cannot_be_opened_is_reported_as_the_reason(tmp_path: Path) -> None:
    seen: list[str | None] = []
    missing = tmp_path / "no-such-register"
    link = LinkDriver(str(missing), reconnect_min_delay=0.01, reconnect_max_delay=0.05,
                      on_change=lambda status: seen.append(status.problem))
    task = asyncio.create_task(link.run())
    try:
        async with asyncio.timeout(WAIT):
            while not seen:  # noqa: ASYNC110 - on_change is the event; it has no awaitable
                await asyncio.sleep(0.01)
    finally:
        link.close()
        await asyncio.wait_for(task, WAIT)
    assert seen[0] is not None
    assert seen[0].startswith(f"cannot open {missing}: ")
    assert not link.status.up
