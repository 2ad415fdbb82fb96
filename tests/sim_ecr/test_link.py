"""The second register's link machine against register protocol §3, and its receiver under
hypothesis: arbitrary chunking and noise between frames lose no frame and invent none."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pointd.sim.ecr import link, wire
from pointd.sim.ecr.link import Confirmed, Deliver, Down, Link, Write

SALE = ord("S")


def writes(actions: list[link.Action]) -> list[Write]:
    return [a for a in actions if isinstance(a, Write)]


def frames_of(actions: list[link.Action]) -> list[wire.Received]:
    return wire.Receiver().feed(b"".join(w.data for w in writes(actions)))


def test_a_send_is_confirmed_by_the_ack_of_its_seq() -> None:
    side = Link(0.0)
    tag, actions = side.send(SALE, b"id=A", 0.0)
    (sent,) = writes(actions)
    assert sent.seq == 1
    assert side.received([wire.Frame(2, wire.ACK, b"")], 0.1) == []  # another SEQ: ignored
    assert side.received([wire.Frame(1, wire.ACK, b"")], 0.1) == [Confirmed(tag)]


def test_one_frame_in_flight_the_next_waits_for_its_ack() -> None:
    side = Link(0.0)
    side.send(SALE, b"id=A", 0.0)
    _tag, actions = side.send(SALE, b"id=B", 0.0)
    assert writes(actions) == []
    after = side.received([wire.Frame(1, wire.ACK, b"")], 0.1)
    assert [w.seq for w in writes(after)] == [2]


def test_a_nak_retransmits_at_once_with_the_same_seq() -> None:
    side = Link(0.0)
    side.send(SALE, b"id=A", 0.0)
    again = writes(side.received([wire.Frame(1, wire.NAK, b"")], 0.5))
    assert [w.seq for w in again] == [1]


def test_three_transmissions_without_ack_put_the_link_down_and_restart_numbering() -> None:
    side = Link(0.0)
    tag, _ = side.send(SALE, b"id=A", 0.0)
    queued, _ = side.send(SALE, b"id=B", 0.0)
    assert [w.seq for w in writes(side.tick(link.ACK_TIMEOUT))] == [1]
    assert [w.seq for w in writes(side.tick(2 * link.ACK_TIMEOUT))] == [1]
    (down,) = side.tick(3 * link.ACK_TIMEOUT)
    assert isinstance(down, Down)
    assert down.unknown == tag
    assert down.not_sent == (queued,)
    _tag, fresh = side.send(SALE, b"id=C", 10.0)
    assert [w.seq for w in writes(fresh)] == [1]


def test_every_sequenced_frame_is_acked_but_a_repeat_is_not_delivered() -> None:
    side = Link(0.0)
    first = side.received([wire.Frame(7, ord("r"), b"id=A")], 0.0)
    repeat = side.received([wire.Frame(7, ord("r"), b"id=A")], 2.0)
    assert [f.kind for f in frames_of(first)] == [wire.ACK]
    assert Deliver(ord("r"), b"id=A") in first
    assert [f.kind for f in frames_of(repeat)] == [wire.ACK]
    assert not [a for a in repeat if isinstance(a, Deliver)]


def test_the_first_frame_after_a_link_down_is_new_whatever_its_seq() -> None:
    side = Link(0.0)
    side.received([wire.Frame(1, ord("r"), b"id=A")], 0.0)
    side.send(SALE, b"id=B", 0.0)
    for step in (1, 2, 3):
        side.tick(step * link.ACK_TIMEOUT)
    again = side.received([wire.Frame(1, ord("h"), b"version=1.0")], 7.0)
    assert Deliver(ord("h"), b"version=1.0") in again


def test_a_damaged_frame_is_naked_with_its_seq_or_00() -> None:
    side = Link(0.0)
    naks = frames_of(side.received([wire.Damaged(9), wire.Damaged(None)], 0.0))
    assert naks == [wire.Frame(9, wire.NAK, b""), wire.Frame(0, wire.NAK, b"")]


def test_keepalive_after_five_quiet_seconds_is_a_sequenced_enq() -> None:
    side = Link(0.0)
    assert side.tick(4.9) == []
    assert side.deadline() == link.KEEPALIVE_INTERVAL
    (enq,) = writes(side.tick(link.KEEPALIVE_INTERVAL))
    assert enq.kind == wire.ENQ
    assert side.received([wire.Frame(enq.seq, wire.ACK, b"")], 5.1) == []


payloads = st.lists(st.tuples(st.integers(1, 255), st.integers(0x20, 0x7E),
                              st.binary(max_size=40)), min_size=1, max_size=8)
noise = st.binary(max_size=12).map(lambda b: b.replace(b"\x02", b""))


@given(payloads, st.lists(noise, min_size=9, max_size=9), st.data())
def test_any_chunking_and_noise_between_frames_keeps_every_frame(
    sent: list[tuple[int, int, bytes]], gaps: list[bytes], data: st.DataObject,
) -> None:
    stream = b"".join(gap + wire.build(seq, kind, body)
                      for gap, (seq, kind, body) in zip(gaps, sent, strict=False))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    receiver = wire.Receiver()
    found: list[wire.Received] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        found += receiver.feed(stream[start:end])
    assert found == [wire.Frame(seq, kind, body) for seq, kind, body in sent]
