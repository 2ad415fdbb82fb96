"""Fixtures for control-socket tests: a short socket directory, a fake daemon and its server."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from pointd.control.server import ControlServer
from tests.control.fake_daemon import FakeDaemon, serve

# Waiting on a real socket event; generous so a loaded CI box never flakes.
IO_TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    # Keep the server's log lines out of captured stdout (pointctl's output is asserted).
    with structlog.testing.capture_logs() as logs:
        yield logs


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes, too short for pytest's tmp_path; the
    # directory is world-traversable so the second-uid tests can reach the socket.
    path = Path(tempfile.mkdtemp(prefix="pctl-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
async def server(daemon: FakeDaemon, sock_dir: Path) -> AsyncIterator[ControlServer]:
    control = serve(daemon, str(sock_dir / "control.sock"))
    await control.start()
    yield control
    await control.close()


class RawLine:
    """A bare connection that sends exact bytes and reads JSON lines, for protocol abuse."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: Path | str) -> RawLine:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=2**24)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), IO_TIMEOUT)
        assert line.endswith(b"\n"), f"connection closed early: {line!r}"
        message: dict[str, Any] = json.loads(line)
        return message

    async def request(self, message: Any) -> dict[str, Any]:
        await self.send(json.dumps(message).encode() + b"\n")
        return await self.receive()

    async def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def raw(server: ControlServer) -> AsyncIterator[RawLine]:
    connection = await RawLine.open(server.path)
    yield connection
    await connection.close()
