"""Turning what a run left behind into the checker's ``Evidence``.

The journal is read after the daemon stopped (``Journal.open`` on its file), the relay's
stream as the store delivery API serves it (JSON events), the simulator's record as
``SimWorld.record`` returns it, and the registers' notes as the cashiers kept them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pointd.core.reference import ExternalReference, ExternalReferenceError
from pointd.journal.store import Journal
from pointd.rig.chaos.cashier import SaleNote
from pointd.rig.chaos.invariants import (
    Evidence,
    JournalSale,
    OverrideAudit,
    RegisterView,
    RelayEventView,
)


def relay_view(event: Mapping[str, Any]) -> RelayEventView:
    """One event of the store delivery API as the checker sees it."""
    data_id: str | None = None
    state: str | None = None
    try:
        body = json.loads(base64.b64decode(event.get("body_b64") or b""))
    except ValueError:
        body = None
    if isinstance(body, dict):
        data = body.get("data")
        # A Point intent's notification names it in "id"; an order's in "data.id".
        if isinstance(data, dict) and "id" in data:
            raw_id, raw_state = data.get("id"), data.get("status")
        else:
            raw_id, raw_state = body.get("id"), body.get("state")
        data_id = None if raw_id is None else str(raw_id)
        state = None if raw_state is None else str(raw_state)
    return RelayEventView(int(event["id"]), str(event.get("kind")), data_id, state)


def store_record(record: Mapping[str, Any], store_id: str) -> dict[str, Any]:
    """The simulator's record with only the webhooks about this store's intents and orders.

    Stores sharing one account and one relay each check their own stream: another store's
    notification is not one this store's relay stream should hold. Every other section is
    left whole (the rules themselves tell this store's charges from foreign ones).
    """
    ours: set[str] = set()
    for intent in record.get("intents") or ():
        try:
            if ExternalReference.parse(str(intent.get("external_reference"))).store == store_id:
                ours.add(str(intent.get("id")))
        except ExternalReferenceError:
            continue
    filtered = dict(record)
    if isinstance(record.get("webhooks"), list):
        filtered["webhooks"] = [w for w in record["webhooks"]
                                if not isinstance(w, Mapping) or str(w.get("data_id")) in ours]
    return filtered


def register_views(notes: Iterable[SaleNote]) -> list[RegisterView]:
    """What each register was told about each of its sales."""
    return [
        RegisterView(n.plan.correlation_id, n.plan.lane, n.plan.amount_cents, n.outcome,
                     n.handover_allowed, result_withheld=n.withheld_state is not None)
        for n in notes
    ]


def store_evidence(*, store_id: str, record: Mapping[str, Any], journal_path: Path,
                   stream: Sequence[Mapping[str, Any]], notes: Sequence[SaleNote],
                   terminals: Iterable[str]) -> Evidence:
    """The evidence of one store: its journal, its stream, its registers, the account."""
    views = [relay_view(event) for event in stream]
    limit = 10 * len(notes) + 100
    journal = Journal.open(journal_path)
    try:
        sales = [
            JournalSale(row.sale_id, row.lane, row.correlation_id, row.state,
                        row.amount_cents, row.payment_id, row.terminal_id, row.refusal)
            for row in journal.sales(limit=limit)
        ]
        journaled = frozenset(v.event_id for v in views
                              if journal.notification_seen(f"relay:{v.event_id}"))
        overrides = [
            OverrideAudit(str(entry.args.get("sale_id")), str(entry.args.get("decision")),
                          entry.outcome)
            for entry in journal.audit_log(limit=limit)
            if entry.method == "override"
        ]
    finally:
        journal.close()
    return Evidence(store_id, record, sales, views, journaled, register_views(notes),
                    frozenset(terminals), overrides)
