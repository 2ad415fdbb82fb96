"""The core's records: one sale, one refund, and the immutable state that holds them all.

These are values only: which event changes which field is the business of the tables
(``pointd.core.machine`` for sales, ``pointd.core.refunds`` for refunds), and their JSON
form that of ``pointd.core.snapshot``. Both kinds of record keep their pending timers the
same way, as ``(kind, due)`` pairs, because one timer effect serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pointd.core.events import (
    OverrideDecision,
    RefundRefusal,
    TimerKind,
)
from pointd.core.persistent import PersistentMap
from pointd.core.reference import STORE_ID_PATTERN
from pointd.core.states import (
    COMMITTED_REFUND_STATUSES,
    FINAL_REFUND_STATUSES,
    FINAL_STATES,
    HANDOVER_ALLOWED_STATES,
    IntentState,
    RefundStatus,
    Refusal,
    SaleState,
)

Timers = tuple[tuple[TimerKind, float], ...]


def due(timers: Timers, kind: TimerKind) -> float | None:
    """When the timer of this kind is due, or None if it is not pending."""
    return next((at for pending, at in timers if pending is kind), None)


@dataclass(frozen=True, slots=True)
class Override:
    """A supervisor's journaled decision on one sale."""

    decision: OverrideDecision
    reason: str
    uid: int
    at: float


@dataclass(frozen=True, slots=True)
class Sale:
    """Everything the core knows about one sale."""

    sale_id: str
    lane: int
    correlation_id: str
    amount_cents: int
    terminal_id: str
    state: SaleState
    requested_at: float
    updated_at: float
    refusal: Refusal | None = None
    attempt: int = 0  # current create attempt (0: none was ever made)
    reference: str | None = None  # the current attempt's external_reference
    attempt_started_at: float = 0.0
    sends: int = 0  # sends of the current attempt (more than one only after CreateNotSent)
    not_found_attempts: tuple[int, ...] = ()  # attempts reconciliation proved absent
    intent_id: str | None = None
    intent_state: IntentState | None = None
    payment_id: str | None = None
    approved_payment_id: str | None = None  # set only by a RELEASE verdict of the gate
    verify_round: int = 0
    verify_started_at: float | None = None
    reconcile_round: int = 0
    cancel_requested: bool = False
    # Left APPROVED other than by handover: the register must hear the approval withdrawn.
    approval_withdrawn: bool = False
    override: Override | None = None
    detail: str = ""  # the last reason worth showing a technician
    timers: Timers = ()  # pending timers and their due times

    @property
    def is_final(self) -> bool:
        """True once the sale can never change again."""
        return self.state in FINAL_STATES

    @property
    def may_hand_over(self) -> bool:
        """True when the goods may leave: verified approved payment or supervisor release."""
        if self.state not in HANDOVER_ALLOWED_STATES and self.state is not SaleState.HANDED_OVER:
            return False
        if self.approved_payment_id is not None:
            return True
        return self.override is not None and self.override.decision is OverrideDecision.RELEASE

    def timer_due(self, kind: TimerKind) -> float | None:
        """When this sale's timer of this kind is due, or None if not pending."""
        return due(self.timers, kind)


@dataclass(frozen=True, slots=True)
class Refund:
    """Everything the daemon knows about one refund."""

    refund_id: str
    request_key: str
    correlation_id: str
    sale_id: str
    requested_cents: int | None  # as asked (None: all that was left)
    amount_cents: int  # what is (or would have been) refunded; 0 when refused unresolved
    status: RefundStatus
    by: str
    uid: int | None
    requested_at: float
    updated_at: float
    lane: int | None = None
    sale_correlation_id: str | None = None
    terminal_id: str = ""
    intent_id: str | None = None
    payment_id: str | None = None
    paid_cents: int = 0
    idempotency_key: str | None = None
    sends: int = 0
    cloud_refund_id: str | None = None
    via: str | None = None
    refusal: RefundRefusal | None = None
    detail: str = ""
    timers: Timers = ()  # at most the REFUND timer: resend or poll

    @property
    def is_final(self) -> bool:
        """True once the refund can never change again."""
        return self.status in FINAL_REFUND_STATUSES

    def timer_due(self, kind: TimerKind = TimerKind.REFUND) -> float | None:
        """When the refund's timer is due, or None if none is pending."""
        return due(self.timers, kind)


@dataclass(frozen=True, slots=True)
class RefundBook:
    """Every refund, by id, and the indexes admission reads."""

    refunds: PersistentMap[str, Refund] = field(default_factory=PersistentMap)
    by_request: PersistentMap[str, str] = field(default_factory=PersistentMap)
    by_sale: PersistentMap[str, tuple[str, ...]] = field(default_factory=PersistentMap)

    def of_sale(self, sale_id: str) -> tuple[Refund, ...]:
        """The sale's refunds, oldest first."""
        return tuple(self.refunds[r] for r in self.by_sale.get(sale_id, ()))

    def committed_cents(self, sale_id: str) -> int:
        """Cents of the sale's refunds that are done or may still happen."""
        return sum(r.amount_cents for r in self.of_sale(sale_id)
                   if r.status in COMMITTED_REFUND_STATUSES)

    def refunded_cents(self, sale_id: str) -> int:
        """Cents of the sale's refunds known to be done."""
        return sum(r.amount_cents for r in self.of_sale(sale_id)
                   if r.status is RefundStatus.REFUNDED)

    def unfinished(self) -> tuple[Refund, ...]:
        """Refunds not yet final, in id order."""
        return tuple(sorted((r for r in self.refunds.values() if not r.is_final),
                            key=lambda r: r.refund_id))


def request_key(lane: int, correlation_id: str) -> str:
    """The key of ``CoreState.requests``: a register's correlation id on its lane."""
    return f"{lane}:{correlation_id}"


@dataclass(frozen=True, slots=True)
class CoreState:
    """All sales and refunds, and the indexes that keep one sale per lane and per terminal."""

    store_id: str
    sales: PersistentMap[str, Sale] = field(default_factory=PersistentMap)
    lanes: PersistentMap[int, str] = field(default_factory=PersistentMap)  # lane → sale
    terminals: PersistentMap[str, str] = field(default_factory=PersistentMap)  # → sale
    intents: PersistentMap[str, str] = field(default_factory=PersistentMap)  # intent → sale
    payments: PersistentMap[str, str] = field(default_factory=PersistentMap)  # → sale
    fraud_alerts: frozenset[str] = frozenset()  # payment ids named by fraud alerts
    overrides: PersistentMap[str, Override] = field(default_factory=PersistentMap)
    # The greatest sale id ever forgotten: ids at or below it are never admitted again.
    forgotten_through: str = ""
    refunds: RefundBook = field(default_factory=RefundBook)
    # request_key(lane, correlation id) → the newest sale the register asked for under it.
    # Derived from ``sales`` (a snapshot does not store it).
    requests: PersistentMap[str, str] = field(default_factory=PersistentMap)

    @classmethod
    def empty(cls, store_id: str) -> CoreState:
        """A state with no sales, for a store id valid in external references."""
        if not STORE_ID_PATTERN.fullmatch(store_id):
            raise ValueError(f"store id {store_id!r} must be 1-20 of [a-z0-9-]")
        return cls(store_id=store_id)

    def sale_on_lane(self, lane: int) -> Sale | None:
        """The lane's unfinished sale, if any."""
        sale_id = self.lanes.get(lane)
        return None if sale_id is None else self.sales[sale_id]

    def sale_of_request(self, lane: int, correlation_id: str) -> Sale | None:
        """The newest sale this lane's register asked for under this correlation id."""
        sale_id = self.requests.get(request_key(lane, correlation_id))
        return None if sale_id is None else self.sales[sale_id]

    def unfinished(self) -> tuple[Sale, ...]:
        """Every sale not yet in a final state, in sale-id order."""
        return tuple(sorted((s for s in self.sales.values() if not s.is_final),
                            key=lambda s: s.sale_id))

    def to_json(self) -> str:
        """The snapshot JSON of this state (``pointd.core.snapshot.encode``)."""
        from pointd.core import snapshot  # noqa: PLC0415 - the codec reads these records

        return snapshot.encode(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> CoreState:
        """The state a snapshot holds (``pointd.core.snapshot.decode``)."""
        from pointd.core import snapshot  # noqa: PLC0415 - the codec reads these records

        return snapshot.decode(text).state


def newest_sale_per_request(sales: PersistentMap[str, Sale]) -> PersistentMap[str, str]:
    """The ``requests`` index that these sales imply."""
    newest: dict[str, Sale] = {}
    for sale in sales.values():
        key = request_key(sale.lane, sale.correlation_id)
        known = newest.get(key)
        if known is None or (sale.requested_at, sale.sale_id) > (known.requested_at,
                                                                  known.sale_id):
            newest[key] = sale
    return PersistentMap({key: sale.sale_id for key, sale in newest.items()})
