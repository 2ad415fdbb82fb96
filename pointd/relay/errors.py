"""The relay's error tree, for the service, its storage backends and its client.

::

    RelayError
    ├── ConfigurationError        the settings cannot run a relay
    ├── RequestRefused            the relay answers a request 4xx, saying why
    ├── StorageError              a backend could not do what was asked
    │   └── NotStored             a write was not committed; the caller must not answer 2xx
    └── RelayClientError          the store-side consumer's failures
        ├── RelayUnreachable      no answer at all: nothing was read or acknowledged
        └── RelayRefused          the relay answered with an error status
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error raised by pointd.relay."""


class ConfigurationError(RelayError):
    """The relay settings are invalid or incomplete."""


class RequestRefused(RelayError):
    """A request the relay refuses; answered with ``status`` and ``{"error": reason}``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class StorageError(RelayError):
    """A storage backend failed."""


class NotStored(StorageError):
    """A notification was not durably written, so it must not be acknowledged to the sender."""


class RelayClientError(RelayError):
    """The relay consumer could not complete an exchange with the relay."""


class RelayUnreachable(RelayClientError):
    """The relay did not answer (connection refused, reset, timeout): nothing happened there."""


class RelayRefused(RelayClientError):
    """The relay answered with an error status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"relay answered {status}: {detail}")
        self.status = status
        self.detail = detail
