"""ControlClient: errors keep "not sent" apart from "outcome unknown"."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from pointd.control.client import ControlClient
from pointd.control.errors import (
    ConnectFailed,
    NotSent,
    OutcomeUnknown,
    ProtocolError,
    RemoteError,
)
from pointd.control.server import Caller, ControlServer
from tests.control.conftest import IO_TIMEOUT


async def test_no_socket_is_connect_failed(sock_dir: Path) -> None:
    with pytest.raises(ConnectFailed, match="cannot connect"):
        await ControlClient.connect(sock_dir / "absent.sock")


async def test_nobody_listening_is_connect_failed(sock_dir: Path) -> None:
    path = sock_dir / "dead.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(NotSent):
        await ControlClient.connect(path)


async def test_remote_error_says_whether_anything_ran(server: ControlServer) -> None:
    async with await ControlClient.connect(server.path) as client:
        with pytest.raises(RemoteError) as refused:
            await client.call("sale", {"sale_id": 3})
        assert refused.value.code == "bad_params"
        assert not refused.value.performed
        assert refused.value.data == {"param": "sale_id"}
        with pytest.raises(RemoteError) as missing:
            await client.call("sale", {"sale_id": "S-404"})
        assert missing.value.code == "not_found"
        assert missing.value.performed


async def test_connection_lost_mid_call_is_outcome_unknown(sock_dir: Path) -> None:
    started = asyncio.Event()

    async def slow(caller: Caller) -> None:
        started.set()
        await asyncio.Event().wait()

    server = ControlServer(sock_dir / "c.sock", record_audit=lambda *_: None)
    server.register("refund_slowly", slow, mutating=True, params={}, description="d")
    await server.start()
    client = await ControlClient.connect(server.path)
    call = asyncio.create_task(client.call("refund_slowly"))
    await asyncio.wait_for(started.wait(), IO_TIMEOUT)
    await server.close()
    with pytest.raises(OutcomeUnknown):
        await asyncio.wait_for(call, IO_TIMEOUT)
    with pytest.raises(ConnectFailed):
        await client.call("methods")
    await client.close()


async def test_no_answer_in_time_is_outcome_unknown(sock_dir: Path) -> None:
    async def slow(caller: Caller) -> None:
        await asyncio.Event().wait()

    server = ControlServer(sock_dir / "c.sock", record_audit=lambda *_: None)
    server.register("stuck", slow, mutating=False, params={}, description="d")
    await server.start()
    try:
        async with await ControlClient.connect(server.path) as client:
            with pytest.raises(OutcomeUnknown, match="no answer"):
                await client.call("stuck", answer_timeout=0.05)
    finally:
        await server.close()


@pytest.mark.parametrize("garbage", [b"{oops\n", b"[1]\n"])
async def test_garbage_from_the_daemon_is_a_protocol_error(sock_dir: Path, garbage: bytes) -> None:
    async def answer_badly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(garbage)
        await writer.drain()
        await reader.read()

    impostor = await asyncio.start_unix_server(answer_badly, path=str(sock_dir / "bad.sock"))
    try:
        async with await ControlClient.connect(sock_dir / "bad.sock") as client:
            with pytest.raises(ProtocolError):
                await client.call("status")
    finally:
        impostor.close()
        await impostor.wait_closed()
