"""The transport the relay consumer's event stream is read through: asyncio streams and h11.

Theory of operation. The stream is one GET held open for hours, read in one small chunk per
event. Through httpx's default transport each chunk passes httpcore's connection pool and
anyio's stream, which enters a cancel scope for every read; on this machine that was about
half of the consumer's CPU per event at sparse traffic (docs/benchmarks.md). This transport
serves that one request without them: it opens its own connection (TLS with the same
``httpx.create_ssl_context()`` trust as httpx's default), lets h11 frame the request and
parse the answer (status, headers, chunked or sized body, the peer closing early), and
reads the socket through an ``asyncio.StreamReader`` with one timer per read. It speaks
httpx's transport interface, so the consumer reads the answer as any httpx response and
sees the errors it already handles (``httpx.ConnectError``, ``ReadTimeout``,
``RemoteProtocolError``, ``ReadError``).

It has no pool, no proxy support and sends no body: the consumer uses it only for the
stream, and only when no proxy applies to the relay's URL (``proxy_configured``); every
other request, and the stream through a proxy, goes through httpx's own transport.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator

import h11
import httpx

# What one read asks the socket for; an event is a few KiB.
READ_SIZE = 65536


def proxy_configured(url: str) -> bool:
    """Whether the environment routes ``url`` through a proxy, as httpx's ``trust_env``
    reads it (``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``)."""
    parsed = httpx.URL(url)
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(parsed.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parsed.host)  # NO_PROXY, on this platform


class DirectStreamTransport(httpx.AsyncBaseTransport):
    """One connection per request, read chunk by chunk; for a long-lived GET."""

    def __init__(self) -> None:
        self._ssl: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Connect, send the request line and headers, and return once the answer's head
        has arrived; its body is read as the caller iterates it."""
        if request.method != "GET":
            raise httpx.UnsupportedProtocol(
                "the stream transport sends only GET requests", request=request
            )
        timeouts = request.extensions.get("timeout", {})
        reader, writer = await self._connect(request, connect_within=timeouts.get("connect"))
        body = _Body(request, reader, writer, timeouts.get("read"))
        try:
            head = await body.start()
        except BaseException:
            await body.aclose()
            raise
        return httpx.Response(
            head.status_code,
            headers=head.headers,
            stream=body,
            extensions={"http_version": b"HTTP/" + head.http_version,
                        "reason_phrase": head.reason},
        )

    async def _connect(
        self, request: httpx.Request, *, connect_within: float | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        url = request.url
        secure = url.scheme == "https"
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        if secure and self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        try:
            async with asyncio.timeout(connect_within):
                return await asyncio.open_connection(
                    url.host,
                    url.port or (443 if secure else 80),
                    ssl=self._ssl if secure else None,
                    server_hostname=url.host if secure else None,
                    limit=READ_SIZE,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("connecting timed out", request=request) from None
        except OSError as exc:  # refused, unreachable, name resolution, TLS (ssl.SSLError)
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from None


class _Body(httpx.AsyncByteStream):
    """The answer on one connection: h11 parses, the StreamReader reads, one timer a read."""

    def __init__(
        self,
        request: httpx.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        read_timeout: float | None,
    ) -> None:
        self._request = request
        self._reader = reader
        self._writer = writer
        self._timeout = read_timeout
        self._h11 = h11.Connection(h11.CLIENT)

    async def start(self) -> h11.Response:
        """Send the request; return the answer's head (informational answers skipped)."""
        self._writer.write(
            self._h11.send(
                h11.Request(
                    method=b"GET",
                    target=self._request.url.raw_path,
                    headers=self._request.headers.raw,
                )
            )
            + self._h11.send(h11.EndOfMessage())
        )
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                return event

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return

    async def _next_event(self) -> h11.Event:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc), request=self._request) from None
            if event is h11.NEED_DATA:
                self._h11.receive_data(await self._read())
            elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError(
                    "the server closed the connection", request=self._request
                )
            else:
                return event  # type: ignore[return-value]  # NEED_DATA and PAUSED are handled

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._reader.read(READ_SIZE)
        except TimeoutError:
            raise httpx.ReadTimeout("no data within the read timeout", request=self._request) \
                from None
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=self._request) \
                from None

    async def aclose(self) -> None:
        # Abort, not close: nothing more is sent on a stream being left, and a TLS close
        # waits for the peer's close_notify (up to 30 s), which would hold up a stop.
        self._writer.transport.abort()
