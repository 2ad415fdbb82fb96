"""The money-safety rules (architecture.md §2) checked against what really happened in a chaos run.

Theory of operation
-------------------
A chaos run leaves four independent accounts of the same sales, and each rule is checked by
setting one against another, never against pointd's own opinion of itself:

* the cloud simulator's record (``GET /_sim/record``): every intent ever created, every
  payment and its status, every webhook attempt and how it was answered — what Mercado Pago
  would really have done;
* the daemon's journal, read after the daemon stopped: each sale's state, amount and
  payment id, which relayed notifications were journaled, and the audit trail of every
  supervisor override;
* the relay's store stream, read through the store delivery API: what the relay stored;
* the registers' own notes: what each cashier asked for and was told, and whether
  an outcome arrived as a RESULT or only in answer to STATUS.

The run also names the terminals pinned to its lanes: every approved charge on them must be
explained by a sale of ours, whatever its reference says.

``check`` is pure: it takes those accounts as plain data and returns the violations, so the
tests can hand it doctored accounts and prove that each rule catches what it must. It reads
nothing with a default: a section or field missing from an account is itself a violation, and
a run passes only when every rule examined at least one case (``Checked.passed``), so a rule
that silently looked at nothing cannot be mistaken for a rule that held.
"""

from __future__ import annotations

from collections import Counter, defaultdict
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
    "evidence_incomplete",  # an account is missing a section or a field: nothing can be judged
    "handover_unverified",  # rule 1: goods released without a verified approved payment
    "charged_other_amount",  # the cloud charged, or the journal asked, other than the register
    "charged_twice",  # rule 3: more than one approved payment for one sale
    "charge_unattributed",  # an approved charge on our terminals that names no sale of ours
    "paid_not_honoured",  # an approved payment whose sale ended without the goods
    "override_unproven",  # a supervisor release without its audit entry or its payment
    "unjournaled_intent",  # write-ahead: an intent at Mercado Pago the journal never knew
    "refused_but_created",  # the register was told "refused" for a sale that reached the cloud
    "unfinished",  # a sale neither finished nor visibly held
    "result_withheld",  # the daemon held an outcome the register was never sent as RESULT
    "notification_lost_at_relay",  # rule 5: answered 2xx but not in the relay's store
    "notification_not_journaled",  # rule 5: in the store's stream but not in the journal
    "register_disagrees",  # the cashier was told something the journal does not say
)

# The simulator record's sections and, for each entry, the fields the rules read.
RECORD_FIELDS: Mapping[str, tuple[str, ...]] = {
    "intents": ("id", "external_reference"),
    "payments": ("id", "device_id", "amount", "status", "external_reference"),
    "webhooks": ("data_id", "state", "status_code"),
}


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
    # The outcome came only from STATUS: the daemon never sent the RESULT it owed.
    result_withheld: bool = False


@dataclass(frozen=True, slots=True)
class OverrideAudit:
    """One supervisor override as the journal's audit trail recorded it."""

    sale_id: str
    decision: str
    outcome: str  # "requested", then "done", "failed" or "refused: <code>"


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything a run left behind, as plain data."""

    store_id: str
    sim_record: Mapping[str, Any]
    journal_sales: Sequence[JournalSale]
    relay_events: Sequence[RelayEventView]
    journaled_relay_ids: frozenset[int]
    register: Sequence[RegisterView] = ()
    # The cloud devices pinned to this store's lanes: every charge on them is ours to explain.
    terminals: frozenset[str] = frozenset()
    overrides: Sequence[OverrideAudit] = ()


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
    """What each rule looked at and what it found.

    ``cases`` counts, per rule, the things the rule examined. A run whose rule examined
    nothing proves nothing about it, so ``passed`` needs every rule to have looked at
    something as well as no violation.
    """

    cases: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)

    def fail(self, rule: str, subject: str, detail: str) -> None:
        """Record one violation of ``rule``."""
        self.violations.append(Violation(rule, subject, detail))

    @property
    def unexercised(self) -> tuple[str, ...]:
        """The rules that examined no case at all."""
        return tuple(rule for rule in RULES if self.cases[rule] == 0)

    @property
    def passed(self) -> bool:
        """No violation, and every rule examined at least one case."""
        return not self.violations and not self.unexercised


@dataclass(frozen=True, slots=True)
class _Accounts:
    """The evidence indexed the way the rules look things up."""

    evidence: Evidence
    sales: Mapping[str, JournalSale]
    by_register_key: Mapping[tuple[int, str], JournalSale]
    views: Mapping[tuple[int, str], RegisterView]
    payments: Mapping[str, Mapping[str, Any]]
    payments_of_sale: Mapping[str, Sequence[Mapping[str, Any]]]

    @classmethod
    def of(cls, evidence: Evidence) -> _Accounts:
        payments = {str(p["id"]): p for p in _entries(evidence, "payments")}
        of_sale: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for payment in payments.values():
            sale_id = _sale_of(payment["external_reference"], evidence.store_id)
            if sale_id is not None:
                of_sale[sale_id].append(payment)
        return cls(
            evidence,
            {sale.sale_id: sale for sale in evidence.journal_sales},
            {(sale.lane, sale.correlation_id): sale for sale in evidence.journal_sales},
            {(view.lane, view.correlation_id): view for view in evidence.register},
            payments,
            of_sale,
        )

    def sale_of(self, reference: object) -> str | None:
        """The sale of this store a reference names, None when unreadable or foreign."""
        return _sale_of(reference, self.evidence.store_id)

    def requested(self, sale: JournalSale) -> RegisterView | None:
        """What the register asked for this sale."""
        return self.views.get((sale.lane, sale.correlation_id))


def _sale_of(reference: object, store_id: str) -> str | None:
    if not isinstance(reference, str):
        return None
    try:
        parsed = ExternalReference.parse(reference)
    except ExternalReferenceError:
        return None
    return parsed.sale if parsed.store == store_id else None


def _entries(evidence: Evidence, section: str) -> list[Mapping[str, Any]]:
    """A record section's well-formed entries (the malformed ones are reported by check)."""
    entries = evidence.sim_record.get(section)
    if not isinstance(entries, list):
        return []
    wanted = RECORD_FIELDS[section]
    return [e for e in entries if isinstance(e, Mapping) and all(k in e for k in wanted)]


def check(evidence: Evidence) -> Checked:
    """Every violation of the rules the evidence shows, and what each rule looked at."""
    checked = Checked()
    accounts = _Accounts.of(evidence)
    _check_record(evidence, checked)
    _check_releases(accounts, checked)
    _check_amounts(accounts, checked)
    _check_payments(accounts, checked)
    _check_overrides(accounts, checked)
    _check_intents(accounts, checked)
    _check_refusals(accounts, checked)
    _check_finished(evidence, checked)
    _check_notifications(evidence, checked)
    _check_register(accounts, checked)
    return checked


def _check_record(evidence: Evidence, checked: Checked) -> None:
    for section, wanted in RECORD_FIELDS.items():
        checked.cases["evidence_incomplete"] += 1
        entries = evidence.sim_record.get(section)
        if not isinstance(entries, list):
            checked.fail("evidence_incomplete", f"simulator record {section!r}",
                         "missing: no rule can be judged without it")
            continue
        for index, entry in enumerate(entries):
            missing = [k for k in wanted if not isinstance(entry, Mapping) or k not in entry]
            if missing:
                checked.fail("evidence_incomplete", f"simulator record {section}[{index}]",
                             f"has no {', '.join(missing)}")
    if not evidence.terminals:
        checked.fail("evidence_incomplete", "terminals",
                     "the run named no terminal of its own: stray charges cannot be counted")


def _check_releases(accounts: _Accounts, checked: Checked) -> None:
    for sale in accounts.sales.values():
        if sale.state not in RELEASED:
            continue
        checked.cases["handover_unverified"] += 1
        subject = f"sale {sale.sale_id} (lane {sale.lane}, {sale.state.value})"
        payment = accounts.payments.get(sale.payment_id or "")
        if payment is None:
            problem = f"no payment {sale.payment_id!r} exists at Mercado Pago"
        elif payment["status"] != "approved":
            problem = f"payment {payment['id']} is {payment['status']}"
        elif payment["amount"] != sale.amount_cents:
            problem = (f"payment {payment['id']} is {payment['amount']} cents, "
                       f"the sale {sale.amount_cents}")
        elif accounts.sale_of(payment["external_reference"]) != sale.sale_id:
            problem = f"payment {payment['id']} belongs to {payment['external_reference']!r}"
        elif payment["device_id"] != sale.terminal_id:
            problem = f"payment {payment['id']} was taken on {payment['device_id']}"
        else:
            continue
        checked.fail("handover_unverified", subject, problem)


def _check_amounts(accounts: _Accounts, checked: Checked) -> None:
    """The register's own request is the measure: not the journal's copy of it."""
    for sale in accounts.sales.values():
        view = accounts.requested(sale)
        if view is None:
            continue
        checked.cases["charged_other_amount"] += 1
        subject = f"sale {sale.sale_id} (register {sale.correlation_id}, lane {sale.lane})"
        if sale.amount_cents != view.amount_cents:
            checked.fail("charged_other_amount", subject,
                         f"the register asked {view.amount_cents} cents, the journal "
                         f"holds {sale.amount_cents}")
        for payment in accounts.payments_of_sale.get(sale.sale_id, ()):
            if payment["amount"] != view.amount_cents:
                checked.fail("charged_other_amount", subject,
                             f"payment {payment['id']} ({payment['status']}) is "
                             f"{payment['amount']} cents; the register asked "
                             f"{view.amount_cents}")


def _check_payments(accounts: _Accounts, checked: Checked) -> None:
    evidence = accounts.evidence
    by_sale: dict[str, list[str]] = defaultdict(list)
    by_register_sale: dict[tuple[int, str], set[str]] = defaultdict(set)
    for payment in accounts.payments.values():
        if payment["status"] != "approved":
            continue
        checked.cases["paid_not_honoured"] += 1
        checked.cases["charged_twice"] += 1
        sale_id = accounts.sale_of(payment["external_reference"])
        if payment["device_id"] in evidence.terminals:
            checked.cases["charge_unattributed"] += 1
            if sale_id is None or sale_id not in accounts.sales:
                checked.fail("charge_unattributed", f"payment {payment['id']}",
                             f"approved on our terminal {payment['device_id']} with reference "
                             f"{payment['external_reference']!r}, which names no sale of ours")
        if sale_id is None:
            continue
        by_sale[sale_id].append(str(payment["id"]))
        sale = accounts.sales.get(sale_id)
        if sale is None:
            continue  # reported by _check_intents: the journal never knew this sale
        by_register_sale[(sale.lane, sale.correlation_id)].add(sale_id)
        if sale.state not in RELEASED | VISIBLY_HELD | {SaleState.OVERRIDDEN}:
            checked.fail("paid_not_honoured", f"sale {sale_id} (lane {sale.lane})",
                         f"payment {payment['id']} is approved but the sale ended "
                         f"{sale.state.value}")
    for sale_id, ids in by_sale.items():
        if len(ids) > 1:
            checked.fail("charged_twice", f"sale {sale_id}", f"approved payments {ids}")
    for (lane, correlation_id), sale_ids in by_register_sale.items():
        if len(sale_ids) > 1:
            checked.fail("charged_twice", f"register sale {correlation_id} (lane {lane})",
                         f"approved payments under sales {sorted(sale_ids)}")


def _check_overrides(accounts: _Accounts, checked: Checked) -> None:
    """A release is the supervisor's word: it must be on the audit trail and backed by a
    payment the account really holds (the run's supervisor checks that before releasing)."""
    released = {o.sale_id for o in accounts.evidence.overrides
                if o.decision == "release" and o.outcome == "done"}
    for sale in accounts.sales.values():
        checked.cases["override_unproven"] += 1
        subject = f"sale {sale.sale_id} (lane {sale.lane})"
        if sale.state is not SaleState.OVERRIDDEN:
            if sale.sale_id in released and sale.state in RELEASED:
                checked.fail("override_unproven", subject,
                             f"audited as released by a supervisor, journal says "
                             f"{sale.state.value}")
            continue
        if sale.sale_id not in released:
            checked.fail("override_unproven", subject,
                         "overridden with no completed release on the audit trail")
            continue
        view = accounts.requested(sale)
        wanted = view.amount_cents if view is not None else sale.amount_cents
        if not any(p["status"] == "approved" and p["amount"] == wanted
                   for p in accounts.payments_of_sale.get(sale.sale_id, ())):
            checked.fail("override_unproven", subject,
                         f"released by a supervisor, but Mercado Pago holds no approved "
                         f"payment of {wanted} cents for it")


def _check_intents(accounts: _Accounts, checked: Checked) -> None:
    for intent in _entries(accounts.evidence, "intents"):
        checked.cases["unjournaled_intent"] += 1
        sale_id = accounts.sale_of(intent["external_reference"])
        if sale_id is not None and sale_id not in accounts.sales:
            checked.fail("unjournaled_intent", f"intent {intent['id']}",
                         f"created for sale {sale_id}, which the journal does not know")


def _check_refusals(accounts: _Accounts, checked: Checked) -> None:
    created = {accounts.sale_of(i["external_reference"])
               for i in _entries(accounts.evidence, "intents")}
    for view in accounts.evidence.register:
        checked.cases["refused_but_created"] += 1
        if view.outcome != "refused":
            continue
        sale = accounts.by_register_key.get((view.lane, view.correlation_id))
        if sale is not None and sale.sale_id in created:
            checked.fail("refused_but_created",
                         f"register sale {view.correlation_id} (lane {view.lane})",
                         f"told refused, but sale {sale.sale_id} has an intent or order at "
                         "Mercado Pago")


def _check_finished(evidence: Evidence, checked: Checked) -> None:
    for sale in evidence.journal_sales:
        checked.cases["unfinished"] += 1
        if sale.state in FINAL_STATES or sale.state in VISIBLY_HELD:
            continue
        checked.fail("unfinished", f"sale {sale.sale_id} (lane {sale.lane})",
                     f"left {sale.state.value}: neither finished nor held")


def _check_notifications(evidence: Evidence, checked: Checked) -> None:
    stored: set[tuple[str | None, str | None]] = {
        (event.data_id, event.state) for event in evidence.relay_events
    }
    answered: set[tuple[str, str]] = set()
    for attempt in _entries(evidence, "webhooks"):
        status = attempt["status_code"]
        if status is None or not 200 <= status < 300:
            continue
        answered.add((str(attempt["data_id"]), str(attempt["state"])))
    checked.cases["notification_lost_at_relay"] = len(answered)
    for data_id, state in sorted(answered):
        if (data_id, state) not in stored:
            checked.fail("notification_lost_at_relay", f"intent {data_id} {state}",
                         "the relay answered 2xx but its store stream does not hold it")
    for event in evidence.relay_events:
        if event.kind == CANARY_KIND:
            continue
        checked.cases["notification_not_journaled"] += 1
        if event.event_id not in evidence.journaled_relay_ids:
            checked.fail("notification_not_journaled",
                         f"relay event {event.event_id} ({event.data_id} {event.state})",
                         "delivered to the store but never journaled by the daemon")


def _check_register(accounts: _Accounts, checked: Checked) -> None:
    for view in accounts.evidence.register:
        checked.cases["register_disagrees"] += 1
        checked.cases["result_withheld"] += 1
        sale = accounts.by_register_key.get((view.lane, view.correlation_id))
        subject = f"register sale {view.correlation_id} (lane {view.lane})"
        if view.result_withheld:
            checked.fail("result_withheld", subject,
                         f"the daemon knew the outcome ({view.outcome}) but never sent its "
                         "RESULT: the register learned it only by asking STATUS")
        if sale is None:
            if view.outcome not in (None, "refused"):
                checked.fail("register_disagrees", subject,
                             f"told {view.outcome}, but the journal has no such sale")
            elif view.outcome is None:
                checked.fail("unfinished", subject, "no outcome and unknown to the journal")
            continue
        told_release = view.outcome == "approved" or view.handover_allowed is True
        if told_release and sale.state not in RELEASED | {SaleState.OVERRIDDEN}:
            checked.fail("register_disagrees", subject,
                         f"told approved / handover allowed, journal says {sale.state.value}")
            continue
        if view.outcome is None:
            if sale.state not in VISIBLY_HELD:
                checked.fail("unfinished", subject,
                             f"never told an outcome; the journal says {sale.state.value}")
            continue
        if view.outcome == "refused":
            if sale.refusal is None and sale.state not in {SaleState.FAILED}:
                checked.fail("register_disagrees", subject,
                             f"told refused, journal says {sale.state.value}")
            continue
        expected = REGISTER_OUTCOME.get(sale.state)
        if expected is not None and expected != view.outcome:
            checked.fail("register_disagrees", subject,
                         f"told {view.outcome}, journal says {sale.state.value}")


def count_by_rule(violations: Iterable[Violation]) -> dict[str, int]:
    """Violations per rule, every rule listed (zero included)."""
    counts = dict.fromkeys(RULES, 0)
    for violation in violations:
        counts[violation.rule] = counts.get(violation.rule, 0) + 1
    return counts
