"""The one error tree of the Mercado Pago cloud client.

What a caller must decide after a failed call is whether the request may have changed
something at Mercado Pago. The tree answers that first::

    CloudError
    ├── InvalidRequest        refused locally (site rules, bad argument): nothing was sent
    ├── NotSent               connect failure, DNS, pool timeout: nothing reached Mercado Pago,
    │                         a retry is safe
    ├── NotProven             reconciliation: the sources that answered neither found an
    │                         attempt nor prove it absent; ask again later
    ├── OutcomeUnknown        the request may have arrived: read/write timeout, reset, a 5xx
    │   │                     answer to a create/cancel/refund; reconcile before retrying
    │   └── MalformedResponse a 2xx whose body we cannot read
    └── Rejected              Mercado Pago answered and refused (status, error, message)
        ├── BadRequest        400
        ├── Unauthorized      401
        ├── Forbidden         403
        ├── NotFound          404
        ├── DeviceBusy        the terminal already has a queued intent or order
        │                     (409 already_queued_order_for_terminal; a Point 409 on create)
        ├── CannotCancel      409 on a cancel: the terminal took it (cancel it on the device)
        ├── ConfigurationError  the account or terminal is set up wrong
        │                     (forbidden_checking_terminal_owner, terminal_not_allowed_action,
        │                     store_pos_not_found, 412 "only one pos-store in PDV mode"):
        │                     a technician must fix it; never "declined" to the cashier
        ├── IdempotencyConflict   idempotency_key_already_used: the key was used with another
        │                     body; our bug or a replay: alert, never retry
        ├── IdempotencyInProgress 423: the first request with this key is still being
        │                     processed; resend the same request with the same key later
        ├── RefundRetryLater  refund_in_progress, movement_operations_pending, 425: nothing
        │                     was refunded yet; resend the same refund later with the same key
        ├── RefundNeedsPerson insufficient_money_for_refund (428), refund_period_exceeded,
        │                     partial_refund_forbidden_with_tips, order_already_refunded,
        │                     cannot_refund_order, 422 codes: no resend helps, a person acts
        ├── RateLimited       429, with the server's Retry-After in seconds
        └── ServerError       5xx on a GET, after the retries were used up

The decision is taken from the error code, not from the status (``decide`` in
``pointd.cloud.wire``); the status only decides when the code is unknown. A 500
``idempotency_validation_failed`` on a write is ``OutcomeUnknown``: resend with the same key.

For a GET, OutcomeUnknown only means "no answer": reads change nothing. A code this tree
does not know, on a status it does not map (e.g. 424), is a plain ``Rejected``.
``InvalidRequest`` also covers a refund larger than what is left of the payment
(``RefundExceedsBalance``), checked before anything is sent. No message in this tree ever
contains the access token: the client builds messages from the method, the path template
and Mercado Pago's own ``message`` field, and scrubs the token from the latter in case it
was echoed.
"""

from __future__ import annotations


class CloudError(Exception):
    """Root of every error raised by pointd.cloud."""


class InvalidRequest(CloudError, ValueError):
    """The call was refused before sending (site rules or a malformed argument)."""


class NotSent(CloudError):
    """The request never reached Mercado Pago; repeating it is safe."""


class NotProven(CloudError):
    """The reconciliation sources that answered do not prove an attempt absent (yet)."""


class OutcomeUnknown(CloudError):
    """The request may have been processed; reconcile before trying again."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MalformedResponse(OutcomeUnknown):
    """A 2xx answer whose body is not the documented shape."""


class Rejected(CloudError):
    """Mercado Pago answered with an error; the request had no effect."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"HTTP {status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message


class BadRequest(Rejected):
    """400: a field or parameter was refused."""


class Unauthorized(Rejected):
    """401: the access token is missing, invalid or expired."""


class Forbidden(Rejected):
    """403: integrator not registered, device not owned, or nobody logged into it."""


class NotFound(Rejected):
    """404: no such device, intent or payment (intents: 3 months of history only)."""


class DeviceBusy(Rejected):
    """The terminal already has a queued (non-final) intent or order."""


class CannotCancel(Rejected):
    """The terminal already took the intent or order; cancel it on the device."""


class AlreadyCanceled(CannotCancel):
    """409 order_already_canceled: what the cancel asked for is already true."""


class ConfigurationError(Rejected):
    """The account, store, POS or terminal is configured wrong; a technician must act."""


class RefundRetryLater(Rejected):
    """Mercado Pago is still busy with this order's money; resend the same refund later."""


class RefundNeedsPerson(Rejected):
    """The refund cannot be made by resending: a person must act (panel, balance, terminal)."""


class RefundExceedsBalance(InvalidRequest):
    """A refund would return more than the payment has left; nothing was sent.

    ``refunded_cents`` lets a caller that resent a refund after an unknown outcome see
    that an earlier attempt most likely landed (verify with the payment's refunds).
    """

    def __init__(self, message: str, *, paid_cents: int, refunded_cents: int) -> None:
        super().__init__(message)
        self.paid_cents = paid_cents
        self.refunded_cents = refunded_cents


class IdempotencyConflict(Rejected):
    """idempotency_key_already_used: this key was sent before with a different body."""


class IdempotencyInProgress(Rejected):
    """423: a request with this key is still being processed; resend it unchanged later."""


class RateLimited(Rejected):
    """429: too many requests; ``retry_after`` is the wait Mercado Pago asked for."""

    def __init__(self, status: int, error: str, message: str, *, retry_after: float) -> None:
        super().__init__(status, error, message)
        self.retry_after = retry_after


class ServerError(Rejected):
    """5xx on a read, after every retry was used."""
