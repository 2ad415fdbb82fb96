"""Relayed notifications become fetches; the only core event one can make is a fraud alert.

Theory of operation
-------------------
A notification is a hint (architecture.md §2, rule 6), and nothing in its body moves a
sale or names its payment: a bare Point intent body, a ``point_integration_wh`` wrapper, an
IPN (``point_integration_ipn``) and an Orders-API ``order`` notification (any ``action``)
all become a fetch of the intent or order they name — the engine asks
``GET payment-intents/{id}`` or ``GET /v1/orders/{id}``, and the core reads the state, the
payment id and the reference from that answer, then verifies the payment with
``/v1/payments/{id}``. The body's ``external_reference`` is passed along only so that the
engine may fetch an intent it does not know yet when the reference is exactly the current
attempt of one of its sales still reconciling a create. Payment topics (``payment``,
chargebacks, claims) become a fetch of a payment one of our sales already has. A fraud
alert (``stop_delivery_op_wh``, or IPN ``delivery_cancellation``) becomes ``FraudAlerted``:
it can only keep goods in the store. Each relayed event is journaled (as the fraud alert,
or as seen) before the relay is acknowledged, and an event already seen is skipped, so a
redelivery after a crash changes nothing. A delivered batch is journaled in one transaction:
the seen keys of every event that became no core event, with the relay cursor the batch
reached (``Journal.record_relay_batch``); a fraud alert is submitted to the engine first, in
its own write-ahead commit, because its effects must follow its own fsync. Hints are acted
on only after the batch's commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from pointd.core.events import Event, FraudAlerted
from pointd.relay.client import RelayEvent

log = structlog.get_logger(__name__)

INTENT_TOPICS = frozenset({"point_integration_wh", "point_integration_ipn"})
PAYMENT_TOPICS = frozenset({"payment", "topic_chargebacks_wh", "topic_claims_integration_wh"})
# Webhooks' fraud alert, and IPN's (seed 003): both name the payment whose goods must stay.
FRAUD_ALERT_TOPICS = frozenset({"stop_delivery_op_wh", "delivery_cancellation"})
ORDER_TOPIC = "order"
# /v1/payments ids are decimal numbers; anything else cannot name a payment of ours.
_MAX_PAYMENT_ID_DIGITS = 20


@dataclass(frozen=True, slots=True)
class Reading:
    """What one relayed notification means to the daemon."""

    events: tuple[Event, ...] = ()
    intent_hints: tuple[str, ...] = ()
    payment_hints: tuple[str, ...] = ()
    # The external_reference the body claims for the intent: a hint about a hint.
    reference: str | None = None
    note: str = ""


class EngineLike(Protocol):
    """The engine calls the notification handler makes."""

    async def submit(self, event: Event, *, notification_key: str | None = None) -> object:
        """Journal and decide one event."""
        ...

    def hint_intent(self, intent_id: str, external_reference: str | None = None) -> bool:
        """Fetch an intent of ours now."""
        ...

    def hint_payment(self, payment_id: str) -> bool:
        """Verify a payment of ours now."""
        ...


class JournalLike(Protocol):
    """The journal calls the notification handler makes."""

    def notification_seen(self, key: str) -> bool:
        """Whether this notification was journaled before."""
        ...

    def record_relay_batch(self, keys: Iterable[str], cursor: int) -> list[bool]:
        """Record notifications that became no core event, and the relay cursor, at once."""
        ...


def read_notification(event: RelayEvent) -> Reading:
    """Interpret one relayed notification (pure)."""
    document = event.document()
    if event.kind == "intent" and isinstance(document, dict):
        return _intent_body(document)
    topic = event.topic or event.query.get("topic") or event.query.get("type")
    data = document.get("data") if isinstance(document, dict) else None
    data = data if isinstance(data, dict) else {}
    resource = _text(data.get("id")) or event.query.get("data.id") or event.query.get("id")
    if topic in FRAUD_ALERT_TOPICS:
        payment_id = _text(data.get("payment_id")) or resource
        if payment_id is None or not _is_payment_id(payment_id):
            return Reading(note=f"fraud alert ({topic}) without a payment id")
        return Reading(events=(FraudAlerted(payment_id=payment_id),))
    if (topic in INTENT_TOPICS or topic == ORDER_TOPIC) and resource:
        return Reading(intent_hints=(resource,), reference=_text(data.get("external_reference")))
    if topic in PAYMENT_TOPICS:
        payment_id = _text(data.get("payment_id")) or resource
        if payment_id:
            return Reading(payment_hints=(payment_id,))
    return Reading(note=f"nothing for the checkout in a {event.kind} notification ({topic})")


def _intent_body(document: dict[str, Any]) -> Reading:
    # Its state and payment are not read at all: the API's answer to the fetch has them.
    intent_id = _text(document.get("id"))
    if intent_id is None:
        return Reading(note="intent notification without an id")
    info = document.get("additional_info")
    info = info if isinstance(info, dict) else {}
    return Reading(intent_hints=(intent_id,), reference=_text(info.get("external_reference")))


def _is_payment_id(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) <= _MAX_PAYMENT_ID_DIGITS


def _text(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    return None


@dataclass
class NotificationHandler:
    """The relay consumer's handler: journal every notification before it is acknowledged."""

    engine: EngineLike
    journal: JournalLike
    counts: dict[str, int] = field(default_factory=dict)

    async def __call__(self, events: Sequence[RelayEvent], cursor: int) -> None:
        """Journal a delivered batch and the relay cursor it reached, then act on its hints.

        A fraud alert is looked up and submitted before the batch's commit (its effects
        follow its own fsync); every other event's key goes into the batch's commit, whose
        INSERT OR IGNORE says which were new: one statement per event instead of a lookup
        and an insert, and only the new ones are counted, logged and acted on."""
        batch: list[tuple[str, RelayEvent, Reading]] = []
        for event in events:
            key = f"relay:{event.id}"
            reading = read_notification(event)
            if not reading.events:
                batch.append((key, event, reading))
                continue
            if self.journal.notification_seen(key):
                self._count("duplicate")
                continue
            self._note(event)
            first, *rest = reading.events
            await self.engine.submit(first, notification_key=key)
            for core_event in rest:
                await self.engine.submit(core_event)
        fresh = self.journal.record_relay_batch([key for key, _event, _reading in batch], cursor)
        for (_key, event, reading), new in zip(batch, fresh, strict=True):
            if not new:
                self._count("duplicate")
                continue
            self._note(event)
            for intent_id in reading.intent_hints:
                self.engine.hint_intent(intent_id, reading.reference)
            for payment_id in reading.payment_hints:
                self.engine.hint_payment(payment_id)

    def _note(self, event: RelayEvent) -> None:
        if event.verified is False:
            log.warning("notification.signature_mismatch", relay_id=event.id, kind=event.kind)
        self._count(event.kind)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
