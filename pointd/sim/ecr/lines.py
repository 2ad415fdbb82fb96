"""The register's cable: a pty the daemon opens as a serial port, or a TCP listener it dials.

``PtyCable`` holds both ends of a pty and points a stable symlink at the slave, as udev
would name a register's USB adapter; the daemon opens the symlink. ``unplug`` closes the
pty and removes the symlink (the daemon's port then fails, as with a pulled adapter);
``replug`` makes a new pty behind the same name. ``TcpCable`` listens on loopback for the
daemon's ``socket://host:port`` (register protocol §1: the byte stream is exactly the serial
byte stream) and serves one connection at a time; ``unplug`` drops it and stops listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path

from pointd.sim.ecr.register import Register

READ_CHUNK = 4096


class PtyCable:
    """A register's serial cable as a pty behind a stable symlink."""

    def __init__(self, register: Register, link_path: Path) -> None:
        self.register = register
        self.link_path = link_path
        self.device_path = str(link_path)
        self._master: int | None = None
        self._slave: int | None = None
        self._pending = bytearray()
        self.unplugs = 0

    @property
    def plugged(self) -> bool:
        """Whether the cable is in."""
        return self._master is not None

    def plug(self) -> None:
        """Make the pty, point the symlink at it, and start the register's link on it."""
        master, slave = os.openpty()
        # Until the daemon's pyserial makes the line raw, a cooked line would echo frames.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        with contextlib.suppress(FileNotFoundError):
            self.link_path.unlink()
        self.link_path.symlink_to(os.ttyname(slave))
        asyncio.get_running_loop().add_reader(master, self._readable)
        self.register.attach(self)

    def write(self, data: bytes) -> None:
        """Write to the pty; what the kernel does not take now goes out when it can."""
        if self._master is None:
            return
        self._pending += data
        self._flush()

    def _flush(self) -> None:
        master = self._master
        if master is None or not self._pending:
            return
        try:
            written = os.write(master, self._pending)
        except BlockingIOError:
            written = 0
        except OSError:
            self._pending.clear()
            return
        del self._pending[:written]
        loop = asyncio.get_running_loop()
        if self._pending:
            loop.add_writer(master, self._flush)
        else:
            loop.remove_writer(master)

    def _readable(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            data = os.read(master, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            return  # no slave open right now (the daemon is restarting): nothing to read
        if data:
            self.register.bytes_in(data)

    def unplug(self) -> bool:
        """Pull the cable; False when it was already out."""
        if self._master is None:
            return False
        self._close_pty()
        with contextlib.suppress(FileNotFoundError):
            self.link_path.unlink()
        self.register.detach("cable unplugged")
        self.unplugs += 1
        return True

    def _close_pty(self) -> None:
        master, slave = self._master, self._slave
        self._master = self._slave = None
        self._pending.clear()
        if master is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(master)
            loop.remove_writer(master)
            os.close(master)
        if slave is not None:
            os.close(slave)

    async def close(self) -> None:
        """Unplug for good and stop the register."""
        self._close_pty()
        with contextlib.suppress(FileNotFoundError):
            self.link_path.unlink()
        await self.register.close()


class _Connection(asyncio.Protocol):
    def __init__(self, cable: TcpCable) -> None:
        self._cable = cable
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._cable.connected(self)

    def data_received(self, data: bytes) -> None:
        if self._cable.current is self:
            self._cable.register.bytes_in(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cable.disconnected(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class TcpCable:
    """A register on the LAN: it listens, the daemon connects (``socket://``)."""

    def __init__(self, register: Register, host: str = "127.0.0.1", port: int = 0) -> None:
        self.register = register
        self.host = host
        self.port = port
        self.current: _Connection | None = None
        self._server: asyncio.Server | None = None
        self.unplugs = 0

    @property
    def device_path(self) -> str:
        """The daemon's ``[[lanes]] register`` for this register."""
        return f"socket://{self.host}:{self.port}"

    @property
    def plugged(self) -> bool:
        """Whether it is listening."""
        return self._server is not None

    async def plug(self) -> None:
        """Listen (on the same port as before, after the first time)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host,
                                                self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def connected(self, connection: _Connection) -> None:
        """A daemon connected: one at a time, as on a serial line."""
        if self.current is not None and connection.transport is not None:
            connection.transport.close()
            return
        self.current = connection
        self.register.attach(connection)

    def disconnected(self, connection: _Connection) -> None:
        """The daemon's connection ended (it restarted, or was killed)."""
        if self.current is connection:
            self.current = None
            self.register.detach("the daemon closed the connection")

    async def unplug(self) -> bool:
        """Pull the LAN cable: drop the connection and stop listening."""
        if self._server is None:
            return False
        await self._stop_listening()
        self.unplugs += 1
        return True

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        connection = self.current
        if connection is not None and connection.transport is not None:
            connection.transport.abort()
        if connection is not None:
            self.disconnected(connection)
        if server is not None:
            await server.wait_closed()

    async def close(self) -> None:
        """Stop listening for good and stop the register."""
        await self._stop_listening()
        await self.register.close()
