"""The link's exceptions, in the caller's vocabulary.

LinkError
├── LinkNotSent          the payload never went on the wire: safe to send again
├── LinkOutcomeUnknown   it was written but never acknowledged: the peer may have it
└── LinkConfigError      the port URL or settings can never work: fix the configuration
"""

from __future__ import annotations


class LinkError(Exception):
    """Base of every register-link failure."""


class LinkNotSent(LinkError):
    """The payload was not written; nothing reached the peer."""


class LinkOutcomeUnknown(LinkError):
    """The payload was written but no ACK came before the link went down."""


class LinkConfigError(LinkError):
    """The port cannot be opened as configured, whatever the hardware does."""
