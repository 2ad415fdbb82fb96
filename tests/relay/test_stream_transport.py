"""The stream's own transport (pointd.relay.stream_transport), against real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from pointd.relay.client import RelayConsumer
from pointd.relay.stream_transport import DirectStreamTransport, proxy_configured

IO_TIMEOUT = 30.0
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(serve: Serve, context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    listening = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield listening.sockets[0].getsockname()[1]
    finally:
        listening.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def read_all(url: str, *, read_timeout: float = IO_TIMEOUT) -> list[bytes]:
    async with httpx.AsyncClient(
        transport=DirectStreamTransport(), timeout=httpx.Timeout(IO_TIMEOUT, read=read_timeout)
    ) as client, client.stream("GET", url, headers={"last-event-id": "7"}) as response:
        assert response.status_code == 200
        return [piece async for piece in response.aiter_raw()]


async def test_it_sends_the_request_and_yields_each_chunk_as_it_arrives() -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(HEAD + chunk(b"data: one\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)  # a second TCP segment, not a timing assertion
        writer.write(chunk(b"data: two\n\n") + b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with server(serve) as port:
        pieces = await read_all(f"http://127.0.0.1:{port}/stores/a/stream?x=1")
    assert b"".join(pieces) == b"data: one\n\ndata: two\n\n"
    request = seen[0].decode().lower()
    assert request.startswith("get /stores/a/stream?x=1 http/1.1\r\n")
    assert f"host: 127.0.0.1:{port}\r\n" in request
    assert "last-event-id: 7\r\n" in request


async def test_a_connection_closed_mid_body_is_a_protocol_error() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + chunk(b"data: one\n\n"))
        await writer.drain()
        writer.close()

    async with server(serve) as port:
        with pytest.raises(httpx.RemoteProtocolError):
            await read_all(f"http://127.0.0.1:{port}/stream")


async def test_silence_past_the_read_timeout_is_a_read_timeout() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        await writer.drain()
        await reader.read()  # silent until the client gives up and closes
        writer.close()

    async with server(serve) as port:
        with pytest.raises(httpx.ReadTimeout):
            await read_all(f"http://127.0.0.1:{port}/stream", read_timeout=0.2)


async def test_a_stream_that_keeps_talking_outlives_its_read_timeout() -> None:
    # The read timeout bounds each read, not the stream: chunks every 50 ms for three times
    # the timeout must all arrive (the one watchdog timer moves to each read's deadline).
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        for n in range(30):
            writer.write(chunk(b"data: %d\n\n" % n))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with server(serve) as port:
        pieces = await read_all(f"http://127.0.0.1:{port}/stream", read_timeout=0.5)
    assert b"".join(pieces) == b"".join(b"data: %d\n\n" % n for n in range(30))


async def test_silence_after_data_is_a_read_timeout_and_time_between_reads_is_not() -> None:
    # The reader takes three timeouts' worth between two reads (a slow journal commit):
    # that is not silence. Then the relay says nothing: that is.
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + chunk(b"data: one\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)  # a second TCP segment, not a timing assertion
        writer.write(chunk(b"data: two\n\n"))
        await writer.drain()
        await reader.read()  # silent until the client gives up and closes
        writer.close()

    pieces: list[bytes] = []
    async with server(serve) as port, httpx.AsyncClient(
        transport=DirectStreamTransport(), timeout=httpx.Timeout(IO_TIMEOUT, read=0.2)
    ) as client, client.stream("GET", f"http://127.0.0.1:{port}/stream") as response:
        chunks = response.aiter_raw()
        pieces.append(await anext(chunks))
        await asyncio.sleep(0.6)
        pieces.append(await anext(chunks))
        with pytest.raises(httpx.ReadTimeout):
            await anext(chunks)
    assert b"".join(pieces) == b"data: one\n\ndata: two\n\n"


async def test_a_refused_connection_is_a_connect_error() -> None:
    # Bound but not listening: connects are refused, and no other process can listen there.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        with pytest.raises(httpx.ConnectError):
            await read_all(f"http://127.0.0.1:{port}/stream")


async def test_it_sends_nothing_but_get() -> None:
    async with httpx.AsyncClient(transport=DirectStreamTransport()) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.post("http://127.0.0.1:1/ack", json={"cursor": 1})


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_tls_is_verified_as_httpx_verifies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(HEAD + chunk(b"data: secure\n\n") + b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    async with server(serve, context) as port:
        url = f"https://127.0.0.1:{port}/stream"
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await read_all(url)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx's own trust_env switch
        assert await read_all(url) == [b"data: secure\n\n"]


def test_proxy_configured_reads_the_environment_as_httpx_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert not proxy_configured("https://relay.example.com")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.lan:3128")
    assert proxy_configured("https://relay.example.com")
    assert not proxy_configured("http://relay.example.com")
    monkeypatch.setenv("NO_PROXY", "relay.example.com")
    assert not proxy_configured("https://relay.example.com")
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setenv("ALL_PROXY", "http://proxy.lan:3128")
    assert proxy_configured("http://relay.example.com")


async def test_behind_a_proxy_the_stream_goes_through_httpx_and_the_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requested: list[bytes] = []
    streamed = asyncio.Event()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                line = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0]
                requested.append(line)
                if b"/stream" in line:
                    streamed.set()
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        writer.close()

    async def handler(events: object, cursor: int) -> None:
        raise AssertionError("nothing is delivered")

    class Cursor:
        def get(self) -> int:
            return 0

    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    async with server(proxy) as port:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        # Nothing listens at the relay's own address: only the proxy can answer.
        consumer = RelayConsumer("http://relay.invalid:9", "store-a", "t", handler, Cursor(),
                                 canary_interval=3600.0)
        running = asyncio.create_task(consumer.run())
        try:
            await asyncio.wait_for(streamed.wait(), IO_TIMEOUT)
        finally:
            consumer.stop()
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            await consumer.close()
    assert any(line.startswith(b"GET http://relay.invalid:9/stores/store-a/stream") for line
               in requested)
