"""Register-link frames: byte stuffing, CRC and an incremental tri-state decoder.

Theory of operation
-------------------
Every frame on the wire is ``STX body ETX``. The body, before stuffing, is
``SEQ TYPE DATA... CRC_HI CRC_LO``: SEQ is the sender's sequence number (1..255, 0 only in
a NAK that could not read the damaged frame's number), TYPE is 0x05 ENQ (keep-alive),
0x06 ACK, 0x15 NAK, or a printable message type (0x20..0x7E) whose DATA is the message's
fields. CRC is CRC-16/CCITT-FALSE over SEQ, TYPE and DATA, big-endian. Stuffing then
replaces every STX, ETX or DLE inside the body by ``DLE, byte ^ 0x20`` so that STX and ETX
on the wire are always delimiters and a receiver can resynchronise on the next STX after
any damage, without timers.

``decode(buffer)`` never consumes bytes itself: it says what the front of the buffer is —
``NeedMore``, a ``Decoded`` frame and how many bytes it took, or ``Discard`` n bytes with a
reason — and the caller drops that many bytes. ``FrameDecoder`` is the buffering loop
around it. A ``Discard`` whose reason is ``damaged`` means a complete but broken frame
arrived and deserves a NAK; ``noise`` (bytes outside any frame) and ``oversize`` do not.
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Iterator
from dataclasses import dataclass

STX = 0x02  # start of frame
ETX = 0x03  # end of frame
DLE = 0x10  # escape: the next byte is XORed with ESCAPE_XOR
ESCAPE_XOR = 0x20
ENQ = 0x05  # keep-alive frame type: acknowledged, never delivered
ACK = 0x06
NAK = 0x15

MIN_MESSAGE_TYPE = 0x20
MAX_MESSAGE_TYPE = 0x7E
# Message type plus fields. 512 bytes holds a four-line UTF-8 display with room to spare
# and still fits the receive buffer of a small register controller.
MAX_PAYLOAD_SIZE = 512
MAX_SEQ = 255
# Worst case on the wire: every body byte stuffed, plus STX and ETX.
MAX_WIRE_FRAME_SIZE = 2 + 2 * (1 + MAX_PAYLOAD_SIZE + 2)

_SPECIAL = frozenset({STX, ETX, DLE})


class FrameError(ValueError):
    """Bytes or values that cannot form a frame."""


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR."""
    # binascii's CRC-CCITT (XMODEM's table-driven C loop) with the FALSE variant's initial
    # value is the same function, hundreds of times faster than a bit loop in Python.
    return binascii.crc_hqx(data, 0xFFFF)


def stuff(body: bytes) -> bytes:
    """Escape STX, ETX and DLE inside a frame body."""
    out = bytearray()
    for byte in body:
        if byte in _SPECIAL:
            out += bytes((DLE, byte ^ ESCAPE_XOR))
        else:
            out.append(byte)
    return bytes(out)


def unstuff(stuffed: bytes) -> bytes:
    """Undo ``stuff``; raise FrameError on an escape that ``stuff`` never produces."""
    out = bytearray()
    escaped = False
    for byte in stuffed:
        if escaped:
            original = byte ^ ESCAPE_XOR
            if original not in _SPECIAL:
                raise FrameError(f"invalid escape DLE {byte:#04x}")
            out.append(original)
            escaped = False
        elif byte == DLE:
            escaped = True
        else:
            out.append(byte)
    if escaped:
        raise FrameError("frame ends inside an escape")
    return bytes(out)


def _check_seq(seq: int, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not low <= seq <= MAX_SEQ:
        raise FrameError(f"sequence number {seq} outside {low}..{MAX_SEQ}")


def _wire(seq: int, frame_type: int, data: bytes = b"") -> bytes:
    inner = bytes((seq, frame_type)) + data
    body = inner + crc16_ccitt_false(inner).to_bytes(2, "big")
    return bytes((STX,)) + stuff(body) + bytes((ETX,))


@dataclass(frozen=True)
class DataFrame:
    """A message: payload is the message type byte followed by its fields."""

    seq: int
    payload: bytes

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        if not self.payload:
            raise FrameError("a data frame needs at least the message type byte")
        if len(self.payload) > MAX_PAYLOAD_SIZE:
            raise FrameError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD_SIZE}")
        if not MIN_MESSAGE_TYPE <= self.payload[0] <= MAX_MESSAGE_TYPE:
            raise FrameError(f"message type {self.payload[0]:#04x} is not printable ASCII")

    def to_bytes(self) -> bytes:
        """The frame as it goes on the wire."""
        return _wire(self.seq, self.payload[0], self.payload[1:])

    @classmethod
    def from_bytes(cls, wire: bytes) -> DataFrame:
        """Parse one complete wire frame that must be a data frame."""
        frame = parse_frame(wire)
        if not isinstance(frame, DataFrame):
            raise FrameError(f"expected a data frame, got {frame!r}")
        return frame


@dataclass(frozen=True)
class EnqFrame:
    """Keep-alive: sequenced and acknowledged like data, but carries nothing."""

    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)

    def to_bytes(self) -> bytes:
        """The frame as it goes on the wire."""
        return _wire(self.seq, ENQ)

    @classmethod
    def from_bytes(cls, wire: bytes) -> EnqFrame:
        """Parse one complete wire frame that must be an ENQ."""
        frame = parse_frame(wire)
        if not isinstance(frame, EnqFrame):
            raise FrameError(f"expected an ENQ frame, got {frame!r}")
        return frame


@dataclass(frozen=True)
class AckFrame:
    """Positive acknowledgement of the sequenced frame numbered ``seq``."""

    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)

    def to_bytes(self) -> bytes:
        """The frame as it goes on the wire."""
        return _wire(self.seq, ACK)

    @classmethod
    def from_bytes(cls, wire: bytes) -> AckFrame:
        """Parse one complete wire frame that must be an ACK."""
        frame = parse_frame(wire)
        if not isinstance(frame, AckFrame):
            raise FrameError(f"expected an ACK frame, got {frame!r}")
        return frame


@dataclass(frozen=True)
class NakFrame:
    """Negative acknowledgement: a damaged frame arrived; ``seq`` is informative only."""

    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq, allow_zero=True)

    def to_bytes(self) -> bytes:
        """The frame as it goes on the wire."""
        return _wire(self.seq, NAK)

    @classmethod
    def from_bytes(cls, wire: bytes) -> NakFrame:
        """Parse one complete wire frame that must be a NAK."""
        frame = parse_frame(wire)
        if not isinstance(frame, NakFrame):
            raise FrameError(f"expected a NAK frame, got {frame!r}")
        return frame


Frame = DataFrame | EnqFrame | AckFrame | NakFrame


def _from_body(body: bytes) -> Frame:
    if len(body) < 4:
        raise FrameError(f"frame body of {len(body)} bytes is shorter than SEQ+TYPE+CRC")
    inner, crc = body[:-2], int.from_bytes(body[-2:], "big")
    if crc16_ccitt_false(inner) != crc:
        raise FrameError("CRC mismatch")
    seq, frame_type, data = inner[0], inner[1], inner[2:]
    if frame_type in (ENQ, ACK, NAK) and data:
        raise FrameError(f"control frame {frame_type:#04x} carries data")
    if frame_type == ENQ:
        return EnqFrame(seq)
    if frame_type == ACK:
        return AckFrame(seq)
    if frame_type == NAK:
        return NakFrame(seq)
    return DataFrame(seq, inner[1:])


def parse_frame(wire: bytes) -> Frame:
    """Parse exactly one complete frame, STX to ETX; raise FrameError otherwise."""
    if len(wire) < 2 or wire[0] != STX or wire[-1] != ETX:
        raise FrameError("a frame starts with STX and ends with ETX")
    stuffed = wire[1:-1]
    if STX in stuffed or ETX in stuffed:
        raise FrameError("unescaped STX or ETX inside a frame")
    return _from_body(unstuff(stuffed))


class DiscardReason(enum.Enum):
    """Why the decoder tells the caller to drop bytes."""

    NOISE = "noise"  # bytes before any STX: line noise or a half frame from before we opened
    DAMAGED = "damaged"  # a complete STX..ETX whose escape, length or CRC is wrong: NAK it
    TRUNCATED = "truncated"  # a new STX arrived before the ETX: the older frame lost its end
    OVERSIZE = "oversize"  # no ETX within MAX_WIRE_FRAME_SIZE: not a frame of ours


@dataclass(frozen=True)
class NeedMore:
    """The buffer holds the start of a frame; feed more bytes."""


@dataclass(frozen=True)
class Decoded:
    """A valid frame occupies the first ``consumed`` bytes."""

    frame: Frame
    consumed: int


@dataclass(frozen=True)
class Discard:
    """Drop the first ``count`` bytes; ``seq`` is the damaged frame's number if readable."""

    count: int
    reason: DiscardReason
    seq: int | None = None


DecodeResult = NeedMore | Decoded | Discard

NEED_MORE = NeedMore()


def decode(buffer: bytes) -> DecodeResult:
    """Say what the front of ``buffer`` is, without consuming anything."""
    if not buffer:
        return NEED_MORE
    if buffer[0] != STX:
        start = buffer.find(STX)
        return Discard(len(buffer) if start < 0 else start, DiscardReason.NOISE)
    end = buffer.find(ETX, 1)
    restart = buffer.find(STX, 1)
    if restart != -1 and (end == -1 or restart < end):
        return Discard(restart, DiscardReason.TRUNCATED)
    if end == -1:
        if len(buffer) >= MAX_WIRE_FRAME_SIZE:
            return Discard(len(buffer), DiscardReason.OVERSIZE)
        return NEED_MORE
    if end + 1 > MAX_WIRE_FRAME_SIZE:
        return Discard(end + 1, DiscardReason.OVERSIZE)
    wire = buffer[: end + 1]
    try:
        return Decoded(parse_frame(wire), end + 1)
    except FrameError:
        return Discard(end + 1, DiscardReason.DAMAGED, _readable_seq(wire))


def _readable_seq(wire: bytes) -> int | None:
    """The sequence number at the front of a damaged frame, if it can be read at all."""
    first = wire[1:2]
    if first == bytes((DLE,)) and len(wire) > 3 and (wire[2] ^ ESCAPE_XOR) in _SPECIAL:
        return wire[2] ^ ESCAPE_XOR
    if first and first[0] not in _SPECIAL:
        return first[0]
    return None


class FrameDecoder:
    """Buffers received bytes and yields frames and discards in wire order."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame | Discard]:
        """Add bytes and yield everything that became decidable."""
        self._buffer += data
        while True:
            result = decode(bytes(self._buffer))
            if isinstance(result, NeedMore):
                return
            if isinstance(result, Decoded):
                del self._buffer[: result.consumed]
                yield result.frame
            else:
                del self._buffer[: result.count]
                yield result

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buffer)
