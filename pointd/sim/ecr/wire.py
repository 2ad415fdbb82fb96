"""Frames on the wire (register protocol §2): CRC, stuffing, building and receiving.

``Receiver.feed`` is incremental and needs no timers, as §2 "Receiving" says: bytes outside
a frame are dropped, a new STX before ETX restarts the frame, 1 032 bytes without ETX are
dropped, and a frame whose unstuffing or CRC fails is reported ``Damaged`` (to be NAKed).
"""

from __future__ import annotations

from dataclasses import dataclass

STX = 0x02
ETX = 0x03
DLE = 0x10
# §2: STX, ETX and DLE in the body travel as DLE, byte XOR 20.
STUFF_XOR = 0x20
STUFFED = frozenset({STX, ETX, DLE})
# §2 "TYPE" column.
ENQ = 0x05
ACK = 0x06
NAK = 0x15
# §2 "Maximum size": TYPE plus DATA at most 512 bytes; the whole frame on the wire at most
# 1 032 bytes.
MAX_TYPE_AND_DATA = 512
MAX_WIRE_FRAME = 1032
# SEQ, TYPE and the two CRC bytes.
MIN_BODY = 4
# §3: sequence numbers run 01..FF; 00 appears only in a NAK that could not read the SEQ.
NO_SEQ = 0x00


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (§2): polynomial 1021, initial FFFF, not reflected, no final XOR."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """Replace every STX, ETX and DLE of ``body`` by DLE, byte XOR 20."""
    out = bytearray()
    for byte in body:
        if byte in STUFFED:
            out += bytes((DLE, byte ^ STUFF_XOR))
        else:
            out.append(byte)
    return bytes(out)


def build(seq: int, kind: int, data: bytes = b"") -> bytes:
    """The wire bytes of one frame: STX, stuffed SEQ TYPE DATA CRC, ETX."""
    if not 0 <= seq <= 0xFF:
        raise ValueError(f"SEQ {seq} is not one byte")
    if len(data) + 1 > MAX_TYPE_AND_DATA:
        raise ValueError(f"{len(data)} bytes of DATA exceed the frame's {MAX_TYPE_AND_DATA - 1}")
    body = bytes((seq, kind)) + data
    body += crc16(body).to_bytes(2, "big")
    return bytes((STX,)) + stuff(body) + bytes((ETX,))


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame whose CRC matched."""

    seq: int
    kind: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Damaged:
    """A frame that failed unstuffing or its CRC; ``seq`` when it could still be read."""

    seq: int | None


Received = Frame | Damaged


def _unstuff(stuffed: bytes) -> tuple[bytes, bool]:
    """The body, and whether every escape in it was valid."""
    out = bytearray()
    escaped = False
    for byte in stuffed:
        if escaped:
            if byte ^ STUFF_XOR not in STUFFED:
                return bytes(out), False
            out.append(byte ^ STUFF_XOR)
            escaped = False
        elif byte == DLE:
            escaped = True
        else:
            out.append(byte)
    # A DLE directly before ETX is damage too.
    return bytes(out), not escaped


def parse(stuffed: bytes) -> Received:
    """Judge the bytes between an STX and its ETX."""
    body, clean = _unstuff(stuffed)
    seq = body[0] if body else None
    if not clean or len(body) < MIN_BODY:
        return Damaged(seq)
    if crc16(body[:-2]) != int.from_bytes(body[-2:], "big"):
        return Damaged(seq)
    return Frame(body[0], body[1], body[2:-2])


class Receiver:
    """Finds frames in a byte stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self._inside = False
        self._collected = bytearray()
        # Bytes dropped outside frames, or as frames too long or cut off (for the report).
        self.discarded = 0

    def feed(self, chunk: bytes) -> list[Received]:
        """Every frame completed by ``chunk``, in order."""
        found: list[Received] = []
        for byte in chunk:
            if byte == STX:
                if self._inside:
                    self.discarded += len(self._collected) + 1  # it lost its end
                self._inside = True
                self._collected.clear()
            elif not self._inside:
                self.discarded += 1
            elif byte == ETX:
                found.append(parse(bytes(self._collected)))
                self._inside = False
                self._collected.clear()
            else:
                self._collected.append(byte)
                # STX and ETX are not in the collected bytes; the rest of the frame is.
                if len(self._collected) + 2 > MAX_WIRE_FRAME:
                    self.discarded += len(self._collected) + 1
                    self._inside = False
                    self._collected.clear()
        return found
