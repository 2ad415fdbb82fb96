"""Mercado Pago's error bodies, and what each documented error code means for a caller.

Theory of operation. Mercado Pago answers errors in three shapes (tests/fixtures/
mercadopago/real/ holds each with its source):

- Orders and terminals, 4xx: ``{"errors": [{"code": "...", "message": "..."}]}``;
- Orders, 401 (and a few others): flat ``{"code": "...", "message": "..."}``;
- Point Integration API (payment intents): ``{"message", "error", "status", "cause"}``.

``read_error`` reads them in that order, so a body that carries more than one shape is read
by its most specific one. ``decide`` then picks the exception class from the code first and
falls back to the HTTP status only for a code it does not know: the same status means
different things (409 is "terminal busy" on a create and "key reused" on any write), the
same code means the same thing everywhere. Pure: no I/O, no httpx.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from pointd.cloud.errors import (
    AlreadyCanceled,
    BadRequest,
    CannotCancel,
    ConfigurationError,
    DeviceBusy,
    Forbidden,
    IdempotencyConflict,
    IdempotencyInProgress,
    NotFound,
    RateLimited,
    RefundNeedsPerson,
    RefundRetryLater,
    Rejected,
    ServerError,
    Unauthorized,
)

# Longest message kept from an answer: enough for a technician, bounded for the logs.
MAX_MESSAGE = 200
# The 412 of PATCH /terminals/v1/setup carries its rule as the code itself.
ONE_PDV_PER_POS = "Only one pos-store with PDV mode ON or SUSPENDED is allowed"


class CallKind(Enum):
    """What a call does at Mercado Pago; decides retries and how errors map."""

    READ = "read"  # GET: safe to repeat
    CREATE = "create"  # creates an intent, order or refund intent: never repeated here
    CANCEL = "cancel"  # DELETE of an intent, POST of an order cancel
    UPDATE = "update"  # PATCH of a device, terminal or the integrator
    REFUND = "refund"  # a refund through the API, no terminal involved: never repeated here


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The code and message of an error answer ("" when the body names none)."""

    code: str
    message: str


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value)


def read_error(body: object) -> ErrorBody:
    """The code and message of any documented error shape; empty for anything else."""
    if not isinstance(body, Mapping):
        return ErrorBody("", "")
    nested = body.get("errors")
    if isinstance(nested, list) and nested and isinstance(nested[0], Mapping):
        first = nested[0]
        return ErrorBody(_text(first.get("code")), _text(first.get("message"))[:MAX_MESSAGE])
    message = _text(body.get("message"))[:MAX_MESSAGE]
    flat = _text(body.get("code"))
    if flat:
        return ErrorBody(flat, message)
    return ErrorBody(_text(body.get("error")), message)


# Codes whose meaning does not depend on the call (sources: docs/cloud-client.md, table).
BY_CODE: Mapping[str, type[Rejected]] = {
    "already_queued_order_for_terminal": DeviceBusy,
    "idempotency_key_already_used": IdempotencyConflict,
    "forbidden_checking_terminal_owner": ConfigurationError,
    "terminal_not_allowed_action": ConfigurationError,
    "store_pos_not_found": ConfigurationError,
    "unsupported_site": ConfigurationError,
    ONE_PDV_PER_POS: ConfigurationError,
    "cannot_cancel_order": CannotCancel,
    "order_already_canceled": AlreadyCanceled,
    "order_not_found": NotFound,
    "transaction_not_found": NotFound,
    "unauthorized": Unauthorized,
    "user_not_authorized": Unauthorized,
    "refund_in_progress": RefundRetryLater,
    "movement_operations_pending": RefundRetryLater,
    "order_payment_not_yet_enabled_for_refund": RefundRetryLater,
    "insufficient_money_for_refund": RefundNeedsPerson,
    "refund_period_exceeded": RefundNeedsPerson,
    "partial_refund_forbidden_with_tips": RefundNeedsPerson,
    "order_already_refunded": RefundNeedsPerson,
    "cannot_refund_order": RefundNeedsPerson,
    "action_not_allowed_for_current_state": RefundNeedsPerson,
    "payment_not_refundable": RefundNeedsPerson,
    "amount_not_refundable": RefundNeedsPerson,
    "max_refunds_exceeded": RefundNeedsPerson,
    "unsupported_partially_refunds": RefundNeedsPerson,
    "refund_amount_exceeds": RefundNeedsPerson,
}

# For a code not in BY_CODE (or none): the status decides.
BY_STATUS: Mapping[int, type[Rejected]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    412: ConfigurationError,
    423: IdempotencyInProgress,
    429: RateLimited,
}
# The refund endpoint's statuses for codes it may add later (refund-errors page).
REFUND_BY_STATUS: Mapping[int, type[Rejected]] = {
    422: RefundNeedsPerson,
    425: RefundRetryLater,
    428: RefundNeedsPerson,
}


def decide(status: int, code: str, kind: CallKind) -> type[Rejected]:
    """The exception class for an error answer (``RateLimited`` needs its Retry-After)."""
    if code in BY_CODE:
        return BY_CODE[code]
    if status == 409 and kind is CallKind.CREATE:
        # The Point Integration API's only 409 on a create: a queued intent (conflict_error).
        return DeviceBusy
    if status == 409 and kind is CallKind.CANCEL:
        return CannotCancel
    if status >= 500:
        return ServerError
    if kind is CallKind.REFUND and status in REFUND_BY_STATUS:
        return REFUND_BY_STATUS[status]
    return BY_STATUS.get(status, Rejected)
