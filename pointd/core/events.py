"""The core's inputs: frozen, past-tense events and their JSON form for the journal.

Every event is a fact the engine observed (the register asked, Mercado Pago answered, a
timer fired, a supervisor decided). The journal stores each one as JSON *before* the core's
effects for it run, and replaying the stored events through ``step`` rebuilds the state, so
the JSON form is a contract: ``event_from_json(e.to_json()) == e`` for every event, and
decoding (``pointd.core.codec``, shared with the snapshots) refuses unknown kinds, unknown
or missing fields and wrongly typed values. A field added to an event class after journals
were written with it has a default, which older events decode with.

Identifiers from Mercado Pago (payment ids, collector ids) travel as strings even where
the API sends numbers; the engine normalises them before building an event.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Union

from pointd.core.codec import decode_dataclass, encode
from pointd.core.errors import EventDecodeError
from pointd.core.states import Refusal, SaleState


class ObservationSource(StrEnum):
    """Where an intent observation came from: always an API answer, nowadays."""

    # A relayed notification body. Only journals older than schema 4 hold these (the
    # daemon now fetches what a notification names); the core rejects them unread.
    NOTIFICATION = "notification"
    POLL = "poll"  # GET payment-intents/{id} (or the order) answered
    RECONCILIATION = "reconciliation"  # found while reconciling an unknown create
    RECOVERY = "recovery"  # fetched after a daemon restart


class TimerKind(StrEnum):
    """The per-sale timers; at most one of each kind is pending per sale."""

    CREATE_RETRY = "create_retry"  # resend a create that provably was not sent
    RECONCILE = "reconcile"  # ask again what became of an unknown create
    POLL = "poll"  # no notification for a while: fetch the intent
    ABANDON = "abandon"  # intent still OPEN long after creation: fetch the intent
    VERIFY = "verify"  # fetch the payment again (exponential back-off)
    ESCALATE = "escalate"  # verification took too long: call a supervisor
    HANDOVER = "handover"  # approved, and the register has not confirmed the goods left
    REFUND = "refund"  # a refund's resend or poll is due (its owner is the refund id)


class OverrideDecision(StrEnum):
    """A supervisor's decision on a sale the core cannot settle by itself."""

    RELEASE = "release"  # hand the goods over; the supervisor takes responsibility
    VOID = "void"  # do not hand over; the sale ends as declined


class CoreEvent:
    """Behaviour shared by every event: its journal kind and JSON form."""

    __slots__ = ()

    def to_json(self) -> str:
        """The event as one line of JSON, tagged with its kind."""
        body: dict[str, Any] = {"kind": type(self).__name__}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            body[field.name] = encode(getattr(self, field.name))
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    @staticmethod
    def from_json(text: str | bytes) -> Event:
        """Decode any event from its JSON; raise EventDecodeError when malformed."""
        return event_from_json(text)


@dataclass(frozen=True, slots=True)
class FoundPayment:
    """One payment that a payments search returned for an attempt's reference."""

    payment_id: str
    status: str
    amount_cents: int | None


@dataclass(frozen=True, slots=True)
class SaleRequested(CoreEvent):
    """The register asked for a card payment; the engine added its terminal verdict."""

    sale_id: str
    lane: int
    correlation_id: str
    amount_cents: int
    terminal_id: str
    terminal_ok: Refusal | None


@dataclass(frozen=True, slots=True)
class IntentCreated(CoreEvent):
    """Mercado Pago returned the intent id for this attempt's create."""

    sale_id: str
    attempt: int
    intent_id: str


@dataclass(frozen=True, slots=True)
class CreateNotSent(CoreEvent):
    """The create provably never reached Mercado Pago (e.g. connection refused)."""

    sale_id: str
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class CreateOutcomeUnknown(CoreEvent):
    """The create may have reached Mercado Pago (timeout after send, 5xx, reset)."""

    sale_id: str
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class TerminalBusy(CoreEvent):
    """The create was refused with 409: the terminal already has a queued intent."""

    sale_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class CreateRejected(CoreEvent):
    """The create was refused outright (400/401/403); nothing was created."""

    sale_id: str
    attempt: int
    code: str


@dataclass(frozen=True, slots=True)
class IntentObserved(CoreEvent):
    """An intent's (or order's) state as the API answered a fetch or reconciliation."""

    intent_id: str
    state: str
    payment_id: str | None
    payment_state: str | None
    source: ObservationSource
    external_reference: str | None


@dataclass(frozen=True, slots=True)
class PaymentVerified(CoreEvent):
    """GET /v1/payments/{id} answered; amount already converted to exact cents."""

    payment_id: str
    status: str
    status_detail: str | None
    amount_cents: int | None  # None when the API amount is not a whole number of cents
    currency: str
    collector_id: str
    external_reference: str | None


@dataclass(frozen=True, slots=True)
class PaymentNotFound(CoreEvent):
    """GET /v1/payments/{id} answered 404 (it may appear a little later)."""

    payment_id: str


@dataclass(frozen=True, slots=True)
class PaymentsFound(CoreEvent):
    """Reconciliation's payments search found payments carrying the attempt's reference."""

    sale_id: str
    attempt: int
    payments: tuple[FoundPayment, ...]


@dataclass(frozen=True, slots=True)
class AttemptNotFound(CoreEvent):
    """Reconciliation proved that no intent and no payment exist for this attempt."""

    sale_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class FraudAlerted(CoreEvent):
    """A fraud alert (``stop_delivery_op_wh``, IPN ``delivery_cancellation``) named this payment.

    The one notification the core hears of: it can only keep goods in the store.
    """

    payment_id: str


@dataclass(frozen=True, slots=True)
class CancelRequested(CoreEvent):
    """Someone asked to cancel a sale, named by sale id or by its lane."""

    sale_id: str | None
    lane: int | None
    by: str


@dataclass(frozen=True, slots=True)
class CancelRefused(CoreEvent):
    """The intent cancel was refused (409): the terminal already took the intent."""

    sale_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class TimerExpired(CoreEvent):
    """A timer the core scheduled for this sale is due."""

    sale_id: str
    timer: TimerKind


@dataclass(frozen=True, slots=True)
class HandoverConfirmed(CoreEvent):
    """The register reports that the goods left the store."""

    sale_id: str


@dataclass(frozen=True, slots=True)
class OverrideGiven(CoreEvent):
    """A supervisor settled a sale by hand; journaled with who and why."""

    sale_id: str
    decision: OverrideDecision
    reason: str
    uid: int


@dataclass(frozen=True, slots=True)
class SettledSalesForgotten(CoreEvent):
    """The daemon let go of final sales last changed before ``before`` (wall-clock seconds).

    Journaled like any other event, so a replay forgets exactly where the live daemon did.
    """

    before: float


class RefundRefusal(StrEnum):
    """Why the daemon refused a refund before sending anything to Mercado Pago."""

    UNKNOWN_SALE = "unknown_sale"  # no such sale (or one the daemon already forgot)
    NOT_REFUNDABLE = "not_refundable"  # the sale has no verified, approved payment
    OVER_AMOUNT = "over_amount"  # more than was paid minus what is already refunded
    NOTHING_LEFT = "nothing_left"  # the whole payment is already refunded (or being)
    ID_REUSED = "id_reused"  # the refund id names a refund of another sale or amount
    INVALID_AMOUNT = "invalid_amount"  # an amount below one cent


@dataclass(frozen=True, slots=True)
class RefundableSale:
    """What the engine read of a sale when a refund of it was asked (journaled with it)."""

    state: SaleState
    lane: int
    correlation_id: str
    terminal_id: str
    intent_id: str | None  # the intent or order id the payment came through
    payment_id: str | None  # the verified approved payment, None when there is none
    paid_cents: int


@dataclass(frozen=True, slots=True)
class RefundRequested(CoreEvent):
    """The register or a technician asked to refund (part of) a sale; decided by refunds.py.

    ``request_key`` names the request for idempotency (the register's lane and refund
    correlation id, or the control caller's id); ``sale`` is None when no sale matched.
    """

    refund_id: str
    request_key: str
    correlation_id: str
    sale_id: str
    amount_cents: int | None  # None: all that is left
    by: str
    uid: int | None
    sale: RefundableSale | None


@dataclass(frozen=True, slots=True)
class RefundSent(CoreEvent):
    """Mercado Pago accepted the refund; ``state`` is PENDING, REFUNDED or FAILED."""

    refund_id: str
    cloud_refund_id: str
    state: str
    amount_cents: int
    via: str


@dataclass(frozen=True, slots=True)
class RefundNotSent(CoreEvent):
    """The refund call provably made nothing now (connection refused, terminal busy)."""

    refund_id: str
    reason: str
    terminal_busy: bool


@dataclass(frozen=True, slots=True)
class RefundOutcomeUnknown(CoreEvent):
    """The refund call may have reached Mercado Pago (timeout after send, 5xx, reset)."""

    refund_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class RefundRejected(CoreEvent):
    """The refund was refused; ``refunded_cents`` is what the payment shows refunded, if known."""

    refund_id: str
    code: str
    refunded_cents: int | None


@dataclass(frozen=True, slots=True)
class RefundObserved(CoreEvent):
    """A refund's state as ``get_refund`` answered it."""

    refund_id: str
    state: str
    amount_cents: int


@dataclass(frozen=True, slots=True)
class RefundTimerExpired(CoreEvent):
    """The refund's timer is due: poll it, or resend it with the same idempotency key."""

    refund_id: str


Event = Union[  # noqa: UP007 - a runtime value, also used for isinstance checks
    SaleRequested,
    IntentCreated,
    CreateNotSent,
    CreateOutcomeUnknown,
    TerminalBusy,
    CreateRejected,
    IntentObserved,
    PaymentVerified,
    PaymentNotFound,
    PaymentsFound,
    AttemptNotFound,
    FraudAlerted,
    CancelRequested,
    CancelRefused,
    TimerExpired,
    HandoverConfirmed,
    OverrideGiven,
    SettledSalesForgotten,
    RefundRequested,
    RefundSent,
    RefundNotSent,
    RefundOutcomeUnknown,
    RefundRejected,
    RefundObserved,
    RefundTimerExpired,
]

EVENT_TYPES: tuple[type[CoreEvent], ...] = typing.get_args(Event)
_BY_KIND: dict[str, type[CoreEvent]] = {cls.__name__: cls for cls in EVENT_TYPES}


def event_sale_id(event: Event) -> str | None:
    """The sale id the event itself names, if any."""
    sale_id = getattr(event, "sale_id", None)
    return sale_id if isinstance(sale_id, str) else None


def event_from_json(text: str | bytes) -> Event:
    """Decode one event; raise EventDecodeError naming what is wrong."""
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventDecodeError(f"event is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise EventDecodeError("event JSON must be an object")
    kind = body.pop("kind", None)
    cls = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventDecodeError(f"unknown event kind {str(kind)[:40]!r}")
    # Fields an event class gained after older journals were written carry defaults.
    return typing.cast(Event, decode_dataclass(cls, body, kind, EventDecodeError,
                                               defaults=True))
