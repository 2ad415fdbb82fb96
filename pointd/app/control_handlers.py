"""The daemon's side of every control-socket method, and the events it pushes to subscribers.

Theory of operation: ``DaemonHandlers`` is the mapping of method name to handler that
``register_daemon_methods`` receives. The read-only methods live in ``control_reads``, the
ones that act in ``control_mutations``, the rows and the status snapshot they share in
``control_views``. The server audits a mutating call before it runs (``journal_audit``);
the handler mapping records its outcome after it, so the audit log shows both the request
and what came of it.

The runtime wires ``engine_stepped`` as the engine's ``on_step``, ``add_alert`` as its
``on_alert``, and calls ``publish_relay`` / ``publish_terminals`` / ``publish_status`` when
the relay, a terminal or a register link change; these push ``sale``, ``status``, ``relay``
and ``terminal`` events through the control server. A ``status`` event is pushed only when
the snapshot differs (ignoring ages and uptimes) from the last one pushed, so subscribers
see changes, not the clock; each one that changes the one-line summary also goes to
``on_status_line`` (systemd's ``STATUS=``).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import structlog

import pointd
from pointd.app.control_mutations import MutationMethods
from pointd.app.control_reads import ReadMethods
from pointd.app.control_tools import ToolMethods
from pointd.app.control_views import (
    LaneTerminalView,
    RegisterLinkSource,
    RelayStatusSource,
    StatusView,
    reconciliation,
    sale_event,
    status_line,
)
from pointd.app.engine import Alert, Engine
from pointd.cloud.port import CloudPort
from pointd.control.errors import MethodError
from pointd.control.methods import DAEMON_METHODS
from pointd.control.server import AuditHook, Caller, Handler
from pointd.core.events import Event
from pointd.core.machine import Step
from pointd.core.states import SaleState
from pointd.journal.store import Journal

__all__ = ["DaemonHandlers", "EventSink", "journal_audit", "reconciliation"]

log = structlog.get_logger(__name__)

# Alerts kept in memory for status and the bundle; older ones are in the daemon's log.
ALERTS_KEPT = 100
# Fields of a status snapshot that change with the clock alone; ignored when deciding
# whether the status changed enough to push an event.
_VOLATILE_STATUS_FIELDS = frozenset({"uptime_s", "last_step_at"})
_VOLATILE_RELAY_FIELDS = frozenset({"last_event_age"})


class EventSink(Protocol):
    """The control server, as far as the handlers use it."""

    def publish(self, topic: str, data: Any) -> int:
        """Push an event to subscribers."""
        ...

    def connection_report(self) -> list[dict[str, Any]]:
        """Open connections and their recent requests."""
        ...


def journal_audit(journal: Journal, clock: Callable[[], float]) -> AuditHook:
    """The server's audit hook: journal a mutating call before it runs (raises if not)."""

    def record(uid: int, method: str, params: dict[str, Any]) -> None:
        journal.record_audit(uid=uid, method=method, args=params, outcome="requested",
                             now=clock())

    return record


class DaemonHandlers(Mapping[str, Handler]):
    """Every catalogued control method, served from the engine, the journal and the providers."""

    def __init__(
        self,
        *,
        engine: Engine,
        journal: Journal,
        cloud: CloudPort,
        terminals: LaneTerminalView,
        relay: RelayStatusSource | None,
        links: RegisterLinkSource | None,
        events: EventSink,
        config: Mapping[str, Any],
        secrets: Sequence[str],
        clock: Callable[[], float],
        started_at: float,
        version: str = pointd.__version__,
        recent_logs: Callable[[], Iterable[str]] | None = None,
        on_status_line: Callable[[str], None] | None = None,
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._events = events
        self._on_status_line = on_status_line
        self._status_line: str | None = None
        self._alerts: deque[Alert] = deque(maxlen=ALERTS_KEPT)
        self._published_states: dict[str, SaleState] = {}
        self._published_status: str | None = None
        self._view = StatusView(
            engine=engine, journal=journal, terminals=terminals, relay=relay, links=links,
            alerts=lambda: self._alerts, clock=clock, started_at=started_at, version=version,
        )
        reads = ReadMethods(
            engine=engine, journal=journal, view=self._view, connections=events,
            alerts=lambda: self._alerts, config=config, secrets=secrets, clock=clock,
            version=version, recent_logs=recent_logs,
        )
        acts = MutationMethods(engine=engine, cloud=cloud, clock=clock)
        tools = ToolMethods(journal_path=journal.path, cloud=cloud, clock=clock)
        self._table: dict[str, Callable[..., Awaitable[Any]]] = {
            "status": reads.status,
            "sales": reads.sales,
            "sale": reads.sale,
            "holds": reads.holds,
            "terminals": reads.terminals,
            "relay": reads.relay,
            "bundle": reads.bundle,
            "verify": acts.verify,
            "override": acts.override,
            "cancel": acts.cancel,
            "reconcile": acts.reconcile,
            "refund": acts.refund,
            "backup": tools.backup,
            "backup_chunk": tools.backup_chunk,
            "integrator": tools.integrator,
            "device_events": tools.device_events,
        }

    def __repr__(self) -> str:
        return f"DaemonHandlers(journal={str(self._journal.path)!r})"

    @property
    def ready(self) -> bool:
        """Whether the daemon has told systemd READY=1 (status says so)."""
        return self._view.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._view.ready = value

    @property
    def cloud_reachable(self) -> bool | None:
        """Mercado Pago's reachability for status; None: take the lane terminals' view."""
        return self._view.cloud_reachable

    @cloud_reachable.setter
    def cloud_reachable(self, value: bool | None) -> None:
        self._view.cloud_reachable = value

    # --- the handler mapping ----------------------------------------------------------------

    def __getitem__(self, name: str) -> Handler:
        handler = self._table[name]
        if not DAEMON_METHODS[name].mutating:
            return handler

        async def with_outcome(caller: Caller, **params: Any) -> Any:
            try:
                result = await handler(caller, **params)
            except MethodError as exc:
                self._record_outcome(caller, name, params, f"refused: {exc.code}")
                raise
            except Exception:
                self._record_outcome(caller, name, params, "failed")
                raise
            self._record_outcome(caller, name, params, "done")
            return result

        return with_outcome

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    # --- audit and alerts ----------------------------------------------------------------

    def _record_outcome(self, caller: Caller, method: str, params: dict[str, Any],
                        outcome: str) -> None:
        try:
            self._journal.record_audit(
                uid=caller.uid, method=method, args=params, outcome=outcome, now=self._clock()
            )
        except Exception:
            # The call already ran and its request is audited; failing it now would lie.
            log.exception("control_audit_outcome_failed", method=method, uid=caller.uid)

    def add_alert(self, alert: Alert) -> None:
        """Keep a core alert for status and bundles (wire as the engine's ``on_alert``)."""
        self._alerts.append(alert)
        self.publish_status()

    @property
    def alerts(self) -> list[Alert]:
        """The recent alerts, oldest first."""
        return list(self._alerts)

    # --- pushed events ----------------------------------------------------------------------

    def engine_stepped(self, event: Event, result: Step) -> None:
        """Push ``sale`` and ``status`` events after a step (wire as the engine's ``on_step``)."""
        sale = result.state.sales.get(result.sale_id) if result.sale_id else None
        if sale is not None and self._published_states.get(sale.sale_id) is not sale.state:
            self._publish("sale", sale_event(sale))
            if sale.is_final:
                self._published_states.pop(sale.sale_id, None)
            else:
                self._published_states[sale.sale_id] = sale.state
        self.publish_status()

    def publish_status(self) -> None:
        """Push the status snapshot when it changed since the last one pushed; never raises."""
        try:
            status = self._view.status()
        except Exception:
            log.exception("control_status_failed")
            return
        stable = {k: v for k, v in status.items() if k not in _VOLATILE_STATUS_FIELDS}
        stable["relay"] = {
            k: v for k, v in status["relay"].items() if k not in _VOLATILE_RELAY_FIELDS
        }
        fingerprint = json.dumps(stable, sort_keys=True, default=str)
        if fingerprint == self._published_status:
            return
        self._published_status = fingerprint
        self._publish("status", status)
        line = status_line(status)
        if line != self._status_line and self._on_status_line is not None:
            self._status_line = line
            self._on_status_line(line)

    def status_line(self) -> str:
        """The one-line summary for systemd's STATUS= (``2/2 lanes ready, relay connected``)."""
        return status_line(self._view.status())

    def publish_relay(self) -> None:
        """Push the relay view (call when the relay's health changes)."""
        self._publish("relay", self._view.relay_view())
        self.publish_status()

    def publish_terminals(self) -> None:
        """Push every terminal row (call when a terminal was plugged, pulled or changed mode)."""
        for row in self._view.terminal_rows():
            self._publish("terminal", row)
        self.publish_status()

    def _publish(self, topic: str, data: Any) -> None:
        try:
            self._events.publish(topic, data)
        except Exception:
            # Publishing runs inside engine steps and alerts: a display problem must never
            # fail them.
            log.exception("control_publish_failed", topic=topic)
