"""The transport the relay consumer's event stream is read through: asyncio streams and h11.

Theory of operation. The stream is one GET held open for hours, read in one small chunk per
event. Through httpx's default transport each chunk passes httpcore's connection pool and
anyio's stream, which enters a cancel scope for every read; on this machine that was about
half of the consumer's CPU per event at sparse traffic (docs/benchmarks.md). This transport
serves that one request without them: it opens its own connection (TLS with the same
``httpx.create_ssl_context()`` trust as httpx's default), lets h11 frame the request and
parse the answer (status, headers, chunked or sized body, the peer closing early), and
reads the socket through an ``asyncio.StreamReader``. The read timeout is one timer per
stream, not one per read: a read only notes when it began, and the timer, when it fires,
either finds the current read older than the timeout (and ends it) or moves itself to
that read's deadline, so a stream that delivers an event a second arms and cancels nothing
per event (a ``Timeout`` and a timer handle per read were ≈ 7 µs of each read). It speaks
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


class _Silence(Exception):
    """The watchdog's signal to a read that waited past the read timeout."""


class _Body(httpx.AsyncByteStream):
    """The answer on one connection: h11 parses, the StreamReader reads, one watchdog
    timer bounds each read."""

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
        self._loop = asyncio.get_running_loop()
        self._read_since: float | None = None  # when the read under way began
        self._watchdog: asyncio.TimerHandle | None = None
        self._watched_until = 0.0  # the deadline the watchdog is set for

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
        if self._timeout is not None:
            self._read_since = self._loop.time()
            if self._watchdog is None:
                self._watch(self._read_since + self._timeout)
        try:
            return await self._reader.read(READ_SIZE)
        except _Silence:
            raise httpx.ReadTimeout("no data within the read timeout", request=self._request) \
                from None
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=self._request) \
                from None
        finally:
            self._read_since = None

    def _watch(self, deadline: float) -> None:
        self._watched_until = deadline
        self._watchdog = self._loop.call_at(deadline, self._check_silence)

    def _check_silence(self) -> None:
        self._watchdog = None
        if self._read_since is None or self._timeout is None:
            return  # no read under way: the next one sets the watchdog again
        deadline = self._read_since + self._timeout
        if deadline <= self._watched_until:
            self._reader.set_exception(_Silence())  # wakes the read, which raises it
        else:
            self._watch(deadline)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        # Abort, not close: nothing more is sent on a stream being left, and a TLS close
        # waits for the peer's close_notify (up to 30 s), which would hold up a stop.
        self._writer.transport.abort()
