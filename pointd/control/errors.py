"""Every error the control package raises, for the server's handlers and for clients.

ControlError
├── MethodError          a handler refuses or fails; becomes an ``error`` response
├── SocketLost           the daemon's socket file was removed or replaced under it
├── NotSent              the request never reached the daemon: nothing was done
│   ├── ConnectFailed    no socket, nobody listening, or the daemon is not running
│   └── AccessDenied     the socket file's permissions shut this user out
├── RemoteError          the daemon answered with an ``error`` (code, message)
├── OutcomeUnknown       the request was sent but no answer came (connection lost, timeout)
└── ProtocolError        the daemon sent something that is not the protocol
"""

from __future__ import annotations

from typing import Any

from pointd.control.protocol import NOT_PERFORMED_CODES, ErrorCode


class ControlError(Exception):
    """Base of every control-socket error."""


class MethodError(ControlError):
    """Raised by a method handler to answer the caller with a specific error code."""

    def __init__(self, code: ErrorCode, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class SocketLost(ControlError):
    """The socket file no longer names this server's socket: nobody can reach it any more."""


class NotSent(ControlError):
    """The request did not reach the daemon; retrying is safe."""


class ConnectFailed(NotSent):
    """The control socket could not be reached."""


class AccessDenied(NotSent):
    """The operating system refused access to the control socket file."""


class RemoteError(ControlError):
    """The daemon answered with an error object."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data or {}

    @property
    def performed(self) -> bool:
        """False when the code proves the method did not run (safe to retry)."""
        return self.code not in NOT_PERFORMED_CODES


class OutcomeUnknown(ControlError):
    """The request was sent but its answer was lost: check the daemon before repeating it."""


class ProtocolError(ControlError):
    """The peer broke the wire format (bad JSON, oversize line, unexpected message)."""
