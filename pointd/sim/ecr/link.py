"""The link layer of register protocol §3, as a pure machine: frames and time in, actions out.

``Link`` keeps one side's sequence numbers, its single frame in flight (half-duplex, §1),
the queue behind it, the retransmission timer and the keep-alive. It never reads a clock:
every call takes ``now``, and ``deadline()`` says when ``tick`` is due next. What the caller
must do comes back as actions: ``Write`` bytes, ``Deliver`` a message, ``Confirmed`` (the
peer ACKed a send), ``Down`` (three transmissions went unanswered: the queue is forgotten,
numbering restarts at 01).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pointd.sim.ecr.wire import ACK, ENQ, NAK, NO_SEQ, Damaged, Frame, Received, build

# §3 "Timers and limits".
ACK_TIMEOUT = 2.0
MAX_SEND_ATTEMPTS = 3
KEEPALIVE_INTERVAL = 5.0
# §3: each side numbers its sequenced frames 01, 02, ... FF, 01, ...
FIRST_SEQ = 0x01
LAST_SEQ = 0xFF


@dataclass(frozen=True, slots=True)
class Write:
    """Put these bytes on the wire; ``kind`` and ``seq`` say what frame they are."""

    data: bytes
    kind: int
    seq: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Deliver:
    """A new message from the peer (never a repeat, never an ENQ)."""

    kind: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The peer acknowledged the frame sent under ``tag``."""

    tag: int


@dataclass(frozen=True, slots=True)
class Down:
    """The link is down: ``unknown`` was on the wire unacknowledged, ``not_sent`` never left."""

    reason: str
    unknown: int | None
    not_sent: tuple[int, ...]


Action = Write | Deliver | Confirmed | Down


@dataclass(slots=True)
class _Outgoing:
    tag: int | None  # None: a keep-alive ENQ, which no caller waits for
    kind: int
    data: bytes
    seq: int = 0
    transmissions: int = 0
    ack_due: float = 0.0


class Link:
    """One side of the link: what to write, deliver and report for each input."""

    def __init__(
        self,
        now: float,
        *,
        ack_timeout: float = ACK_TIMEOUT,
        max_send_attempts: int = MAX_SEND_ATTEMPTS,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
    ) -> None:
        self._ack_timeout = ack_timeout
        self._max_attempts = max_send_attempts
        self._keepalive = keepalive_interval
        self._next_seq = FIRST_SEQ
        # §3: the first frame after an open or a link-down is new whatever its number.
        self._last_accepted: int | None = None
        self._in_flight: _Outgoing | None = None
        self._queue: deque[_Outgoing] = deque()
        self._last_sent = now
        self._tags = 0

    # --- inputs ------------------------------------------------------------------------

    def send(self, kind: int, data: bytes, now: float) -> tuple[int, list[Action]]:
        """Queue one message; its tag and what to do now."""
        self._tags += 1
        self._queue.append(_Outgoing(self._tags, kind, data))
        return self._tags, self._transmit_next(now)

    def received(self, frames: list[Received], now: float) -> list[Action]:
        """Act on frames the receiver found."""
        actions: list[Action] = []
        for frame in frames:
            if isinstance(frame, Damaged):
                # §3 NAK: the damaged frame's SEQ if it could be read, else 00.
                seq = NO_SEQ if frame.seq is None else frame.seq
                actions.append(self._write_control(NAK, seq, now))
            elif frame.kind == ACK:
                actions += self._on_ack(frame.seq, now)
            elif frame.kind == NAK:
                actions += self._on_nak(now)
            else:
                actions += self._on_sequenced(frame, now)
        return actions

    def tick(self, now: float) -> list[Action]:
        """Retransmit, declare the link down or send a keep-alive, as the time requires."""
        outgoing = self._in_flight
        if outgoing is not None:
            if now < outgoing.ack_due:
                return []
            if outgoing.transmissions >= self._max_attempts:
                return [self._down(f"no ACK after {outgoing.transmissions} transmissions")]
            return [self._transmit(outgoing, now)]
        if now - self._last_sent >= self._keepalive:
            self._queue.append(_Outgoing(None, ENQ, b""))
            return self._transmit_next(now)
        return []

    def deadline(self) -> float:
        """When ``tick`` must be called next."""
        if self._in_flight is not None:
            return self._in_flight.ack_due
        return self._last_sent + self._keepalive

    # --- the machine ---------------------------------------------------------------------

    def _on_ack(self, seq: int, now: float) -> list[Action]:
        outgoing = self._in_flight
        if outgoing is None or seq != outgoing.seq:
            return []  # a late ACK of a frame already settled
        self._in_flight = None
        actions: list[Action] = []
        if outgoing.tag is not None:
            actions.append(Confirmed(outgoing.tag))
        return actions + self._transmit_next(now)

    def _on_nak(self, now: float) -> list[Action]:
        # §3: a NAK while a frame awaits its ACK makes the sender retransmit it at once.
        outgoing = self._in_flight
        if outgoing is None:
            return []
        if outgoing.transmissions >= self._max_attempts:
            return [self._down(f"NAK after {outgoing.transmissions} transmissions")]
        return [self._transmit(outgoing, now)]

    def _on_sequenced(self, frame: Frame, now: float) -> list[Action]:
        # §3: ACK every valid sequenced frame at once, a repeat included; act on it only
        # when its SEQ differs from the last one accepted.
        actions: list[Action] = [self._write_control(ACK, frame.seq, now)]
        if frame.seq == self._last_accepted:
            return actions
        self._last_accepted = frame.seq
        if frame.kind != ENQ:
            actions.append(Deliver(frame.kind, frame.data))
        return actions

    def _transmit_next(self, now: float) -> list[Action]:
        if self._in_flight is not None or not self._queue:
            return []
        outgoing = self._queue.popleft()
        outgoing.seq = self._take_seq()
        self._in_flight = outgoing
        return [self._transmit(outgoing, now)]

    def _transmit(self, outgoing: _Outgoing, now: float) -> Write:
        outgoing.transmissions += 1
        outgoing.ack_due = now + self._ack_timeout
        self._last_sent = now
        return Write(build(outgoing.seq, outgoing.kind, outgoing.data), outgoing.kind,
                     outgoing.seq, outgoing.data)

    def _write_control(self, kind: int, seq: int, now: float) -> Write:
        self._last_sent = now
        return Write(build(seq, kind), kind, seq)

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq = FIRST_SEQ if seq == LAST_SEQ else seq + 1
        return seq

    def _down(self, reason: str) -> Down:
        outgoing, self._in_flight = self._in_flight, None
        not_sent = tuple(o.tag for o in self._queue if o.tag is not None)
        self._queue.clear()
        # §3: the side that declares the link down numbers from 01 again, and its first
        # frame received after that is new whatever its SEQ.
        self._next_seq = FIRST_SEQ
        self._last_accepted = None
        return Down(reason, outgoing.tag if outgoing is not None else None, not_sent)
