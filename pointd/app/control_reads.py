"""The control socket's read-only methods: status, sales, sale, holds, terminals, relay, bundle.

Each answers from the core state the engine holds, the journal and the status view; none
changes anything (the catalogue in ``pointd.control.methods`` marks them read access).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from pointd.app.control_views import (
    StatusView,
    alert_row,
    epoch_of,
    event_detail,
    held_sales,
    hold_row,
    lane_number,
    refund_row,
    row_summary,
    sale_summary,
)
from pointd.app.engine import Alert, Engine
from pointd.control.bundle import build_support_bundle, bundle_answer, collect_versions
from pointd.control.errors import MethodError
from pointd.control.protocol import ErrorCode, iso_time
from pointd.control.server import Caller
from pointd.core import answers
from pointd.core.states import SaleState
from pointd.journal.store import Journal

DEFAULT_SALES_LIMIT = 50
BUNDLE_SALES = 500
BUNDLE_AUDIT_ENTRIES = 200


class ConnectionReport(Protocol):
    """The control server's list of open connections, for bundles."""

    def connection_report(self) -> list[dict[str, Any]]:
        """Open connections and their recent requests."""
        ...


class ReadMethods:
    """The read-only methods, one coroutine each."""

    def __init__(
        self,
        *,
        engine: Engine,
        journal: Journal,
        view: StatusView,
        connections: ConnectionReport,
        alerts: Callable[[], Sequence[Alert]],
        config: Mapping[str, Any],
        secrets: Sequence[str],
        clock: Callable[[], float],
        version: str,
        recent_logs: Callable[[], Iterable[str]] | None,
    ) -> None:
        self._engine = engine
        self._journal = journal
        self._view = view
        self._connections = connections
        self._alerts = alerts
        self._config = config
        self._secrets = tuple(s for s in secrets if s)
        self._clock = clock
        self._version = version
        self._recent_logs = recent_logs

    async def status(self, caller: Caller) -> dict[str, Any]:
        """Daemon, cloud, relay, lanes with their sale and register, holds and problems."""
        return self._view.status()

    async def sales(
        self,
        caller: Caller,
        lane: str | None = None,
        state: str | None = None,
        since: str | None = None,
        limit: int = DEFAULT_SALES_LIMIT,
    ) -> dict[str, Any]:
        """Recent sales from the journal, newest change first, filtered as asked."""
        rows = self._journal.sales(
            states=[SaleState(state)] if state is not None else None,
            lane=lane_number(lane) if lane is not None else None,
            since=epoch_of(since) if since is not None else None,
            limit=limit,
        )
        return {"sales": [row_summary(row) for row in rows]}

    async def sale(self, caller: Caller, sale_id: str) -> dict[str, Any]:
        """One sale with its journaled timeline."""
        timeline = [
            {
                "seq": entry.seq,
                "at": iso_time(entry.at),
                "event": entry.kind,
                "state": entry.state.value if entry.state is not None else None,
                "detail": event_detail(entry.event),
            }
            for entry in self._journal.timeline(sale_id)
        ]
        sale = self._engine.state.sales.get(sale_id)
        if sale is None:
            # Settled sales leave the daemon's memory after a few days; the journal keeps them.
            row = self._journal.sale(sale_id)
            if row is None:
                raise MethodError(ErrorCode.NOT_FOUND, f"no sale {sale_id!r} in the journal")
            detail = row_summary(row)
            detail.update(
                in_memory=False,
                refunds=[refund_row(r) for r in self._engine.refund_book.of_sale(sale_id)],
            )
            return {"sale": detail, "timeline": timeline}
        detail = sale_summary(sale)
        detail.update(
            in_memory=True,
            approved_payment_id=sale.approved_payment_id,
            may_hand_over=answers.goods_may_leave(self._engine.state, sale),
            cancel_requested=sale.cancel_requested,
            verify_started_at=iso_time(sale.verify_started_at),
            override=None if sale.override is None else {
                "decision": sale.override.decision.value,
                "reason": sale.override.reason,
                "uid": sale.override.uid,
                "at": iso_time(sale.override.at),
            },
            timers={kind.value: iso_time(at) for kind, at in sale.timers},
            refunds=[refund_row(r) for r in self._engine.refund_book.of_sale(sale_id)],
        )
        return {"sale": detail, "timeline": timeline}

    async def holds(self, caller: Caller) -> dict[str, Any]:
        """Sales held, escalated or blocked: the goods must not leave."""
        return {"holds": [hold_row(sale) for sale in held_sales(self._engine.state)]}

    async def terminals(self, caller: Caller) -> dict[str, Any]:
        """Each lane's terminal: identity, USB presence, cloud mode, live intent."""
        return {"terminals": self._view.terminal_rows()}

    async def relay(self, caller: Caller) -> dict[str, Any]:
        """The relay consumer's health and cursor."""
        return self._view.relay_view()

    async def bundle(self, caller: Caller) -> dict[str, Any]:
        """The redacted support bundle as base64."""
        now = self._clock()
        status = self._view.status()
        status["pending_timers"] = [
            {"sale_id": sale_id, "timer": kind.value}
            for sale_id, kind in self._engine.pending_timers()
        ]
        history = {
            "sales": [row_summary(row) for row in self._journal.sales(limit=BUNDLE_SALES)],
            "audit": [
                {
                    "at": iso_time(entry.at),
                    "uid": entry.uid,
                    "method": entry.method,
                    "args": entry.args,
                    "outcome": entry.outcome,
                }
                for entry in self._journal.audit_log(BUNDLE_AUDIT_ENTRIES)
            ],
            "alerts": [alert_row(alert) for alert in self._alerts()],
        }
        content = build_support_bundle(
            status=status,
            sales=history,
            config=self._config,
            now=now,
            secrets=self._secrets,
            logs=self._recent_logs() if self._recent_logs is not None else None,
            versions={**collect_versions(), "pointd": self._version},
            connections=self._connections.connection_report(),
        )
        return bundle_answer(content, now)
