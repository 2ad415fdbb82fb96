"""Typed, immutable views of Mercado Pago's Point and Payments JSON, parsed tolerantly.

Theory of operation. Mercado Pago's documents disagree with each other on small things
(mercadopago-api.md §5 gotcha 4): ``payment.id`` is an int in schemas and a string in
examples, ``store_id`` is either, create answers 200 or 201, and fields appear that no
document lists. Every ``from_json`` here therefore:

- ignores unknown fields;
- gives None for a missing optional field;
- normalises ids to ``str`` and intent states to upper case;
- raises ``ModelError`` only when a field we cannot do without is missing or unusable.

Money: intents carry integer cents; ``/v1/payments`` carries a float in major units,
which is read through ``Decimal(str(x))`` so that 15.1 becomes exactly 1510 cents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Self

# One vocabulary for intent states: the core's.
from pointd.core.states import FINAL_INTENT_STATES

JSON = Mapping[str, Any]


class ModelError(ValueError):
    """A JSON document lacks a field we need, or has it in an unusable form."""


def is_final_state(state: str) -> bool:
    """Whether an intent (or refund intent) state can never change again."""
    return state.upper() in FINAL_INTENT_STATES


def _mapping(value: object) -> JSON:
    return value if isinstance(value, Mapping) else {}


def _required_str(data: JSON, key: str, what: str) -> str:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ModelError(f"{what}: missing or unusable {key!r}")
    return str(value)


def _optional_str(data: JSON, key: str) -> str | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def _optional_int(data: JSON, key: str) -> int | None:
    value = data.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _required_int(data: JSON, key: str, what: str) -> int:
    value = _optional_int(data, key)
    if value is None:
        raise ModelError(f"{what}: missing or non-integer {key!r}")
    return value


def _optional_bool(data: JSON, key: str) -> bool | None:
    value = data.get(key)
    return value if isinstance(value, bool) else None


def decimal_to_cents(value: object) -> int:
    """Exact integer cents of a major-unit amount; ModelError if it has sub-cent digits."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ModelError(f"amount {value!r} is not a number")
    try:
        cents = Decimal(str(value)) * 100
    except InvalidOperation as exc:
        raise ModelError(f"amount {value!r} is not a number") from exc
    if not cents.is_finite() or cents != cents.to_integral_value():
        raise ModelError(f"amount {value!r} is not a whole number of cents")
    return int(cents)


@dataclass(frozen=True, slots=True)
class Device:
    """A Point terminal as ``GET /devices`` lists it."""

    id: str
    pos_id: int | None
    store_id: str | None
    external_pos_id: str | None
    operating_mode: str | None

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse one element of ``devices``."""
        mode = _optional_str(data, "operating_mode")
        return cls(
            id=_required_str(data, "id", "device"),
            pos_id=_optional_int(data, "pos_id"),
            store_id=_optional_str(data, "store_id"),
            external_pos_id=_optional_str(data, "external_pos_id"),
            operating_mode=mode.upper() if mode else None,
        )


@dataclass(frozen=True, slots=True)
class DevicePage:
    """One page of ``GET /devices``."""

    devices: tuple[Device, ...]
    total: int
    offset: int
    limit: int

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse the whole answer; paging defaults to "this page is everything"."""
        raw = data.get("devices")
        if not isinstance(raw, list):
            raise ModelError("device list: missing 'devices' array")
        devices = tuple(Device.from_json(_mapping(item)) for item in raw)
        paging = _mapping(data.get("paging"))
        return cls(
            devices=devices,
            total=_optional_int(paging, "total") or len(devices),
            offset=_optional_int(paging, "offset") or 0,
            limit=_optional_int(paging, "limit") or len(devices),
        )


@dataclass(frozen=True, slots=True)
class PaymentIntent:
    """A payment intent, from create, GET or a notification body."""

    id: str
    device_id: str | None
    amount: int
    state: str | None
    payment_id: str | None
    payment_state: str | None
    payment_type: str | None
    external_reference: str | None
    ticket_number: str | None
    description: str | None

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse a create answer, a GET answer or a ``point_integration_wh`` body."""
        payment = _mapping(data.get("payment"))
        info = _mapping(data.get("additional_info"))
        state = _optional_str(data, "state")
        return cls(
            id=_required_str(data, "id", "payment intent"),
            device_id=_optional_str(data, "device_id"),
            amount=_required_int(data, "amount", "payment intent"),
            state=state.upper() if state else None,
            payment_id=_optional_str(payment, "id"),
            payment_state=_optional_str(payment, "state"),
            payment_type=_optional_str(payment, "type"),
            external_reference=_optional_str(info, "external_reference"),
            ticket_number=_optional_str(info, "ticket_number"),
            description=_optional_str(data, "description"),
        )

    @property
    def is_final(self) -> bool:
        """Whether the intent has reached a state that never changes."""
        return self.state is not None and is_final_state(self.state)


@dataclass(frozen=True, slots=True)
class IntentEvent:
    """One entry of the events endpoints (note: ``status`` here, ``state`` on the intent)."""

    payment_intent_id: str | None
    status: str
    created_on: str | None

    @classmethod
    def from_json(cls, data: JSON, *, payment_intent_id: str | None = None) -> Self:
        """Parse a list entry, or the single-intent answer given the id it was asked for."""
        status = _required_str(data, "status", "intent event")
        return cls(
            payment_intent_id=_optional_str(data, "payment_intent_id") or payment_intent_id,
            status=status.upper(),
            created_on=_optional_str(data, "created_on"),
        )


@dataclass(frozen=True, slots=True)
class Refund:
    """A refund of a payment: an entry of ``refunds`` or a ``/v1/payments/{id}/refunds`` answer."""

    id: str | None
    amount_cents: int | None
    status: str | None = None
    payment_id: str | None = None

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse a refund; an unreadable amount becomes None."""
        try:
            cents: int | None = decimal_to_cents(data.get("amount"))
        except ModelError:
            cents = None
        status = _optional_str(data, "status")
        return cls(
            id=_optional_str(data, "id"),
            amount_cents=cents,
            status=status.lower() if status else None,
            payment_id=_optional_str(data, "payment_id"),
        )


def _refunded_cents(raw: object, entries: tuple[Refund, ...]) -> int:
    # A payment read must never fail over this secondary field: it is also what a
    # handover is verified with. Unreadable → the refunds' sum; sub-cent noise → rounded.
    if isinstance(raw, int | float | str) and not isinstance(raw, bool):
        try:
            value = Decimal(str(raw)) * 100
        except InvalidOperation:
            value = Decimal("NaN")
        if value.is_finite():
            return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return sum(r.amount_cents or 0 for r in entries)


@dataclass(frozen=True, slots=True)
class Payment:
    """A ``/v1/payments`` resource: the only authority on whether money moved."""

    id: str
    status: str
    status_detail: str | None
    transaction_amount: Decimal
    amount_cents: int
    currency_id: str | None
    collector_id: str | None
    external_reference: str | None
    live_mode: bool | None
    last_four_digits: str | None
    refunds: tuple[Refund, ...]
    # transaction_amount_refunded, or the sum of ``refunds`` when that field is absent.
    refunded_cents: int = 0

    @property
    def refundable_cents(self) -> int:
        """What may still be refunded: paid minus already refunded, never negative."""
        return max(0, self.amount_cents - self.refunded_cents)

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse a payment; the amount must be a whole number of cents."""
        raw_amount = data.get("transaction_amount")
        cents = decimal_to_cents(raw_amount)
        status = _required_str(data, "status", "payment")
        card = _mapping(data.get("card"))
        refunds = data.get("refunds")
        collector = _optional_str(data, "collector_id") or _optional_str(
            _mapping(data.get("collector")), "id"
        )
        entries = tuple(
            Refund.from_json(_mapping(item))
            for item in (refunds if isinstance(refunds, list) else [])
        )
        refunded = _refunded_cents(data.get("transaction_amount_refunded"), entries)
        return cls(
            id=_required_str(data, "id", "payment"),
            status=status.lower(),
            status_detail=_optional_str(data, "status_detail"),
            transaction_amount=Decimal(str(raw_amount)),
            amount_cents=cents,
            currency_id=_optional_str(data, "currency_id"),
            collector_id=collector,
            external_reference=_optional_str(data, "external_reference"),
            live_mode=_optional_bool(data, "live_mode"),
            last_four_digits=_optional_str(card, "last_four_digits"),
            refunds=entries,
            refunded_cents=refunded,
        )


@dataclass(frozen=True, slots=True)
class PaymentSearchPage:
    """One page of ``GET /v1/payments/search``."""

    results: tuple[Payment, ...]
    total: int
    offset: int
    limit: int

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse the answer; paging defaults to "this page is everything"."""
        raw = data.get("results")
        if not isinstance(raw, list):
            raise ModelError("payment search: missing 'results' array")
        results = tuple(Payment.from_json(_mapping(item)) for item in raw)
        paging = _mapping(data.get("paging"))
        return cls(
            results=results,
            total=_optional_int(paging, "total") or len(results),
            offset=_optional_int(paging, "offset") or 0,
            limit=_optional_int(paging, "limit") or len(results),
        )


@dataclass(frozen=True, slots=True)
class RefundIntent:
    """A refund intent sent to a terminal (same states as intents minus two)."""

    id: str
    device_id: str | None
    payment_id: str | None
    state: str | None

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse a create or GET answer."""
        state = _optional_str(data, "state")
        return cls(
            id=_required_str(data, "id", "refund intent"),
            device_id=_optional_str(data, "device_id"),
            payment_id=_optional_str(data, "payment_id"),
            state=state.upper() if state else None,
        )


@dataclass(frozen=True, slots=True)
class Integrator:
    """``GET /integrator``: the account's integrator record and device-event channels."""

    id: str | None
    notification_url_enabled: bool | None
    event_channel_devices: tuple[str, ...]
    created_at: str | None
    updated_at: str | None

    @classmethod
    def from_json(cls, data: JSON) -> Self:
        """Parse the answer; a missing channel list is empty."""
        channels = data.get("event_channel_devices")
        return cls(
            id=_optional_str(data, "id"),
            notification_url_enabled=_optional_bool(data, "notification_url_enabled"),
            event_channel_devices=tuple(
                str(c) for c in (channels if isinstance(channels, list) else [])
            ),
            created_at=_optional_str(data, "created_at"),
            updated_at=_optional_str(data, "updated_at"),
        )
