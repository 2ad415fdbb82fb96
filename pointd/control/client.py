"""An asyncio client for the control socket: calls by id, pushed events on a queue.

Theory of operation: one reader task splits the socket's bytes into JSON lines. A line with
an ``id`` resolves the pending call of that id; an ``event`` line goes to the events queue.
If the connection drops, every pending call fails with ``OutcomeUnknown`` (the request was
sent, its effect is not known) and the events iterator ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pointd.control.errors import (
    AccessDenied,
    ConnectFailed,
    OutcomeUnknown,
    ProtocolError,
    RemoteError,
)
from pointd.control.protocol import MAX_RESPONSE_BYTES, LineFramer, LineTooLong, encode

# A local unix socket connects at once or not at all; a few seconds covers a loaded PC.
CONNECT_TIMEOUT = 5.0
# The slowest methods (verify, reconcile, bundle) wait on Mercado Pago's API, whose own HTTP
# timeouts are well under a minute.
CALL_TIMEOUT = 60.0
READ_CHUNK = 65536


@dataclass(frozen=True)
class Event:
    """A pushed ``{"event", "data"}`` line."""

    topic: str
    data: Any


class ControlClient:
    """A connection to the daemon's control socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._closed = False
        self._reader_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls, path: str | os.PathLike[str], *, connect_timeout: float = CONNECT_TIMEOUT
    ) -> ControlClient:
        """Open the socket; raise ``ConnectFailed`` or ``AccessDenied`` (nothing was sent)."""
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_unix_connection(os.fspath(path))
        except PermissionError as exc:
            raise AccessDenied(f"no permission to open {os.fspath(path)}: {exc.strerror}") from None
        except (OSError, TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConnectFailed(f"cannot connect to {os.fspath(path)}: {reason}") from None
        return cls(reader, writer)

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        answer_timeout: float = CALL_TIMEOUT,
    ) -> Any:
        """Call a method and return its result; raise ``RemoteError`` for an error answer."""
        if self._closed:
            raise ConnectFailed("the control connection is closed")
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        request: dict[str, Any] = {"id": request_id, "method": method}
        if params:
            request["params"] = params
        try:
            self._writer.write(encode(request))
            await self._writer.drain()
            async with asyncio.timeout(answer_timeout):
                return await future
        except (ConnectionError, TimeoutError) as exc:
            raise OutcomeUnknown(
                f"{method}: no answer from the daemon ({type(exc).__name__}); "
                "check its state before repeating"
            ) from None
        finally:
            self._pending.pop(request_id, None)

    async def events(self) -> AsyncIterator[Event]:
        """Yield pushed events until the connection closes (call ``subscribe`` first)."""
        while (event := await self._events.get()) is not None:
            yield event

    def drain_events(self) -> list[Event]:
        """Take every event already received without waiting (to coalesce a burst)."""
        drained: list[Event] = []
        while not self._events.empty():
            event = self._events.get_nowait()
            if event is None:
                self._events.put_nowait(None)  # keep the end marker for events()
                break
            drained.append(event)
        return drained

    async def close(self) -> None:
        """Close the connection."""
        self._closed = True
        self._writer.close()
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self._reader_task
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        framer = LineFramer(MAX_RESPONSE_BYTES)
        failure: Exception = OutcomeUnknown("the daemon closed the control connection")
        try:
            while data := await self._reader.read(READ_CHUNK):
                for line in framer.feed(data):
                    self._deliver(line)
        except ProtocolError as exc:
            failure = exc
        except ConnectionError:
            pass
        finally:
            self._closed = True
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(failure)
            self._events.put_nowait(None)

    def _deliver(self, line: bytes | LineTooLong) -> None:
        if isinstance(line, LineTooLong):
            raise ProtocolError(f"the daemon sent a line over {MAX_RESPONSE_BYTES} bytes")
        try:
            message = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"the daemon sent invalid JSON: {exc}") from None
        if not isinstance(message, dict):
            raise ProtocolError("the daemon sent a JSON line that is not an object")
        if "event" in message:
            self._events.put_nowait(Event(str(message["event"]), message.get("data")))
            return
        request_id = message.get("id")
        future = self._pending.get(request_id) if isinstance(request_id, int) else None
        if future is None or future.done():
            # An answer to a request this client gave up on (timeout), or an id-less error
            # about an unparseable line this client never sends: nothing is waiting for it.
            return
        error = message.get("error")
        if isinstance(error, dict):
            extra = {k: v for k, v in error.items() if k not in ("code", "message")}
            future.set_exception(
                RemoteError(str(error.get("code")), str(error.get("message")), extra)
            )
        else:
            future.set_result(message.get("result"))
