"""The site's tunable decision parameters the state machine reads (built from the config)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pointd.core.errors import PolicyError

_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class Policy:
    """Limits, identities and timings for one store; every duration is in seconds.

    The defaults are starting points justified below; a site tunes them in its config.
    """

    currency: str  # the only currency a payment may carry (ARS, BRL, MXN)
    collector_id: str  # this account's Mercado Pago user id: a payment must belong to it
    min_amount_cents: int  # site limit (mercadopago-api.md §5)
    max_amount_cents: int
    # Notifications normally arrive within seconds; silence this long means fetch instead.
    # GET intent is limited to 1 request/s per the API docs, so never poll faster than that.
    poll_fallback_after: float = 15.0
    # /v1/payments may lag the terminal by seconds; start soon, back off to once a minute.
    verify_initial_backoff: float = 2.0
    verify_max_backoff: float = 60.0
    # A cashier holding goods for more than three minutes needs a supervisor.
    confirmation_escalate_after: float = 180.0
    # Mercado Pago abandons an untouched intent after 15 minutes; ask one minute later.
    abandon_after: float = 960.0
    # Reconciliation rounds for an unknown create before a technician is alerted.
    create_reconcile_attempts: int = 5
    reconcile_initial_backoff: float = 5.0
    reconcile_max_backoff: float = 120.0
    # A create that provably was not sent is resent this long after, this many times.
    create_retry_after: float = 3.0
    max_create_sends: int = 3
    # New attempts (new external_reference) after reconciliation proved non-existence.
    max_create_attempts: int = 3
    # Whether a payment above the sale's amount (a tip added on the terminal) releases.
    tips_allowed: bool = False
    # An approved sale keeps its lane until the register's HANDOVER_DONE, at most this long:
    # a register confirms within seconds of handing over; two minutes cover bagging and a
    # receipt. Then the sale is closed unconfirmed and a technician is alerted.
    handover_confirm_after: float = 120.0
    # A SALE repeating the correlation id and amount of a sale that ended less than this
    # long ago is a retry (the register lost the RESULT); later it is a reused id. Longer
    # than the register's 20-minute SALE_RESULT_TIMEOUT plus a reboot.
    sale_retry_window: float = 3600.0

    def __post_init__(self) -> None:
        if not _CURRENCY.fullmatch(self.currency):
            raise PolicyError(f"currency {self.currency!r} must be three upper-case letters")
        if not self.collector_id.strip():
            raise PolicyError("collector_id must not be empty")
        for name in ("min_amount_cents", "max_amount_cents", "create_reconcile_attempts",
                     "max_create_sends", "max_create_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PolicyError(f"{name} must be a positive integer")
        if self.min_amount_cents > self.max_amount_cents:
            raise PolicyError("min_amount_cents must not exceed max_amount_cents")
        if not isinstance(self.tips_allowed, bool):
            raise PolicyError("tips_allowed must be true or false")
        if self.max_create_attempts > 99:
            raise PolicyError("max_create_attempts must be at most 99 (external_reference)")
        for name in ("poll_fallback_after", "verify_initial_backoff", "verify_max_backoff",
                     "confirmation_escalate_after", "abandon_after", "reconcile_initial_backoff",
                     "reconcile_max_backoff", "create_retry_after", "handover_confirm_after",
                     "sale_retry_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PolicyError(f"{name} must be a number of seconds")
            if not math.isfinite(value) or value <= 0:
                raise PolicyError(f"{name} must be a positive number of seconds")
        if self.verify_initial_backoff > self.verify_max_backoff:
            raise PolicyError("verify_initial_backoff must not exceed verify_max_backoff")
        if self.reconcile_initial_backoff > self.reconcile_max_backoff:
            raise PolicyError("reconcile_initial_backoff must not exceed reconcile_max_backoff")

    def as_dict(self) -> dict[str, Any]:
        """The policy as plain JSON-able values (the journal records it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Policy:
        """Rebuild a policy recorded with as_dict; raise PolicyError when malformed."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise PolicyError(f"unknown policy fields {unknown}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise PolicyError(str(exc)) from None


def backoff(initial: float, maximum: float, round_number: int) -> float:
    """Delay before round ``round_number`` (0-based): doubling from initial, capped."""
    return min(maximum, initial * 2.0 ** min(round_number, 60))
