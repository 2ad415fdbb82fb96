"""What a store's open streams and long-polls wait on: each commit's events, pushed as it lands.

Theory of operation. After every group commit the service hands each newly appended event to
its store's feed (``publish``), already encoded as a server-sent-event frame, before any
intake request of that commit is answered. While a store has an open stream the feed keeps
its newest ``KEPT_FRAMES`` frames by position, so that a stream sends what was just
committed without reading storage back. Whatever the feed cannot vouch for — events
re-routed by a commit, appended by another replica or by an operator, or older than the
frames kept — is announced with ``touch``: readers then ask storage. Every change wakes
every waiter of that store (``changed``). A reader that misses a wake-up only waits for its
periodic re-read of storage, so the feed is never the only way an event is found.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

# Frames a store's feed keeps while it has open streams; a stream further behind than this
# (it just connected, or its client reads slowly) reads storage instead.
KEPT_FRAMES = 256


class StoreFeed:
    """One store's recent frames and the readers waiting for more."""

    def __init__(self) -> None:
        self.streams = 0  # open streams of this store on this replica
        self.touched = 0  # bumped whenever storage may hold events the frames do not
        self._frames: OrderedDict[int, bytes] = OrderedDict()
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        """Set at the next change; take it before looking, then wait on it."""
        return self._changed

    def wants_frames(self) -> bool:
        """Whether anyone reads frames (else publishing only wakes long-polls)."""
        return self.streams > 0

    def publish(self, position: int, frame: bytes | None) -> None:
        """An event committed at ``position`` (its frame when a stream reads frames)."""
        if frame is not None and self.streams:
            self._frames[position] = frame
            while len(self._frames) > KEPT_FRAMES:
                self._frames.popitem(last=False)
        self._wake()

    def touch(self) -> None:
        """Storage may hold events of this store that were not published here."""
        self.touched += 1
        self._wake()

    def wake(self) -> None:
        """Wake every waiter without claiming anything changed (a stream's client left)."""
        self._wake()

    def frames_after(self, after: int) -> tuple[int, list[bytes]]:
        """The frames of positions after+1, after+2, … while they are kept, and the last
        position they reach (``after`` when the next one is not kept)."""
        frames: list[bytes] = []
        position = after + 1
        while (found := self._frames.get(position)) is not None:
            frames.append(found)
            position += 1
        return position - 1, frames

    def has_beyond(self, after: int) -> bool:
        """A position above ``after`` is kept: events before it must be read from storage."""
        return bool(self._frames) and next(reversed(self._frames)) > after

    def closed(self) -> None:
        """A stream of this store ended."""
        self.streams -= 1
        if not self.streams:
            self._frames.clear()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
