"""The byte tap: a flight recorder of link traffic that can also write JSON-lines transcripts.

Each record is ``{"t": seconds since the tap started, "dir": "rx"|"tx"|"event", "hex": ...,
"note": ...}``. Bytes pass through the redactor given at construction *before* they are
kept, so card data never reaches the ring buffer, a dump or a transcript file. The
redactor sees each chunk as it was read or written; the link writes every frame in one
piece, so each frame the daemon sends is redacted whole.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

Direction = Literal["rx", "tx", "event"]
Redactor = Callable[[bytes], bytes]

# Enough for a few complete sales with their keep-alives: what a technician needs to see
# after a fault, small enough to keep in memory on a store PC.
DEFAULT_TRACE_CAPACITY = 512


@dataclass(frozen=True)
class TraceRecord:
    """One chunk of bytes read or written, or a link event (opened, lost)."""

    t: float
    dir: Direction
    hex: str
    note: str = ""

    def to_json(self) -> str:
        """One JSON line, keys in a stable order."""
        record: dict[str, object] = {"t": round(self.t, 6), "dir": self.dir, "hex": self.hex}
        if self.note:
            record["note"] = self.note
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> TraceRecord:
        """Parse one transcript line; raise ValueError naming what is wrong."""
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"transcript line is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("transcript line is not a JSON object")
        direction = raw.get("dir")
        if direction not in ("rx", "tx", "event"):
            raise ValueError(f"transcript dir must be rx, tx or event, got {direction!r}")
        t, hex_text, note = raw.get("t"), raw.get("hex", ""), raw.get("note", "")
        if not isinstance(t, int | float) or not isinstance(hex_text, str):
            raise ValueError("transcript t must be a number and hex a string")
        bytes.fromhex(hex_text)
        return cls(float(t), direction, hex_text, str(note))

    @property
    def data(self) -> bytes:
        """The recorded bytes."""
        return bytes.fromhex(self.hex)


class ByteTap:
    """Ring buffer of the link's traffic, optionally mirrored to a JSON-lines file."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        redact: Redactor | None = None,
        capacity: int = DEFAULT_TRACE_CAPACITY,
        transcript: TextIO | None = None,
    ) -> None:
        self._clock = clock
        self._start = clock()
        self._redact = redact
        self._ring: deque[TraceRecord] = deque(maxlen=capacity)
        self._transcript = transcript

    def record(self, direction: Direction, data: bytes = b"", note: str = "") -> None:
        """Keep one chunk (redacted first) or one event."""
        if self._redact is not None and data:
            data = self._redact(data)
        entry = TraceRecord(self._clock() - self._start, direction, data.hex(), note)
        self._ring.append(entry)
        if self._transcript is not None:
            self._transcript.write(entry.to_json() + "\n")
            self._transcript.flush()

    def records(self) -> list[TraceRecord]:
        """The records still in the ring, oldest first."""
        return list(self._ring)


def read_transcript(path: Path) -> list[TraceRecord]:
    """Load a JSON-lines transcript; raise ValueError with the line number on bad input."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(TraceRecord.from_json(line))
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from exc
    return records


def write_transcript(path: Path, records: Iterable[TraceRecord]) -> None:
    """Write records as JSON lines."""
    path.write_text("".join(r.to_json() + "\n" for r in records), encoding="utf-8")
