"""The external_reference format: one unique, routable name per create attempt.

Every create attempt (payment intent or order) carries an ``external_reference`` that is
journaled before the call. It embeds the store and lane so that the relay can route the
intent's notifications to the right store without any other lookup, and the sale and
attempt so that reconciliation after an unknown outcome can find exactly this attempt.

Format (version 1)::

    pd1_<store>_<lane>_<sale>_<attempt>

- ``store``: 1-20 characters of ``[a-z0-9-]`` (the store id from the configuration);
- ``lane``: 1-999, decimal, no leading zeros;
- ``sale``: 1-26 characters of ``[A-Z0-9]`` (the daemon's sale id);
- ``attempt``: 1-99, decimal, no leading zeros.

The longest reference is 4 + 20 + 1 + 3 + 1 + 26 + 1 + 2 + 3 underscores = 58 characters,
within Mercado Pago's limit of 64 characters of letters, digits, ``-`` and ``_``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "pd1"
MAX_LENGTH = 64
STORE_ID_PATTERN = re.compile(r"[a-z0-9-]{1,20}")
SALE_ID_PATTERN = re.compile(r"[A-Z0-9]{1,26}")
MAX_LANE = 999
MAX_ATTEMPT = 99

_REFERENCE = re.compile(
    r"pd1_(?P<store>[a-z0-9-]{1,20})_(?P<lane>[1-9][0-9]{0,2})"
    r"_(?P<sale>[A-Z0-9]{1,26})_(?P<attempt>[1-9][0-9]?)"
)


class ExternalReferenceError(ValueError):
    """A value cannot be, or is not, a version-1 external_reference."""


@dataclass(frozen=True, slots=True)
class ExternalReference:
    """The parts of one create attempt's external_reference."""

    store: str
    lane: int
    sale: str
    attempt: int

    def __post_init__(self) -> None:
        if not STORE_ID_PATTERN.fullmatch(self.store):
            raise ExternalReferenceError(f"store id {self.store!r} must be 1-20 of [a-z0-9-]")
        if not 1 <= self.lane <= MAX_LANE:
            raise ExternalReferenceError(f"lane {self.lane} must be 1-{MAX_LANE}")
        if not SALE_ID_PATTERN.fullmatch(self.sale):
            raise ExternalReferenceError(f"sale id {self.sale!r} must be 1-26 of [A-Z0-9]")
        if not 1 <= self.attempt <= MAX_ATTEMPT:
            raise ExternalReferenceError(f"attempt {self.attempt} must be 1-{MAX_ATTEMPT}")

    def __str__(self) -> str:
        return f"{PREFIX}_{self.store}_{self.lane}_{self.sale}_{self.attempt}"

    @classmethod
    def parse(cls, text: str) -> ExternalReference:
        """Parse a reference; raise ExternalReferenceError if it is not one of ours."""
        match = _REFERENCE.fullmatch(text)
        if match is None:
            raise ExternalReferenceError(f"not a pointd external_reference: {text[:80]!r}")
        return cls(
            store=match["store"],
            lane=int(match["lane"]),
            sale=match["sale"],
            attempt=int(match["attempt"]),
        )


def store_of(text: str) -> str | None:
    """The store id embedded in a reference, or None when it is not one of ours."""
    try:
        return ExternalReference.parse(text).store
    except ExternalReferenceError:
        return None
