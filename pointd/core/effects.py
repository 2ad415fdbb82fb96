"""The core's outputs: imperative effects the engine runs after journaling the event.

The engine runs a step's effects in order, and only after the event that produced them is
committed to the journal (write-ahead). Effects that talk to Mercado Pago report back as
events: ``CreateIntent`` → IntentCreated / CreateNotSent / CreateOutcomeUnknown /
TerminalBusy / CreateRejected; ``FetchIntent`` → IntentObserved; ``FetchPayment`` →
PaymentVerified / PaymentNotFound; ``ReconcileAttempt`` → IntentCreated / IntentObserved /
PaymentsFound / AttemptNotFound (or nothing, when the API is unreachable: the RECONCILE
timer asks again). ``CancelIntent`` → CancelRefused on 409; a successful cancel shows up as
an IntentObserved(CANCELED) from the next notification or poll. ``SendRefund`` →
RefundSent / RefundNotSent / RefundOutcomeUnknown / RefundRejected; ``FetchRefund`` →
RefundObserved.

Sales and refunds share one timer effect: ``ScheduleTimer`` names its owner (a sale id, or
a refund id for the REFUND kind), replaces any pending timer of the same kind for the same
owner, and says which event to submit when it is due (``due_event``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Union

from pointd.core.events import Event, RefundRefusal, RefundTimerExpired, TimerExpired, TimerKind
from pointd.core.states import RefundStatus, Refusal, SaleState


class Notice(StrEnum):
    """Advice to the cashier that replaces the state's screen; the sale goes on as it is."""

    CANCEL_ON_TERMINAL = "cancel_on_terminal"  # the terminal took the intent: cancel there
    CANCEL_TOO_LATE = "cancel_too_late"  # a payment exists or may exist: refund, not cancel
    # create_reconcile_attempts rounds could not tell whether the create reached Mercado
    # Pago: a supervisor checks the terminal; the daemon keeps asking
    CREATE_UNRESOLVED = "create_unresolved"


class Severity(StrEnum):
    """How urgently a technician alert needs a person."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"  # money or goods may be at risk


@dataclass(frozen=True, slots=True)
class CreateIntent:
    """POST a payment intent for this attempt; the reference names the attempt."""

    sale_id: str
    attempt: int
    terminal_id: str
    amount_cents: int
    external_reference: str


@dataclass(frozen=True, slots=True)
class CancelIntent:
    """DELETE the intent on its terminal (only succeeds while it is OPEN)."""

    sale_id: str
    terminal_id: str
    intent_id: str


@dataclass(frozen=True, slots=True)
class FetchIntent:
    """GET the intent and report it as IntentObserved (mind the 1 request/s limit)."""

    sale_id: str
    intent_id: str


@dataclass(frozen=True, slots=True)
class FetchPayment:
    """GET /v1/payments/{payment_id} and report PaymentVerified or PaymentNotFound."""

    sale_id: str
    payment_id: str


@dataclass(frozen=True, slots=True)
class ReconcileAttempt:
    """Find out whether this attempt's create reached Mercado Pago, and what became of it."""

    sale_id: str
    attempt: int
    external_reference: str
    terminal_id: str
    since: float  # wall-clock seconds: search intents and payments created from then on


@dataclass(frozen=True, slots=True)
class TellRegister:
    """Push the sale's current standing to the register (its prompt follows from it)."""

    lane: int
    correlation_id: str
    sale_id: str
    state: SaleState
    refusal: Refusal | None
    payment_id: str | None
    amount_cents: int
    notice: Notice | None = None
    # The sale was approved, then not any more, and the register never confirmed the goods
    # left: an approval it was told must be withdrawn.
    approval_withdrawn: bool = False
    # The register asked for this sale again: it also hears the RESULT of goods that left.
    repeated: bool = False


@dataclass(frozen=True, slots=True)
class ScheduleTimer:
    """Arm (or re-arm) the owner's timer of this kind for wall-clock time ``at``."""

    owner: str  # a sale id; a refund id for TimerKind.REFUND
    kind: TimerKind
    at: float

    def due_event(self) -> Event:
        """The event to submit once the timer is due."""
        return timer_event(self.owner, self.kind)


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Disarm the owner's timer of this kind, if pending."""

    owner: str
    kind: TimerKind


def timer_event(owner: str, kind: TimerKind) -> Event:
    """The event a due timer of this owner and kind becomes."""
    if kind is TimerKind.REFUND:
        return RefundTimerExpired(refund_id=owner)
    return TimerExpired(sale_id=owner, timer=kind)


@dataclass(frozen=True, slots=True)
class AlertTechnician:
    """Show a technician alert (control socket, logs) about this sale."""

    sale_id: str
    severity: Severity
    message: str


@dataclass(frozen=True, slots=True)
class SendRefund:
    """Call ``refund_payment`` with this key; report RefundSent/NotSent/OutcomeUnknown/Rejected."""

    refund_id: str
    terminal_id: str
    intent_id: str
    payment_id: str
    amount_cents: int
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class FetchRefund:
    """Call ``get_refund`` and report RefundObserved (nothing when the API is unreachable)."""

    refund_id: str
    intent_id: str
    payment_id: str
    cloud_refund_id: str


@dataclass(frozen=True, slots=True)
class TellRefund:
    """Show the refund's standing on the register of ``lane`` (None: no lane to tell)."""

    lane: int | None
    correlation_id: str
    sale_correlation_id: str | None
    refund_id: str
    status: RefundStatus
    amount_cents: int | None
    refusal: RefundRefusal | None
    via: str | None
    detail: str


Effect = Union[  # noqa: UP007 - a runtime value, also used for isinstance checks
    CreateIntent,
    CancelIntent,
    FetchIntent,
    FetchPayment,
    ReconcileAttempt,
    TellRegister,
    ScheduleTimer,
    CancelTimer,
    AlertTechnician,
    SendRefund,
    FetchRefund,
    TellRefund,
]


def subject_of(effect: Effect) -> str:
    """The sale or refund the effect is about (a timer's owner; a refund effect's refund)."""
    if isinstance(effect, ScheduleTimer | CancelTimer):
        return effect.owner
    if isinstance(effect, SendRefund | FetchRefund | TellRefund):
        return effect.refund_id
    return effect.sale_id
