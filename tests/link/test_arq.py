"""The ARQ machine, driven by plain calls with an explicit ``now``: no event loop, no sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointd.link import arq
from pointd.link.arq import (
    AckReceived,
    CancelTimer,
    Confirmed,
    DamagedFrameReceived,
    Deliver,
    FrameReceived,
    LinkDown,
    LinkTimers,
    NakReceived,
    SendRequested,
    StartTimer,
    TimerExpired,
    Write,
)
from pointd.link.frame import AckFrame, DataFrame, EnqFrame, NakFrame, parse_frame

TIMERS = LinkTimers(ack_timeout=2.0, max_send_attempts=3, keepalive_interval=5.0)


def fresh(now: float = 0.0) -> arq.ArqState:
    state, actions = arq.start(now, TIMERS)
    assert actions == [StartTimer(now + 5.0)]
    return state


def writes(actions: list[arq.Action]) -> list[object]:
    return [parse_frame(a.data) for a in actions if isinstance(a, Write)]


def test_send_writes_one_frame_and_arms_the_ack_timer() -> None:
    state, actions = arq.on_event(fresh(), SendRequested(1, b"Sid=A"), 10.0)
    assert actions == [Write(DataFrame(1, b"Sid=A").to_bytes()), StartTimer(12.0)]
    assert state.in_flight is not None


def test_ack_confirms_and_rearms_the_keepalive() -> None:
    state, _ = arq.on_event(fresh(), SendRequested(1, b"Sid=A"), 10.0)
    state, actions = arq.on_event(state, AckReceived(1), 10.1)
    assert actions == [Confirmed(1), StartTimer(15.0)]
    assert state.in_flight is None


def test_half_duplex_second_payload_waits_for_the_first_ack() -> None:
    state, _ = arq.on_event(fresh(), SendRequested(1, b"Sid=A"), 0.0)
    state, actions = arq.on_event(state, SendRequested(2, b"Qid=A"), 0.1)
    assert writes(actions) == []
    state, actions = arq.on_event(state, AckReceived(1), 0.2)
    assert actions[0] == Confirmed(1)
    assert writes(actions) == [DataFrame(2, b"Qid=A")]


def test_lost_ack_retransmits_same_seq_then_declares_link_down() -> None:
    state, _ = arq.on_event(fresh(), SendRequested(7, b"Sid=A"), 0.0)
    state, queued = arq.on_event(state, SendRequested(8, b"Qid=A"), 0.5)
    assert writes(queued) == []
    state, second = arq.on_event(state, TimerExpired(), 2.0)
    assert writes(second) == [DataFrame(1, b"Sid=A")]
    assert second[-1] == StartTimer(4.0)
    state, third = arq.on_event(state, TimerExpired(), 4.0)
    assert writes(third) == [DataFrame(1, b"Sid=A")]
    state, fourth = arq.on_event(state, TimerExpired(), 6.0)
    assert fourth == [CancelTimer(), LinkDown("no ACK after 3 transmissions", 7, (8,))]
    # Down is final for this state: a later send fails at once, as never sent.
    _, after = arq.on_event(state, SendRequested(9, b"Qid=B"), 7.0)
    assert after == [LinkDown("no ACK after 3 transmissions", None, (9,))]


def test_early_timer_does_not_retransmit() -> None:
    state, _ = arq.on_event(fresh(), SendRequested(1, b"Sid=A"), 0.0)
    state, actions = arq.on_event(state, TimerExpired(), 1.9)
    assert actions == []


def test_nak_retransmits_at_once_and_counts_as_an_attempt() -> None:
    state, _ = arq.on_event(fresh(), SendRequested(1, b"Sid=A"), 0.0)
    state, actions = arq.on_event(state, NakReceived(1), 0.3)
    assert writes(actions) == [DataFrame(1, b"Sid=A")]
    assert actions[-1] == StartTimer(2.3)
    state, _ = arq.on_event(state, NakReceived(0), 0.4)
    state, actions = arq.on_event(state, NakReceived(1), 0.5)
    assert isinstance(actions[-1], LinkDown)
    assert actions[-1].unacknowledged == 1


def test_nak_with_nothing_in_flight_is_ignored() -> None:
    state = fresh()
    assert arq.on_event(state, NakReceived(3), 1.0) == (state, [])


def test_stale_ack_is_ignored() -> None:
    state, _ = arq.on_event(fresh(), SendRequested(1, b"Sid=A"), 0.0)
    state2, actions = arq.on_event(state, AckReceived(99), 0.1)
    assert actions == []
    assert state2 == state


def test_received_frame_is_acked_and_delivered_once() -> None:
    state = fresh()
    frame = DataFrame(4, b"Sid=A")
    state, actions = arq.on_event(state, FrameReceived(frame), 1.0)
    assert actions[:2] == [Write(AckFrame(4).to_bytes()), Deliver(b"Sid=A")]
    # The same frame again: our ACK was lost and the peer retransmitted. ACK, don't act.
    state, actions = arq.on_event(state, FrameReceived(frame), 3.0)
    assert [a for a in actions if not isinstance(a, StartTimer)] == [Write(AckFrame(4).to_bytes())]
    state, actions = arq.on_event(state, FrameReceived(DataFrame(5, b"Sid=A")), 3.5)
    assert Deliver(b"Sid=A") in actions


def test_first_frame_after_start_is_accepted_whatever_its_seq() -> None:
    _, actions = arq.on_event(fresh(), FrameReceived(DataFrame(1, b"Hx=1")), 0.0)
    assert Deliver(b"Hx=1") in actions


def test_keepalive_is_acked_never_delivered() -> None:
    _, actions = arq.on_event(fresh(), FrameReceived(EnqFrame(3)), 0.0)
    assert writes(actions) == [AckFrame(3)]
    assert not any(isinstance(a, Deliver) for a in actions)


def test_damaged_frame_gets_a_nak() -> None:
    _, actions = arq.on_event(fresh(), DamagedFrameReceived(6), 0.0)
    assert writes(actions) == [NakFrame(6)]
    _, actions = arq.on_event(fresh(), DamagedFrameReceived(None), 0.0)
    assert writes(actions) == [NakFrame(0)]


def test_idle_link_sends_enq_and_an_unanswered_enq_takes_it_down() -> None:
    state = fresh(0.0)
    state, actions = arq.on_event(state, TimerExpired(), 4.9)
    assert actions == []
    state, actions = arq.on_event(state, TimerExpired(), 5.0)
    assert writes(actions) == [EnqFrame(1)]
    state, actions = arq.on_event(state, AckReceived(1), 5.1)
    assert actions == [StartTimer(10.0)]  # nothing to confirm: the ENQ was ours
    state, _ = arq.on_event(state, TimerExpired(), 10.0)
    state, _ = arq.on_event(state, TimerExpired(), 12.0)
    state, _ = arq.on_event(state, TimerExpired(), 14.0)
    _, actions = arq.on_event(state, TimerExpired(), 16.0)
    assert actions == [CancelTimer(), LinkDown("no ACK after 3 transmissions", None, ())]


def test_sending_or_acking_postpones_the_keepalive() -> None:
    state = fresh(0.0)
    state, actions = arq.on_event(state, FrameReceived(DataFrame(1, b"Qid=A")), 3.0)
    assert actions[-1] == StartTimer(8.0)


def test_sequence_numbers_wrap_from_255_to_1() -> None:
    state = fresh()
    for tag in range(1, 257):
        state, actions = arq.on_event(state, SendRequested(tag, b"Sid=A"), 0.0)
        (frame,) = writes(actions)
        assert isinstance(frame, DataFrame)
        assert frame.seq == (tag - 1) % 255 + 1
        state, _ = arq.on_event(state, AckReceived(frame.seq), 0.0)


@pytest.mark.parametrize(
    ("ack_timeout", "max_send_attempts", "keepalive_interval"),
    [(0.0, 3, 5.0), (2.0, 3, -1.0), (2.0, 0, 5.0)],
)
def test_timers_reject_nonsense(
    ack_timeout: float, max_send_attempts: int, keepalive_interval: float
) -> None:
    with pytest.raises(ValueError, match="must be"):
        LinkTimers(ack_timeout, max_send_attempts, keepalive_interval)


# --- two machines talking through a lossy wire, as a property -------------------------------


@settings(max_examples=150, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=8).map(lambda b: b"S" + b), min_size=1, max_size=6),
    losses=st.lists(st.booleans(), max_size=60),
)
def test_every_payload_delivered_exactly_once_in_order_or_link_down(
    payloads: list[bytes], losses: list[bool]
) -> None:
    """Two ARQ machines over a wire that drops frames as ``losses`` says."""
    loss = iter(losses)
    now = 0.0
    a, b = fresh(), fresh()
    wire_ab: list[bytes] = []
    wire_ba: list[bytes] = []
    delivered: list[bytes] = []
    confirmed: list[int] = []
    down = False

    def run(
        state: arq.ArqState, event: arq.Event, outbox: list[bytes], deliveries: list[bytes]
    ) -> arq.ArqState:
        nonlocal down
        state, actions = arq.on_event(state, event, now)
        for action in actions:
            if isinstance(action, Write) and not next(loss, False):
                outbox.append(action.data)
            elif isinstance(action, Deliver):
                deliveries.append(action.payload)
            elif isinstance(action, Confirmed):
                confirmed.append(action.tag)
            elif isinstance(action, LinkDown):
                down = True
        return state

    for tag, payload in enumerate(payloads):
        a = run(a, SendRequested(tag, payload), wire_ab, [])
    for _step in range(200):
        if down or len(confirmed) == len(payloads):
            break
        if wire_ab:
            frame = parse_frame(wire_ab.pop(0))
            b = run(b, arq.event_for_frame(frame), wire_ba, delivered)
        elif wire_ba:
            frame = parse_frame(wire_ba.pop(0))
            a = run(a, arq.event_for_frame(frame), wire_ab, [])
        else:
            now += 2.0
            a = run(a, TimerExpired(), wire_ab, [])
    assert delivered == payloads[: len(delivered)]  # in order, never twice
    if not down:
        assert confirmed == list(range(len(payloads)))
        assert delivered == payloads


def _exchange(
    sender: arq.ArqState, receiver: arq.ArqState, pending: list[arq.Action], now: float
) -> tuple[arq.ArqState, arq.ArqState, list[bytes]]:
    """Carry frames both ways until neither side writes; what the receiver delivered."""
    delivered: list[bytes] = []
    to_receiver = [a.data for a in pending if isinstance(a, Write)]
    while to_receiver:
        to_sender: list[bytes] = []
        for data in to_receiver:
            receiver, actions = arq.on_event(receiver, arq.event_for_frame(parse_frame(data)), now)
            delivered += [a.payload for a in actions if isinstance(a, Deliver)]
            to_sender += [a.data for a in actions if isinstance(a, Write)]
        to_receiver = []
        for data in to_sender:
            sender, actions = arq.on_event(sender, arq.event_for_frame(parse_frame(data)), now)
            to_receiver += [a.data for a in actions if isinstance(a, Write)]
    return sender, receiver, delivered


def _peer_after_a_run_of(frames: int) -> arq.ArqState:
    """A register that accepted ``frames`` messages from the daemon's previous run."""
    daemon, register = fresh(), fresh()
    for n in range(frames):
        daemon, actions = arq.on_event(daemon, SendRequested(n, b"D"), 0.0)
        daemon, register, _ = _exchange(daemon, register, actions, 0.0)
    return register


def test_a_restart_the_peer_did_not_notice_drops_the_first_message_without_the_enq() -> None:
    # The daemon's previous run sent one message (SEQ 01); it restarts and numbers from 01.
    register = _peer_after_a_run_of(1)
    daemon, opening = arq.start(1.0, TIMERS)
    daemon, actions = arq.on_event(daemon, SendRequested(1, b"Rid=S1"), 1.0)
    _, _, delivered = _exchange(daemon, register, opening + actions, 1.0)
    assert delivered == []  # taken for a retransmission: the failure enq_first prevents


@settings(max_examples=60, deadline=None)
@given(earlier_frames=st.integers(min_value=0, max_value=600))
def test_enq_first_makes_the_first_message_after_a_restart_new_for_the_peer(
    earlier_frames: int,
) -> None:
    register = _peer_after_a_run_of(earlier_frames)
    daemon, opening = arq.start(1.0, TIMERS, enq_first=True)
    assert writes(opening) == [EnqFrame(1)]
    daemon, actions = arq.on_event(daemon, SendRequested(1, b"Rid=S1"), 1.0)
    assert actions == []  # half duplex: it waits for the ENQ's ACK
    daemon, register, delivered = _exchange(daemon, register, opening, 1.0)
    assert delivered == [b"Rid=S1"]
