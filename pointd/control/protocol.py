"""The control socket's wire format: newline-delimited JSON lines, their size cap and error codes.

Theory of operation: each message is one UTF-8 JSON object on one line ending in ``\\n``.
A client sends requests ``{"id", "method", "params"}``; the server answers each with
``{"id", "result"}`` or ``{"id", "error": {"code", "message"}}`` in the order they came, and
may interleave pushed ``{"event", "data"}`` lines on a subscribed connection. ``LineFramer``
splits a byte stream into lines without I/O; a line longer than the cap is reported once as
``LineTooLong`` and skipped up to its newline, so one bad request never desynchronises the
stream and the connection stays usable.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DEFAULT_SOCKET_PATH = "/run/pointd/control.sock"

# Requests are small (a method name and a few params); 64 KiB leaves room for a long override
# reason while bounding what one client can make the daemon buffer.
MAX_REQUEST_BYTES = 64 * 1024

# Responses can carry a support bundle (base64) or many sales; the client accepts far more.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def iso_time(epoch: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC to the second (``2026-11-22T10:05:00Z``), the one
    format every time in a control-socket result has."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ErrorCode(StrEnum):
    """Every ``error.code`` the server sends; the docs list what each means for the caller."""

    BAD_JSON = "bad_json"  # the line is not a JSON object
    BAD_REQUEST = "bad_request"  # a JSON object, but not a request (no method, bad id)
    LINE_TOO_LONG = "line_too_long"  # over MAX_REQUEST_BYTES; skipped up to its newline
    UNKNOWN_METHOD = "unknown_method"
    BAD_PARAMS = "bad_params"  # a param is missing, unknown or of the wrong type
    FORBIDDEN = "forbidden"  # the caller's uid/groups do not allow this method
    RATE_LIMITED = "rate_limited"  # called again too soon; retry after error.retry_after
    AUDIT_FAILED = "audit_failed"  # the journal could not record the call, so it did not run
    NOT_FOUND = "not_found"  # the sale, payment or lane named does not exist
    CONFLICT = "conflict"  # the request is not allowed in the current state
    UNAVAILABLE = "unavailable"  # a dependency (e.g. Mercado Pago) could not be reached
    NOT_SUPPORTED = "not_supported"  # this daemon does not implement the method yet
    INTERNAL = "internal"  # the handler failed unexpectedly; outcome of a mutating call unknown


# Codes that prove the method's handler never ran: nothing was done, the call may be retried.
NOT_PERFORMED_CODES = frozenset(
    {
        ErrorCode.BAD_JSON,
        ErrorCode.BAD_REQUEST,
        ErrorCode.LINE_TOO_LONG,
        ErrorCode.UNKNOWN_METHOD,
        ErrorCode.BAD_PARAMS,
        ErrorCode.FORBIDDEN,
        ErrorCode.RATE_LIMITED,
        ErrorCode.AUDIT_FAILED,
        ErrorCode.NOT_SUPPORTED,
    }
)


@dataclass(frozen=True)
class LineTooLong:
    """A line exceeded the cap; ``size`` is how many bytes of it were seen (at least cap + 1)."""

    size: int


class LineFramer:
    """Split a byte stream into newline-terminated lines of at most ``max_bytes`` (sans-I/O)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._buffer = bytearray()
        self._discarding = 0  # bytes of an oversize line skipped so far; 0 when not skipping

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        """Take more bytes; return the complete lines (without ``\\n``) and oversize markers."""
        out: list[bytes | LineTooLong] = []
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            chunk = data[start:end]
            if self._discarding:
                self._discarding += len(chunk)
            else:
                self._buffer += chunk
                if len(self._buffer) > self._max_bytes:
                    self._discarding = len(self._buffer)
                    self._buffer.clear()
            if newline < 0:
                break
            if self._discarding:
                out.append(LineTooLong(self._discarding))
                self._discarding = 0
            else:
                out.append(bytes(self._buffer))
                self._buffer.clear()
            start = newline + 1
        return out

    @property
    def pending(self) -> int:
        """Bytes held (or skipped) for a line whose newline has not arrived yet."""
        return self._discarding or len(self._buffer)


def encode(message: Mapping[str, Any]) -> bytes:
    """Serialise one message as a JSON line (UTF-8, no embedded newlines)."""
    # json.dumps escapes control characters inside strings, so the only b"\n" is the delimiter.
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error_body(code: ErrorCode, message: str, **extra: Any) -> dict[str, Any]:
    """Build the ``error`` object of a response."""
    return {"code": str(code), "message": message, **extra}
