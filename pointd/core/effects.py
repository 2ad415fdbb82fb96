"""The core's outputs: imperative effects the engine runs after journaling the event.

The engine runs a step's effects in order, and only after the event that produced them is
committed to the journal (write-ahead). Effects that talk to Mercado Pago report back as
events: ``CreateIntent`` → IntentCreated / CreateNotSent / CreateOutcomeUnknown /
TerminalBusy / CreateRejected; ``FetchIntent`` → IntentObserved; ``FetchPayment`` →
PaymentVerified / PaymentNotFound; ``ReconcileAttempt`` → IntentCreated / IntentObserved /
PaymentsFound / AttemptNotFound (or nothing, when the API is unreachable: the RECONCILE
timer asks again). ``CancelIntent`` → CancelRefused on 409; a successful cancel shows up as
an IntentObserved(CANCELED) from the next notification or poll.

``ScheduleTimer`` replaces any pending timer of the same kind for the same sale.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Union

from pointd.core.events import TimerKind
from pointd.core.states import Refusal, SaleState


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


@dataclass(frozen=True, slots=True)
class ScheduleTimer:
    """Arm (or re-arm) the sale's timer of this kind for wall-clock time ``at``."""

    sale_id: str
    kind: TimerKind
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Disarm the sale's timer of this kind, if pending."""

    sale_id: str
    kind: TimerKind


@dataclass(frozen=True, slots=True)
class AlertTechnician:
    """Show a technician alert (control socket, logs) about this sale."""

    sale_id: str
    severity: Severity
    message: str


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
]
