"""Opening the register's port by URL: a serial device path, or ``socket://host:port``.

Device paths (``/dev/ttyUSB0``, ``/dev/pointd/register``, a pty) go through pyserial's
``serial_for_url``: 8N1, exclusive, non-blocking (timeout 0). ``socket://host:port`` is
connected here instead, on the event loop: pyserial's socket handler connects with a
blocking five-second timeout, which would freeze the daemon's single event loop every time
an unreachable LAN register is retried. The bytes on the TCP stream are exactly the serial
bytes, as with pyserial's handler.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol
from urllib.parse import urlsplit

import serial

# A register on the store LAN answers a TCP connect in milliseconds; 3 s allows for a busy
# switch without stalling the reconnect loop behind a host that is off.
CONNECT_TIMEOUT = 3.0


class Port(Protocol):
    """What the link needs of an open, non-blocking byte stream."""

    def fileno(self) -> int:
        """The descriptor to watch for readiness."""
        ...

    def read(self, size: int) -> bytes:
        """Return what is available now (maybe nothing); raise on EOF or error."""
        ...

    def write(self, data: bytes) -> int | None:
        """Write what the kernel takes now; return the count."""
        ...

    def close(self) -> None:
        """Release the port."""
        ...


class SocketPort:
    """A connected, non-blocking TCP socket used as a serial line."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self._sock.fileno()

    def read(self, size: int) -> bytes:
        """What is available now; raise ConnectionResetError when the peer closed."""
        try:
            data = self._sock.recv(size)
        except BlockingIOError:
            return b""
        if not data:
            raise ConnectionResetError("the peer closed the connection")
        return data

    def write(self, data: bytes) -> int:
        """Send what the kernel takes now."""
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


def open_serial_port(url: str, baudrate: int) -> Port:
    """Open a serial device (or another pyserial URL) for non-blocking use, 8N1."""
    port: Port = serial.serial_for_url(
        url,
        baudrate=baudrate,
        bytesize=serial.EIGHTBITS,
        parity=serial.PARITY_NONE,
        stopbits=serial.STOPBITS_ONE,
        timeout=0,
        write_timeout=0,
        # A second process on the register's port would steal half the frames of both.
        exclusive=True,
    )
    return port


def _socket_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or port == 0:
        raise ValueError(f"expected socket://host:port, got {url!r}")
    return parts.hostname, port


async def open_port(url: str, baudrate: int) -> Port:
    """Open the register's port; ValueError for a URL that can never work, OSError otherwise."""
    if not url.startswith("socket://"):
        return open_serial_port(url, baudrate)
    host, port = _socket_address(url)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await loop.sock_connect(sock, address)
    except (OSError, TimeoutError) as exc:
        sock.close()
        raise OSError(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return SocketPort(sock)
