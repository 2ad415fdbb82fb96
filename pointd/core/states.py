"""The vocabulary the core shares with the register prompts and the technician's views.

These enums are the contract between the pure core (which decides), the register layer
(which maps every value one to one onto a cashier prompt) and the control socket (which
shows them). A new value here needs a prompt in every language of the catalogue; a test
of the catalogue enforces that.

Every named set of states lives here, once: the table, the register session, the control
views, the reconciliation export and the benchmarks all read these, so "which states hold
the goods" has one answer.
"""

from __future__ import annotations

from enum import StrEnum


class IntentState(StrEnum):
    """A payment intent's state as Mercado Pago spells it (mercadopago-api.md §1.6).

    The wire's spelling; compare case-insensitively (the cloud models upper-case it).
    """

    OPEN = "OPEN"
    ON_TERMINAL = "ON_TERMINAL"
    PROCESSING = "PROCESSING"
    PROCESSED = "PROCESSED"
    FINISHED = "FINISHED"
    CONFIRMATION_REQUIRED = "CONFIRMATION_REQUIRED"
    CANCELED = "CANCELED"
    ERROR = "ERROR"
    ABANDONED = "ABANDONED"


# The intent states that carry the payment settling the sale.
PAID_INTENT_STATES = frozenset({IntentState.FINISHED, IntentState.CONFIRMATION_REQUIRED})
# The intent states that end it without a payment.
UNPAID_INTENT_END_STATES = frozenset(
    {IntentState.CANCELED, IntentState.ERROR, IntentState.ABANDONED}
)
# An intent in one of these never changes again.
FINAL_INTENT_STATES = PAID_INTENT_STATES | UNPAID_INTENT_END_STATES


class SaleState(StrEnum):
    """Where one sale stands. Final states never change (see docs/sale-lifecycle.md)."""

    REQUESTED = "requested"  # a create provably not sent: waiting to send it again
    CREATING = "creating"  # create attempt journaled; the request may be in flight
    CREATE_UNKNOWN = "create_unknown"  # create may have reached Mercado Pago: reconciling
    OPEN = "open"  # intent exists; waiting for the terminal to take it
    ON_TERMINAL = "on_terminal"  # the customer is at the terminal
    PROCESSING = "processing"  # the terminal is authorising the card
    VERIFYING = "verifying"  # the intent ended; checking the payment with /v1/payments
    HELD = "held"  # CONFIRMATION_REQUIRED or unverifiable: do not hand over, verifying
    ESCALATED = "escalated"  # still unverified after the escalation time: supervisor needed
    CANCELING = "canceling"  # cancel asked of Mercado Pago; waiting for the outcome
    APPROVED = "approved"  # verified approved payment of the exact amount: hand over
    BLOCKED = "blocked"  # a fraud alert names the payment before handover: do not hand over
    HANDED_OVER = "handed_over"  # final: the register confirmed the goods left
    DECLINED = "declined"  # final: the payment was rejected or cancelled
    CANCELED = "canceled"  # final: the intent was canceled (register, terminal or API)
    FAILED = "failed"  # final: the intent ended in ERROR or the create was refused
    ABANDONED = "abandoned"  # final: the terminal never took the intent in time
    OVERRIDDEN = "overridden"  # final: a supervisor released the goods; journaled with who
    # final: approved, but the register never confirmed the goods left within
    # handover_confirm_after; the lane was freed and a technician alerted
    HANDOVER_UNCONFIRMED = "handover_unconfirmed"


FINAL_STATES = frozenset(
    {
        SaleState.HANDED_OVER,
        SaleState.DECLINED,
        SaleState.CANCELED,
        SaleState.FAILED,
        SaleState.ABANDONED,
        SaleState.OVERRIDDEN,
        SaleState.HANDOVER_UNCONFIRMED,
    }
)

# Goods may leave the store only in these states (architecture.md §2, rule 1). After
# HANDOVER_UNCONFIRMED they may still: the payment was verified, only the register's word
# that they left is missing.
HANDOVER_ALLOWED_STATES = frozenset(
    {SaleState.APPROVED, SaleState.OVERRIDDEN, SaleState.HANDOVER_UNCONFIRMED}
)
# Final states in which the goods may already have left the store.
GOODS_RELEASED_STATES = frozenset(
    {SaleState.HANDED_OVER, SaleState.OVERRIDDEN, SaleState.HANDOVER_UNCONFIRMED}
)


# Goods may have left the store, or may leave now: an approval or a release stands.
RELEASED_STATES = HANDOVER_ALLOWED_STATES | GOODS_RELEASED_STATES
# Released on a verified approved payment (not by a supervisor).
PAID_STATES = RELEASED_STATES - {SaleState.OVERRIDDEN}
# Closed after a verified approval whose RESULT the register already had.
PAID_FINAL_STATES = PAID_STATES & FINAL_STATES
# Ended without the goods leaving: no payment of theirs may stand approved.
ENDED_UNPAID_STATES = FINAL_STATES - GOODS_RELEASED_STATES
# The register is told "hold: do not hand over" until a payment or a person settles it.
HOLD_STATES = frozenset({SaleState.HELD, SaleState.ESCALATED, SaleState.BLOCKED})
# Held because the payment could not be verified yet (not because of a fraud alert).
UNVERIFIED_HOLD_STATES = HOLD_STATES - {SaleState.BLOCKED}
# The intent ended with a payment: /v1/payments is being asked about it.
VERIFYING_STATES = frozenset({SaleState.VERIFYING, *UNVERIFIED_HOLD_STATES})
# A create attempt is journaled and no intent id is known yet.
CREATING_STATES = frozenset({SaleState.CREATING, SaleState.CREATE_UNKNOWN})
# An intent exists and is not over.
LIVE_INTENT_STATES = frozenset(
    {SaleState.OPEN, SaleState.ON_TERMINAL, SaleState.PROCESSING, SaleState.CANCELING}
)
# The sale may have, or be about to have, a live intent on its terminal.
TERMINAL_HOLDING_STATES = frozenset({SaleState.REQUESTED, *CREATING_STATES, *LIVE_INTENT_STATES})
# A supervisor's override is accepted: the sale cannot settle without the API or a person.
OVERRIDABLE_STATES = frozenset(
    {SaleState.CREATE_UNKNOWN, *VERIFYING_STATES, SaleState.BLOCKED}
)
# A refund may be asked of these sales (their payment was verified or a supervisor released).
REFUNDABLE_SALE_STATES = RELEASED_STATES


class RefundStatus(StrEnum):
    """Where one refund stands; the last three never change."""

    SENDING = "sending"  # key journaled; the first call is in flight
    UNKNOWN = "unknown"  # a call may have reached Mercado Pago: resent with the same key
    PENDING = "pending"  # Mercado Pago has it (a refund intent waits on the terminal)
    REFUNDED = "refunded"  # final: the money went back
    FAILED = "failed"  # final: Mercado Pago refused or failed it; nothing was refunded
    REFUSED = "refused"  # final: refused by the daemon before anything was sent


FINAL_REFUND_STATUSES = frozenset(
    {RefundStatus.REFUNDED, RefundStatus.FAILED, RefundStatus.REFUSED}
)
# Refunds counted against the payment: done, or possibly about to be.
COMMITTED_REFUND_STATUSES = frozenset(
    {RefundStatus.SENDING, RefundStatus.UNKNOWN, RefundStatus.PENDING, RefundStatus.REFUNDED}
)


class Refusal(StrEnum):
    """Why a sale request was refused before anything was sent to Mercado Pago."""

    LANE_BUSY = "lane_busy"  # this lane already has a sale in progress
    TERMINAL_UNKNOWN = "terminal_unknown"  # no cloud device is known for this lane
    TERMINAL_NOT_CONNECTED = "terminal_not_connected"  # the lane's terminal is unplugged
    TERMINAL_NOT_PDV = "terminal_not_pdv"  # the terminal is not in integrated (PDV) mode
    TERMINAL_BUSY = "terminal_busy"  # the terminal already has a live intent
    CLOUD_UNAVAILABLE = "cloud_unavailable"  # Mercado Pago cannot be reached
    AMOUNT_OUT_OF_RANGE = "amount_out_of_range"  # outside the site's limits
    INVALID_REQUEST = "invalid_request"  # malformed or unknown sale


class Admission(StrEnum):
    """How the core answered a register's SALE (the register session translates it)."""

    ADMITTED = "admitted"  # a new sale: its create is being sent
    REFUSED = "refused"  # a new sale, refused before anything reached Mercado Pago
    REPEATED = "repeated"  # the same purchase asked again: its standing is told again
    ID_REUSED = "id_reused"  # the correlation id names another purchase: nothing started


class LaneCondition(StrEnum):
    """A lane's standing when no sale is in progress (shown before the cashier tries)."""

    READY = "ready"
    CARD_PAYMENTS_UNAVAILABLE = "card_payments_unavailable"  # cloud unreachable
    TERMINAL_NOT_CONNECTED = "terminal_not_connected"
    TERMINAL_NOT_PDV = "terminal_not_pdv"
    TERMINAL_UNKNOWN = "terminal_unknown"
