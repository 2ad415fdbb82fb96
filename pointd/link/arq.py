"""The link's reliability rules — ACK/NAK, retransmission, duplicate suppression, keep-alive.

Theory of operation
-------------------
``on_event(state, event, now) -> (state, actions)`` is the whole machine: it reads no clock
and does no I/O; ``now`` is the caller's monotonic time in seconds and every timer comes
back as ``StartTimer(deadline)`` / ``TimerExpired``. There is one timer: its deadline is
the earliest of the ACK deadline of the frame in flight and the next keep-alive.

Sending is half-duplex per direction: at most one sequenced frame (data or ENQ) is in
flight; further payloads wait in a queue. A frame in flight is retransmitted unchanged
(same sequence number) when its ACK does not come within ``ack_timeout`` or a NAK arrives,
at most ``max_send_attempts`` transmissions in all; then the link is declared down with
``LinkDown``, which names the payload that may or may not have arrived (outcome unknown)
and the ones never sent, and the state stays down until the caller starts a fresh one.

Receiving: every valid sequenced frame is ACKed at once, even a repeat; a data frame whose
sequence number equals the last one accepted from the peer is a retransmission and is
not delivered again — unless its payload starts with one of ``fresh_start_types``: a peer
that declared the link down starts its numbering again at 01 without our knowing, and its
first frame (the register protocol's HELLO) may repeat the last number we accepted. Such a
payload is delivered every time it arrives; the layer above makes it idempotent. A
damaged frame is answered with a NAK.

After ``keepalive_interval`` seconds without sending anything, an ENQ goes out; it is
acknowledged like data, so a silent peer is noticed within
``keepalive_interval + max_send_attempts * ack_timeout`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pointd.link.frame import MAX_SEQ, AckFrame, DataFrame, EnqFrame, Frame, NakFrame

# A frame of at most ~1 KB takes about 1.1 s at 9600 baud; 2 s leaves room for the
# peer's turnaround and matches the 2-3 s that card-terminal links use.
ACK_TIMEOUT = 2.0
# Transmissions of one frame before the link is declared down (operations.md §3 rule 3).
MAX_SEND_ATTEMPTS = 3
# Idle time after which an ENQ proves the peer is still there.
KEEPALIVE_INTERVAL = 5.0


@dataclass(frozen=True)
class LinkTimers:
    """The link's timing; defaults are the protocol's, tests and sites may shorten them."""

    ack_timeout: float = ACK_TIMEOUT
    max_send_attempts: int = MAX_SEND_ATTEMPTS
    keepalive_interval: float = KEEPALIVE_INTERVAL

    def __post_init__(self) -> None:
        if self.ack_timeout <= 0 or self.keepalive_interval <= 0:
            raise ValueError("link timers must be positive")
        if self.max_send_attempts < 1:
            raise ValueError("max_send_attempts must be at least 1")


@dataclass(frozen=True)
class InFlight:
    """The sequenced frame awaiting its ACK; ``tag`` is None for a keep-alive."""

    frame: DataFrame | EnqFrame
    tag: int | None
    attempts: int
    deadline: float


@dataclass(frozen=True)
class ArqState:
    """Everything the machine remembers between events."""

    timers: LinkTimers
    last_tx_at: float
    next_seq: int = 1
    in_flight: InFlight | None = None
    queue: tuple[tuple[int, bytes], ...] = ()
    last_rx_seq: int | None = None
    armed: float | None = None
    down_reason: str | None = None
    # First payload bytes of the messages that open a peer's fresh start (see above).
    fresh_start_types: frozenset[int] = frozenset()


def initial_state(now: float, timers: LinkTimers | None = None,
                  fresh_start_types: frozenset[int] = frozenset()) -> ArqState:
    """A fresh link, as after opening the port, with no timer armed yet."""
    return ArqState(timers=timers or LinkTimers(), last_tx_at=now,
                    fresh_start_types=fresh_start_types)


def start(now: float, timers: LinkTimers | None = None,
          fresh_start_types: frozenset[int] = frozenset(),
          *, enq_first: bool = False) -> tuple[ArqState, list[Action]]:
    """A fresh link with its timer armed: what a driver runs on opening.

    ``enq_first`` sends an ENQ before anything else. Our numbering starts again at 01, and
    a peer that did not notice (we restarted, or only we declared the link down) may have
    accepted 01 last: it would drop our first message as a repeat. The ENQ carries nothing,
    so it may be dropped; whatever it is, the number after it differs from the peer's last.
    """
    state = initial_state(now, timers, fresh_start_types)
    actions: list[Action] = []
    if enq_first:
        state, actions = _transmit(state, EnqFrame(state.next_seq), None, now)
    deadline = _deadline(state)
    return replace(state, armed=deadline), [*actions, StartTimer(deadline)]


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SendRequested:
    """Send ``payload``; ``tag`` is the caller's handle, echoed in Confirmed/LinkDown."""

    tag: int
    payload: bytes


@dataclass(frozen=True)
class FrameReceived:
    """A valid data or ENQ frame arrived."""

    frame: DataFrame | EnqFrame


@dataclass(frozen=True)
class AckReceived:
    """The peer acknowledged sequence number ``seq``."""

    seq: int


@dataclass(frozen=True)
class NakReceived:
    """The peer received a damaged frame."""

    seq: int


@dataclass(frozen=True)
class DamagedFrameReceived:
    """A complete frame failed its checks; ``seq`` is its number if it could be read."""

    seq: int | None


@dataclass(frozen=True)
class TimerExpired:
    """The deadline of the last StartTimer passed."""


Event = (
    SendRequested | FrameReceived | AckReceived | NakReceived | DamagedFrameReceived | TimerExpired
)


def event_for_frame(frame: Frame) -> Event:
    """Translate a decoded frame into the event it means."""
    if isinstance(frame, AckFrame):
        return AckReceived(frame.seq)
    if isinstance(frame, NakFrame):
        return NakReceived(frame.seq)
    return FrameReceived(frame)


# --- actions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """Put these bytes on the wire."""

    data: bytes


@dataclass(frozen=True)
class StartTimer:
    """Arm the single timer for ``deadline`` (replacing any earlier one)."""

    deadline: float


@dataclass(frozen=True)
class CancelTimer:
    """Disarm the timer."""


@dataclass(frozen=True)
class Deliver:
    """Hand a received payload to the layer above, exactly once."""

    payload: bytes


@dataclass(frozen=True)
class Confirmed:
    """The peer acknowledged the payload sent with ``tag``."""

    tag: int


@dataclass(frozen=True)
class LinkDown:
    """The link failed; nothing more will be sent until a fresh state is started."""

    reason: str
    unacknowledged: int | None = None  # written, ACK never came: outcome unknown
    unsent: tuple[int, ...] = field(default=())  # never written: safe to send again


Action = Write | StartTimer | CancelTimer | Deliver | Confirmed | LinkDown


def _next_seq(seq: int) -> int:
    return 1 if seq >= MAX_SEQ else seq + 1


def _transmit(
    state: ArqState, frame: DataFrame | EnqFrame, tag: int | None, now: float
) -> tuple[ArqState, list[Action]]:
    in_flight = InFlight(frame, tag, 1, now + state.timers.ack_timeout)
    state = replace(state, in_flight=in_flight, next_seq=_next_seq(frame.seq), last_tx_at=now)
    return state, [Write(frame.to_bytes())]


def _send_next(state: ArqState, now: float) -> tuple[ArqState, list[Action]]:
    if state.in_flight is not None or not state.queue:
        return state, []
    (tag, payload), rest = state.queue[0], state.queue[1:]
    return _transmit(replace(state, queue=rest), DataFrame(state.next_seq, payload), tag, now)


def _retransmit(state: ArqState, now: float, why: str) -> tuple[ArqState, list[Action]]:
    in_flight = state.in_flight
    assert in_flight is not None
    if in_flight.attempts >= state.timers.max_send_attempts:
        return _go_down(state, f"{why} after {in_flight.attempts} transmissions")
    in_flight = replace(
        in_flight, attempts=in_flight.attempts + 1, deadline=now + state.timers.ack_timeout
    )
    return replace(state, in_flight=in_flight, last_tx_at=now), [Write(in_flight.frame.to_bytes())]


def _go_down(state: ArqState, reason: str) -> tuple[ArqState, list[Action]]:
    unacknowledged = state.in_flight.tag if state.in_flight else None
    unsent = tuple(tag for tag, _payload in state.queue)
    down = replace(state, in_flight=None, queue=(), down_reason=reason, armed=None)
    return down, [CancelTimer(), LinkDown(reason, unacknowledged, unsent)]


def _deadline(state: ArqState) -> float:
    if state.in_flight is not None:
        return state.in_flight.deadline
    return state.last_tx_at + state.timers.keepalive_interval


def _handle(state: ArqState, event: Event, now: float) -> tuple[ArqState, list[Action]]:
    if isinstance(event, SendRequested):
        state = replace(state, queue=(*state.queue, (event.tag, event.payload)))
        return _send_next(state, now)

    if isinstance(event, FrameReceived):
        frame = event.frame
        actions: list[Action] = [Write(AckFrame(frame.seq).to_bytes())]
        # A repeat of the last accepted number is a retransmission whose ACK got lost:
        # ACK it again, act on it once (a fresh start's first message every time).
        if isinstance(frame, DataFrame) and (
            frame.seq != state.last_rx_seq or frame.payload[0] in state.fresh_start_types
        ):
            actions.append(Deliver(frame.payload))
        return replace(state, last_rx_seq=frame.seq, last_tx_at=now), actions

    if isinstance(event, AckReceived):
        in_flight = state.in_flight
        if in_flight is None or in_flight.frame.seq != event.seq:
            return state, []  # a late ACK of a frame already settled
        state = replace(state, in_flight=None)
        confirmed: list[Action] = [] if in_flight.tag is None else [Confirmed(in_flight.tag)]
        state, sent = _send_next(state, now)
        return state, confirmed + sent

    if isinstance(event, NakReceived):
        if state.in_flight is None:
            return state, []
        return _retransmit(state, now, "NAK")

    if isinstance(event, DamagedFrameReceived):
        nak = NakFrame(event.seq if event.seq is not None else 0)
        return replace(state, last_tx_at=now), [Write(nak.to_bytes())]

    # TimerExpired
    if state.in_flight is not None:
        if now >= state.in_flight.deadline:
            return _retransmit(state, now, "no ACK")
        return state, []
    if now >= state.last_tx_at + state.timers.keepalive_interval:
        return _transmit(state, EnqFrame(state.next_seq), None, now)
    return state, []


def on_event(state: ArqState, event: Event, now: float) -> tuple[ArqState, list[Action]]:
    """Apply one event at time ``now``; return the new state and what to do."""
    if state.down_reason is not None:
        if isinstance(event, SendRequested):
            return state, [LinkDown(state.down_reason, None, (event.tag,))]
        return state, []
    state, actions = _handle(state, event, now)
    if state.down_reason is not None:
        return state, actions
    deadline = _deadline(state)
    if deadline != state.armed:
        state = replace(state, armed=deadline)
        actions.append(StartTimer(deadline))
    return state, actions
