"""The far end of a REAL pty, played by a test: raw bytes or frames in and out of the master.

The daemon's link opens the slave through a stable symlink, as it would open
/dev/pointd/register; ``unplug``/``plug`` close and recreate the pty behind that symlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path

from pointd.link.frame import Discard, Frame, FrameDecoder

# Waiting for the daemon's bytes is waiting on real I/O; generous so a loaded CI box
# does not fail, short enough that a missing frame fails the test quickly.
READ_WAIT = 5.0


class PtyPeer:
    """A pty master with a symlink to its slave."""

    def __init__(self, link_path: Path) -> None:
        self.link_path = link_path
        self.master = -1
        self.slave = -1
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self.plug()

    def plug(self) -> None:
        """Create the pty and point the symlink at its slave."""
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        with contextlib.suppress(FileNotFoundError):
            self.link_path.unlink()
        self.link_path.symlink_to(os.ttyname(self.slave))
        asyncio.get_running_loop().add_reader(self.master, self._on_readable)

    def unplug(self) -> None:
        """Close the pty, as pulling the USB adapter would, and remove the symlink."""
        if self.master < 0:
            return
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        os.close(self.slave)
        self.master = self.slave = -1
        with contextlib.suppress(FileNotFoundError):
            self.link_path.unlink()

    def _on_readable(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._buffer += os.read(self.master, 4096)
            self._arrived.set()

    def write(self, data: bytes) -> None:
        """Send bytes to the daemon."""
        os.write(self.master, data)

    async def read_exactly(self, count: int) -> bytes:
        """The next ``count`` bytes the daemon wrote."""
        async with asyncio.timeout(READ_WAIT):
            while len(self._buffer) < count:
                self._arrived.clear()
                await self._arrived.wait()
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def next_frame(self) -> Frame:
        """The next valid frame the daemon wrote, skipping anything else."""
        decoder = FrameDecoder()
        while True:
            for item in decoder.feed(await self.read_exactly(1)):
                if not isinstance(item, Discard):
                    return item

    @property
    def unread(self) -> bytes:
        """Bytes the daemon wrote that nobody read yet."""
        return bytes(self._buffer)
