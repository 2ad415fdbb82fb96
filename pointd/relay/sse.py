"""Server-sent events, sans-I/O: the relay's frames and the store client's decoder.

The relay writes each event as ``id: <position>`` and one ``data:`` line (the event's JSON,
which never holds a newline), comments as keep-alive, and one ``event: open`` message when
a stream starts. The decoder follows the WHATWG rules the relay needs (lines end in CRLF, LF
or CR; ``field: value`` with one optional space; ``:`` starts a comment; ``data`` lines join
with LF; a blank line dispatches; unknown fields are ignored) and holds at most
``max_message`` bytes of an unfinished message, so a peer that never ends a line costs
bounded memory.

Reference: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
"""

from __future__ import annotations

from dataclasses import dataclass

# A relay event is a few KiB; its body is at most intake.body_limit (256 KiB by default, at
# most 16 MiB), base64-encoded in the event's JSON, which grows it by a third. Anything
# larger is not from a relay.
MAX_MESSAGE = 32 << 20
KEEPALIVE = b": keepalive\n\n"


class StreamCorrupt(ValueError):
    """The peer sent something no relay sends: an over-long message."""


@dataclass(frozen=True, slots=True)
class Message:
    """One dispatched message: its ``event`` type ('' when none), last id and data."""

    event: str
    id: str
    data: str


def frame(data: bytes, *, event_id: int | None = None, event: str | None = None) -> bytes:
    """One message as wire bytes; ``data`` must hold no line break."""
    if b"\n" in data or b"\r" in data:
        raise ValueError("an event's data must be one line")
    head = b""
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    if event_id is not None:
        head += b"id: %d\n" % event_id
    return head + b"data: " + data + b"\n\n"


class Decoder:
    """Feed it the stream's bytes as they arrive; it returns the messages they complete."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._max = max_message
        self._pending: list[bytes] = []  # chunks of a line not yet ended
        self._pending_size = 0
        self._skip_lf = False  # the last chunk ended in CR: a leading LF belongs to it
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self.last_id = ""
        self.comments = 0

    def feed(self, chunk: bytes) -> list[Message]:
        """The messages completed by ``chunk``."""
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        if not chunk:
            return []
        self._skip_lf = chunk.endswith(b"\r")
        if b"\n" not in chunk and b"\r" not in chunk:
            # A long line arriving in pieces is kept as pieces: joined once, when it ends.
            self._pending.append(chunk)
            self._pending_size += len(chunk)
            self._check_size(self._pending_size)
            return []
        text = b"".join([*self._pending, chunk])
        lines = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        rest = lines.pop()
        self._pending, self._pending_size = ([rest], len(rest)) if rest else ([], 0)
        self._check_size(self._pending_size)
        messages: list[Message] = []
        for line in lines:
            message = self._line(line.decode("utf-8", errors="replace"))
            if message is not None:
                messages.append(message)
        return messages

    def _check_size(self, pending: int) -> None:
        if pending + self._size > self._max:
            raise StreamCorrupt(f"an event stream message above {self._max} bytes")

    def _line(self, line: str) -> Message | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(value) + 1
            self._check_size(0)
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None

    def _dispatch(self) -> Message | None:
        data, event = self._data, self._event
        self._data, self._event, self._size = [], "", 0
        if not data:
            return None
        return Message(event, self.last_id, "\n".join(data))
