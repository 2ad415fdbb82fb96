"""The money-safety rules (architecture.md §2) checked against what really happened in a chaos run.

Theory of operation
-------------------
A chaos run leaves four independent accounts of the same sales, and each rule is checked by
setting one against another, never against pointd's own opinion of itself:

* the cloud simulator's record (``GET /_sim/record``): every intent ever created, every
  payment and its status, every webhook attempt and how it was answered — what Mercado Pago
  would really have done;
* the daemon's journal, read after the daemon stopped: each sale's state, amount and
  payment id, and which relayed notifications were journaled;
* the relay's store stream, read through the store delivery API: what the relay stored;
* the register emulators' own notes: what each cashier was told.

``check`` is pure: it takes those accounts as plain data and returns the violations, so the
tests can hand it doctored accounts and prove that each rule catches what it must.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pointd.core.reference import ExternalReference, ExternalReferenceError
from pointd.core.states import FINAL_STATES, SaleState

# Where goods may have left (or may now leave) the store.
RELEASED = frozenset({SaleState.APPROVED, SaleState.HANDED_OVER,
                      SaleState.HANDOVER_UNCONFIRMED})
# The states that keep goods at the checkout and show it, which a run may end in.
VISIBLY_HELD = frozenset({SaleState.HELD, SaleState.ESCALATED, SaleState.BLOCKED})
# What the register must have been told for each final journal state.
REGISTER_OUTCOME = {
    SaleState.HANDED_OVER: "approved",
    SaleState.OVERRIDDEN: "approved",
    SaleState.HANDOVER_UNCONFIRMED: "approved",
    SaleState.APPROVED: "approved",
    SaleState.DECLINED: "declined",
    SaleState.CANCELED: "canceled",
    SaleState.FAILED: "error",
    SaleState.ABANDONED: "abandoned",
}
CANARY_KIND = "canary"

RULES = (
    "handover_unverified",  # rule 1: goods released without a verified approved payment
    "charged_twice",  # rule 3: more than one approved payment for one sale
    "paid_not_honoured",  # an approved payment whose sale ended without the goods
    "unjournaled_intent",  # write-ahead: an intent at Mercado Pago the journal never knew
    "unfinished",  # a sale neither finished nor visibly held
    "notification_lost_at_relay",  # rule 5: answered 2xx but not in the relay's store
    "notification_not_journaled",  # rule 5: in the store's stream but not in the journal
    "register_disagrees",  # the cashier was told something the journal does not say
)


@dataclass(frozen=True, slots=True)
class JournalSale:
    """One sale as the daemon's journal ends it."""

    sale_id: str
    lane: int
    correlation_id: str
    state: SaleState
    amount_cents: int
    payment_id: str | None
    terminal_id: str
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class RelayEventView:
    """One event of the store's relay stream: its identity and the notification it holds."""

    event_id: int
    kind: str
    data_id: str | None
    state: str | None


@dataclass(frozen=True, slots=True)
class RegisterView:
    """What one register was told about one of its sales."""

    correlation_id: str
    lane: int
    amount_cents: int
    # The final outcome it learned (RESULT or a final STATUS), None if it never learned one.
    outcome: str | None
    # HANDOVER_REPLY.allowed, None when it never asked.
    handover_allowed: bool | None = None


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything a run left behind, as plain data."""

    store_id: str
    sim_record: Mapping[str, Any]
    journal_sales: Sequence[JournalSale]
    relay_events: Sequence[RelayEventView]
    journaled_relay_ids: frozenset[int]
    register: Sequence[RegisterView] = ()


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule, with the sale or notification it concerns."""

    rule: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.subject}: {self.detail}"


@dataclass
class Checked:
    """How much each rule looked at, so a run that checked nothing cannot pass silently."""

    released_sales: int = 0
    approved_payments: int = 0
    sim_intents: int = 0
    journal_sales: int = 0
    answered_webhooks: int = 0
    relay_events: int = 0
    register_sales: int = 0
    violations: list[Violation] = field(default_factory=list)


def _sale_of(reference: object, store_id: str) -> str | None:
    if not isinstance(reference, str):
        return None
    try:
        parsed = ExternalReference.parse(reference)
    except ExternalReferenceError:
        return None
    return parsed.sale if parsed.store == store_id else None


def check(evidence: Evidence) -> Checked:
    """Every violation of the rules the evidence shows, and what was looked at."""
    checked = Checked()
    sales = {sale.sale_id: sale for sale in evidence.journal_sales}
    payments = {str(p["id"]): p for p in evidence.sim_record.get("payments", [])}
    checked.journal_sales = len(sales)
    _check_releases(evidence, sales, payments, checked)
    _check_payments(evidence, sales, checked)
    _check_intents(evidence, sales, checked)
    _check_finished(evidence, checked)
    _check_notifications(evidence, checked)
    _check_register(evidence, checked)
    return checked


def _check_releases(
    evidence: Evidence,
    sales: Mapping[str, JournalSale],
    payments: Mapping[str, Mapping[str, Any]],
    checked: Checked,
) -> None:
    for sale in sales.values():
        if sale.state not in RELEASED:
            continue
        checked.released_sales += 1
        subject = f"sale {sale.sale_id} (lane {sale.lane}, {sale.state.value})"
        payment = payments.get(sale.payment_id or "")
        if payment is None:
            problem = f"no payment {sale.payment_id!r} exists at Mercado Pago"
        elif payment.get("status") != "approved":
            problem = f"payment {payment['id']} is {payment.get('status')}"
        elif payment.get("amount") != sale.amount_cents:
            problem = (f"payment {payment['id']} is {payment.get('amount')} cents, "
                       f"the sale {sale.amount_cents}")
        elif _sale_of(payment.get("external_reference"), evidence.store_id) != sale.sale_id:
            problem = f"payment {payment['id']} belongs to {payment.get('external_reference')!r}"
        elif payment.get("device_id") != sale.terminal_id:
            problem = f"payment {payment['id']} was taken on {payment.get('device_id')}"
        else:
            continue
        checked.violations.append(Violation("handover_unverified", subject, problem))


def _check_payments(
    evidence: Evidence, sales: Mapping[str, JournalSale], checked: Checked
) -> None:
    by_sale: dict[str, list[str]] = defaultdict(list)
    by_register_sale: dict[tuple[int, str], list[str]] = defaultdict(list)
    for payment in evidence.sim_record.get("payments", []):
        if payment.get("status") != "approved":
            continue
        checked.approved_payments += 1
        sale_id = _sale_of(payment.get("external_reference"), evidence.store_id)
        if sale_id is None:
            continue
        by_sale[sale_id].append(str(payment["id"]))
        sale = sales.get(sale_id)
        if sale is None:
            continue  # reported by _check_intents: the journal never knew this sale
        by_register_sale[(sale.lane, sale.correlation_id)].append(str(payment["id"]))
        if sale.state not in RELEASED | VISIBLY_HELD | {SaleState.OVERRIDDEN}:
            checked.violations.append(
                Violation(
                    "paid_not_honoured",
                    f"sale {sale_id} (lane {sale.lane})",
                    f"payment {payment['id']} is approved but the sale ended {sale.state.value}",
                )
            )
    for sale_id, ids in by_sale.items():
        if len(ids) > 1:
            checked.violations.append(
                Violation("charged_twice", f"sale {sale_id}", f"approved payments {ids}")
            )
    for (lane, correlation_id), ids in by_register_sale.items():
        if len(ids) > 1 and len({_sale_of_payment(evidence, i) for i in ids}) > 1:
            checked.violations.append(
                Violation(
                    "charged_twice",
                    f"register sale {correlation_id} (lane {lane})",
                    f"approved payments {ids} under different sale ids",
                )
            )


def _sale_of_payment(evidence: Evidence, payment_id: str) -> str | None:
    for payment in evidence.sim_record.get("payments", []):
        if str(payment["id"]) == payment_id:
            return _sale_of(payment.get("external_reference"), evidence.store_id)
    return None


def _check_intents(
    evidence: Evidence, sales: Mapping[str, JournalSale], checked: Checked
) -> None:
    for intent in evidence.sim_record.get("intents", []):
        checked.sim_intents += 1
        sale_id = _sale_of(intent.get("external_reference"), evidence.store_id)
        if sale_id is not None and sale_id not in sales:
            checked.violations.append(
                Violation(
                    "unjournaled_intent",
                    f"intent {intent['id']}",
                    f"created for sale {sale_id}, which the journal does not know",
                )
            )


def _check_finished(evidence: Evidence, checked: Checked) -> None:
    for sale in evidence.journal_sales:
        if sale.state in FINAL_STATES or sale.state in VISIBLY_HELD:
            continue
        checked.violations.append(
            Violation(
                "unfinished",
                f"sale {sale.sale_id} (lane {sale.lane})",
                f"left {sale.state.value}: neither finished nor held",
            )
        )


def _check_notifications(evidence: Evidence, checked: Checked) -> None:
    stored: set[tuple[str | None, str | None]] = {
        (event.data_id, event.state) for event in evidence.relay_events
    }
    answered: set[tuple[str, str]] = set()
    for attempt in evidence.sim_record.get("webhooks", []):
        status = attempt.get("status_code")
        if status is None or not 200 <= status < 300:
            continue
        answered.add((str(attempt["data_id"]), str(attempt["state"])))
    checked.answered_webhooks = len(answered)
    for data_id, state in sorted(answered):
        if (data_id, state) not in stored:
            checked.violations.append(
                Violation(
                    "notification_lost_at_relay",
                    f"intent {data_id} {state}",
                    "the relay answered 2xx but its store stream does not hold it",
                )
            )
    for event in evidence.relay_events:
        if event.kind == CANARY_KIND:
            continue
        checked.relay_events += 1
        if event.event_id not in evidence.journaled_relay_ids:
            checked.violations.append(
                Violation(
                    "notification_not_journaled",
                    f"relay event {event.event_id} ({event.data_id} {event.state})",
                    "delivered to the store but never journaled by the daemon",
                )
            )


def _check_register(evidence: Evidence, checked: Checked) -> None:
    by_key = {(s.lane, s.correlation_id): s for s in evidence.journal_sales}
    for view in evidence.register:
        checked.register_sales += 1
        sale = by_key.get((view.lane, view.correlation_id))
        subject = f"register sale {view.correlation_id} (lane {view.lane})"
        if sale is None:
            if view.outcome not in (None, "refused"):
                checked.violations.append(
                    Violation("register_disagrees", subject,
                              f"told {view.outcome}, but the journal has no such sale")
                )
            elif view.outcome is None:
                checked.violations.append(
                    Violation("unfinished", subject, "no outcome and unknown to the journal")
                )
            continue
        told_release = view.outcome == "approved" or view.handover_allowed is True
        if told_release and sale.state not in RELEASED | {SaleState.OVERRIDDEN}:
            checked.violations.append(
                Violation("register_disagrees", subject,
                          f"told approved / handover allowed, journal says {sale.state.value}")
            )
            continue
        if view.outcome is None:
            if sale.state not in VISIBLY_HELD:
                checked.violations.append(
                    Violation("unfinished", subject,
                              f"never told an outcome; the journal says {sale.state.value}")
                )
            continue
        if view.outcome == "refused":
            if sale.refusal is None and sale.state not in {SaleState.FAILED}:
                checked.violations.append(
                    Violation("register_disagrees", subject,
                              f"told refused, journal says {sale.state.value}")
                )
            continue
        expected = REGISTER_OUTCOME.get(sale.state)
        if expected is not None and expected != view.outcome:
            checked.violations.append(
                Violation("register_disagrees", subject,
                          f"told {view.outcome}, journal says {sale.state.value}")
            )


def count_by_rule(violations: Iterable[Violation]) -> dict[str, int]:
    """Violations per rule, every rule listed (zero included)."""
    counts = dict.fromkeys(RULES, 0)
    for violation in violations:
        counts[violation.rule] = counts.get(violation.rule, 0) + 1
    return counts
