"""The emulated register's side of the wire: a pty master or an accepted socket, with fault knobs.

The daemon opens the other side unchanged — the pty's slave device (or a stable symlink to
it, as udev would make) or ``socket://127.0.0.1:port`` — so production code never knows it
talks to a simulator. ``FaultyPort`` wraps either side and damages traffic on request, the
way a noisy cable or a lost byte would.
"""

from __future__ import annotations

import os

from pointd.link.frame import (
    ETX,
    STX,
    AckFrame,
    DataFrame,
    FrameError,
    crc16_ccitt_false,
    parse_frame,
    stuff,
)
from pointd.link.ports import Port, SocketPort

__all__ = ["FaultyPort", "FdPort", "SocketPort", "with_bad_crc"]


class FdPort:
    """A non-blocking file descriptor such as a pty master."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    def fileno(self) -> int:
        """The descriptor."""
        return self._fd

    def read(self, size: int) -> bytes:
        """What is available now; raise OSError if the other side is gone."""
        try:
            data = os.read(self._fd, size)
        except BlockingIOError:
            return b""
        if not data:
            raise OSError("end of file on the register port")
        return data

    def write(self, data: bytes) -> int:
        """Write what the kernel takes now."""
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Close the descriptor."""
        os.close(self._fd)


def _frames_in(chunk: bytes) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    position = 0
    while True:
        start = chunk.find(STX, position)
        end = chunk.find(ETX, start + 1) if start != -1 else -1
        if start == -1 or end == -1:
            return spans
        spans.append((start, end + 1))
        position = end + 1


def _parse(wire: bytes) -> AckFrame | DataFrame | None:
    try:
        frame = parse_frame(wire)
    except FrameError:
        return None
    return frame if isinstance(frame, AckFrame | DataFrame) else None


def with_bad_crc(frame: DataFrame) -> bytes:
    """The frame's wire bytes with a CRC that cannot match."""
    inner = bytes((frame.seq,)) + frame.payload
    crc = crc16_ccitt_false(inner) ^ 0xFFFF
    return bytes((STX,)) + stuff(inner + crc.to_bytes(2, "big")) + bytes((ETX,))


class FaultyPort:
    """Wraps a port; each armed fault damages exactly one frame (or a count of them)."""

    def __init__(self, inner: Port) -> None:
        self._inner = inner
        self.broken = False
        self.drop_next_ack_sent = False
        self.acks_to_drop_received = 0
        self.corrupt_next_frame_sent = False

    def fileno(self) -> int:
        """The wrapped port's descriptor."""
        return self._inner.fileno()

    def read(self, size: int) -> bytes:
        """Read, then lose the ACKs that fault is armed for."""
        try:
            data = self._inner.read(size)
        except OSError:
            self.broken = True
            raise
        kept = bytearray()
        position = 0
        for start, end in _frames_in(data):
            if self.acks_to_drop_received and isinstance(_parse(data[start:end]), AckFrame):
                self.acks_to_drop_received -= 1
                kept += data[position:start]
                position = end
        return bytes(kept + data[position:]) if position else data

    def write(self, data: bytes) -> int | None:
        """Write, losing or damaging this frame if a fault is armed."""
        frame = _parse(data) if data[:1] == bytes((STX,)) else None
        if self.drop_next_ack_sent and isinstance(frame, AckFrame):
            self.drop_next_ack_sent = False
            return len(data)
        if self.corrupt_next_frame_sent and isinstance(frame, DataFrame):
            self.corrupt_next_frame_sent = False
            damaged = with_bad_crc(frame)
            self._write(damaged)
            return len(data)
        return self._write(data)

    def _write(self, data: bytes) -> int | None:
        try:
            return self._inner.write(data)
        except OSError:
            self.broken = True
            raise

    def close(self) -> None:
        """Close the wrapped port."""
        self._inner.close()
