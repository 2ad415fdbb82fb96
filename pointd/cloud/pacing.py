"""Retry back-off for reads and the one-request-per-second pace of intent GETs.

Both are pure: the current time and a random draw are arguments, so tests drive them
with a fake clock and a fixed random source.

Back-off is "full jitter": the wait before retry ``n`` (0-based) is uniform in
``[0, min(cap, base * 2**n))``, which spreads the retries of many lanes that failed at
the same moment. A 429 overrides it with the server's ``Retry-After`` (bounded so a
hostile or broken header cannot park a lane for hours).

Mercado Pago limits ``GET /payment-intents/{id}`` to one request per second per intent
(mercadopago-api.md §1.0). ``IntentGetPacer`` hands out send slots at least
``min_interval`` apart for each intent id; callers sleep until their slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# The first retry comes quickly; a GET that failed once usually succeeds right away.
BACKOFF_BASE = 0.5
# Beyond 8 s a cashier is better served by an error than by more waiting.
BACKOFF_CAP = 8.0
# Longest Retry-After we honour; longer answers are treated as this long.
MAX_RETRY_AFTER = 60.0
# Retry-After missing or unreadable: wait one second, Mercado Pago's documented pace.
DEFAULT_RETRY_AFTER = 1.0
# Mercado Pago's documented limit for GET payment intent: 1 request/second.
INTENT_GET_INTERVAL = 1.0


def backoff_delay(
    attempt: int, draw: float, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP
) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based), given ``draw`` in [0, 1)."""
    return draw * min(cap, base * 2.0**attempt)


def retry_after_seconds(header: str | None) -> float:
    """The wait a 429 asked for, bounded to [0, MAX_RETRY_AFTER]; a default when unreadable."""
    if header is None:
        return DEFAULT_RETRY_AFTER
    try:
        value = float(header.strip())
    except ValueError:
        # HTTP-date form: not used by Mercado Pago; fall back to the documented pace.
        return DEFAULT_RETRY_AFTER
    if not math.isfinite(value) or value < 0:
        return DEFAULT_RETRY_AFTER
    return min(value, MAX_RETRY_AFTER)


@dataclass
class IntentGetPacer:
    """Send slots for intent GETs, at least ``min_interval`` apart per intent id."""

    min_interval: float = INTENT_GET_INTERVAL
    _next_slot: dict[str, float] = field(default_factory=dict)

    def reserve(self, intent_id: str, now: float) -> float:
        """Take the next slot for ``intent_id``; return how long to wait for it (>= 0)."""
        self._forget_before(now)
        slot = max(now, self._next_slot.get(intent_id, now))
        self._next_slot[intent_id] = slot + self.min_interval
        return slot - now

    def _forget_before(self, now: float) -> None:
        # Slots in the past constrain nothing; dropping them keeps memory bounded.
        for key in [k for k, t in self._next_slot.items() if t <= now]:
            del self._next_slot[key]

    def __len__(self) -> int:
        return len(self._next_slot)
