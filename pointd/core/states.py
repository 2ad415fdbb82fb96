"""The vocabulary the core shares with the register prompts and the technician's views.

These enums are the contract between the pure core (which decides), the register layer
(which maps every value one to one onto a cashier prompt) and the control socket (which
shows them). A new value here needs a prompt in every language of the catalogue; a test
of the catalogue enforces that.
"""

from __future__ import annotations

from enum import StrEnum


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


class LaneCondition(StrEnum):
    """A lane's standing when no sale is in progress (shown before the cashier tries)."""

    READY = "ready"
    CARD_PAYMENTS_UNAVAILABLE = "card_payments_unavailable"  # cloud unreachable
    TERMINAL_NOT_CONNECTED = "terminal_not_connected"
    TERMINAL_NOT_PDV = "terminal_not_pdv"
    TERMINAL_UNKNOWN = "terminal_unknown"
