"""What the control socket shows: rows, the status snapshot, the reconciliation plan.

Everything here reads (the engine's core state, the journal's rows, the status providers)
and returns plain JSON-able data; nothing here changes a sale. The read methods
(``control_reads``) and the pushed events (``control_handlers``) are built from these.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog

from pointd.app.engine import Alert, Engine
from pointd.control.errors import MethodError
from pointd.control.protocol import ErrorCode, iso_time
from pointd.core.effects import Effect, FetchIntent, FetchPayment, ReconcileAttempt
from pointd.core.events import Event
from pointd.core.machine import CoreState, Sale
from pointd.core.policy import Policy
from pointd.core.records import Refund
from pointd.core.recovery import recover
from pointd.core.reference import MAX_LANE
from pointd.core.states import LaneCondition, SaleState
from pointd.journal.store import Journal, SaleRow

log = structlog.get_logger(__name__)

S = SaleState

# Sales in these states keep the goods in the store until a verified payment or a person
# settles them: the ``holds`` list, and a problem in ``status``.
HOLD_STATES = frozenset({S.HELD, S.ESCALATED, S.BLOCKED})
ALERTS_IN_STATUS = 10
# A lane whose register link is down is not ready, whatever its terminal's condition.
REGISTER_NOT_CONNECTED = "register_not_connected"
# Problems spelled out in systemd's STATUS= line; the rest are counted.
STATUS_LINE_PROBLEMS = 2
# A live sale in CREATING has its create request in flight: reconciling it now could prove
# "not found" before the create lands and start a second attempt. Its own answer (or the
# reconcile timer after an unknown outcome) settles it.
_NOT_RECONCILED_NOW = frozenset({S.CREATING})
_ASKING_EFFECTS = (FetchIntent, FetchPayment, ReconcileAttempt)
_LANE_TEXT = re.compile(r"[0-9]{1,3}")


class LaneTerminalView(Protocol):
    """What the handlers read from the lane terminal service."""

    def snapshot(self) -> list[dict[str, Any]]:
        """Each lane's terminal row: lane, terminal, presence, usb, mode, condition, …"""
        ...


class RelayStatusSource(Protocol):
    """The relay consumer's health, as plain data."""

    def relay_status(self) -> dict[str, Any]:
        """``state`` (connected/silent/down/disabled), ``since``, ``last_event_age``, ``cursor``."""
        ...


class RegisterLinkSource(Protocol):
    """The register serial links' health, one row per lane."""

    def link_status(self) -> list[dict[str, Any]]:
        """Rows of ``lane``, ``port``, ``connected``, ``since`` (epoch), ``problem``."""
        ...


class ConnectionReporter(Protocol):
    """The control server, as far as the handlers use it."""

    def publish(self, topic: str, data: Any) -> int:
        """Push an event to subscribers."""
        ...

    def connection_report(self) -> list[dict[str, Any]]:
        """Open connections and their recent requests."""
        ...


def refund_row(refund: Refund) -> dict[str, Any]:
    """One refund as the control socket shows it."""
    return {
        "refund_id": refund.refund_id,
        "sale_id": refund.sale_id,
        "status": refund.status.value,
        "amount_cents": refund.amount_cents,
        "via": refund.via,
        "refusal": refund.refusal.value if refund.refusal is not None else None,
        "idempotency_key": refund.idempotency_key,
        "by": refund.by,
        "detail": refund.detail,
        "requested_at": iso_time(refund.requested_at),
        "updated_at": iso_time(refund.updated_at),
    }


def sale_event(sale: Sale) -> dict[str, Any]:
    """The ``sale`` topic's data for a sale's current standing."""
    return {
        "sale_id": sale.sale_id,
        "lane": str(sale.lane),
        "state": sale.state.value,
        "amount_cents": sale.amount_cents,
        "payment_id": sale.payment_id,
        "detail": sale.detail or None,
        "at": iso_time(sale.updated_at),
    }


def sale_summary(sale: Sale) -> dict[str, Any]:
    """A sale's list row built from the core state (same fields as a ``sales`` row)."""
    return _summary(sale, sale.refusal.value if sale.refusal else None)


def row_summary(row: SaleRow) -> dict[str, Any]:
    """A journaled sale's list row (the ``sales`` method)."""
    return _summary(row, row.refusal)


def _summary(sale: Sale | SaleRow, refusal: str | None) -> dict[str, Any]:
    # The core's Sale and the journal's SaleRow name these fields alike.
    return {
        "sale_id": sale.sale_id,
        "correlation_id": sale.correlation_id,
        "lane": str(sale.lane),
        "state": sale.state.value,
        "amount_cents": sale.amount_cents,
        "payment_id": sale.payment_id,
        "started_at": iso_time(sale.requested_at),
        "updated_at": iso_time(sale.updated_at),
        "terminal_id": sale.terminal_id or None,
        "intent_id": sale.intent_id,
        "attempt": sale.attempt,
        "refusal": refusal,
        "detail": sale.detail or None,
    }


def hold_row(sale: Sale) -> dict[str, Any]:
    """A held sale's row (the ``holds`` method)."""
    return {
        "sale_id": sale.sale_id,
        "correlation_id": sale.correlation_id,
        "lane": str(sale.lane),
        "state": sale.state.value,
        "amount_cents": sale.amount_cents,
        "payment_id": sale.payment_id,
        "held_since": iso_time(sale.verify_started_at or sale.updated_at),
        "reason": sale.detail or None,
    }


def alert_row(alert: Alert) -> dict[str, Any]:
    """A core alert's row (status and bundles)."""
    return {
        "at": iso_time(alert.at),
        "sale_id": alert.sale_id,
        "severity": alert.severity,
        "message": alert.message,
    }


def lane_number(text: str) -> int:
    """A ``lane`` param as a lane number; MethodError(bad_params) otherwise."""
    if _LANE_TEXT.fullmatch(text) is None or not 1 <= int(text) <= MAX_LANE:
        raise MethodError(
            ErrorCode.BAD_PARAMS, f"param 'lane' must be a lane number 1-{MAX_LANE}", param="lane"
        )
    return int(text)


def epoch_of(text: str) -> float:
    """A ``since`` param (ISO-8601, UTC when no offset) as epoch seconds."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise MethodError(
            ErrorCode.BAD_PARAMS,
            "param 'since' must be an ISO-8601 time such as 2026-11-22T10:00:00Z",
            param="since",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def event_detail(event: Event) -> dict[str, Any]:
    """A journaled event's fields for a timeline row (kind and sale id are columns)."""
    body: dict[str, Any] = json.loads(event.to_json())
    body.pop("kind", None)
    body.pop("sale_id", None)
    return body


def held_sales(state: CoreState) -> list[Sale]:
    """Sales held, escalated or blocked: the goods must not leave."""
    return [sale for sale in state.unfinished() if sale.state in HOLD_STATES]


def reconciliation(
    state: CoreState, now: float, policy: Policy
) -> tuple[list[dict[str, Any]], list[Effect]]:
    """The API checks that re-establish every unfinished sale's truth on a running daemon.

    The same checks as start-up recovery, minus re-telling and timers, and never for a sale
    whose create may still be in flight: reconciling it now could prove the attempt absent
    while its request is on the wire, and a second attempt could charge twice.
    """
    asks: dict[str, list[Effect]] = {}
    for effect in recover(state, now, policy):
        if isinstance(effect, _ASKING_EFFECTS):
            asks.setdefault(effect.sale_id, []).append(effect)
    rows: list[dict[str, Any]] = []
    started: list[Effect] = []
    for sale in state.unfinished():
        own = asks.get(sale.sale_id, [])
        if sale.state in _NOT_RECONCILED_NOW:
            action = "wait: create in flight"
        elif not own:
            action = "none"
        else:
            action = ", ".join(_action_name(effect) for effect in own)
            started.extend(own)
        rows.append({"sale_id": sale.sale_id, "state": sale.state.value, "action": action})
    return rows, started


class StatusView:
    """The status snapshot and the rows it is made of, from the engine and the providers."""

    def __init__(
        self,
        *,
        engine: Engine,
        journal: Journal,
        terminals: LaneTerminalView,
        relay: RelayStatusSource | None,
        links: RegisterLinkSource | None,
        alerts: Callable[[], Sequence[Alert]],
        clock: Callable[[], float],
        started_at: float,
        version: str,
    ) -> None:
        self._engine = engine
        self._journal = journal
        self._terminals = terminals
        self._relay = relay
        self._links = links
        self._alerts = alerts
        self._clock = clock
        self._started_at = started_at
        self._version = version
        self.ready = False  # set by the runtime once the daemon has told systemd READY=1
        self.cloud_reachable: bool | None = None  # None: take the lane terminals' view

    def terminal_rows(self) -> list[dict[str, Any]]:
        """Each lane's terminal: identity, USB presence, cloud mode, live intent."""
        state = self._engine.state
        rows = []
        for lane in self._terminals.snapshot():
            terminal = lane.get("terminal")
            holder_id = state.terminals.get(terminal) if terminal else None
            holder = state.sales.get(holder_id) if holder_id else None
            usb = lane.get("usb") or {}
            presence = lane.get("presence")
            rows.append(
                {
                    "lane": str(lane.get("lane")),
                    "terminal_id": terminal,
                    "serial": usb.get("serial"),
                    "usb_present": {"attached": True, "detached": False}.get(str(presence)),
                    "presence": presence,
                    "mode": lane.get("mode"),
                    "condition": lane.get("condition"),
                    "problem": lane.get("problem"),
                    "live_intent": holder.intent_id if holder else None,
                    "live_sale": holder.sale_id if holder else None,
                    "catalog_stale": lane.get("catalog_stale"),
                    "catalog_error": lane.get("catalog_error"),
                    "pdv_switch": lane.get("pdv_switch"),
                    "changes": [
                        {"at": iso_time(change["at"]), "change": change["change"]}
                        for change in lane.get("changes", [])
                    ],
                }
            )
        return rows

    def relay_view(self) -> dict[str, Any]:
        """The relay consumer's health and cursor, times as ISO-8601."""
        if self._relay is None:
            return {"state": "disabled", "connected": None}
        try:
            raw = dict(self._relay.relay_status())
        except Exception:
            log.exception("control_relay_status_failed")
            return {"state": "unknown", "connected": None, "detail": "relay status failed"}
        view: dict[str, Any] = {**raw}
        relay_state = str(raw.get("state", "unknown"))
        view["state"] = relay_state
        view["connected"] = None if relay_state == "disabled" else relay_state == "connected"
        for key in ("since", "last_event_at"):
            moment = raw.get(key)
            if isinstance(moment, int | float) and not isinstance(moment, bool):
                view[key] = iso_time(float(moment))
        age = raw.get("last_event_age")
        if isinstance(age, int | float) and not isinstance(age, bool):
            view["last_event_age"] = round(float(age), 1)
        if raw.get("cursor") is not None:
            view["cursor"] = str(raw["cursor"])
        return view

    def link_rows(self) -> dict[str, dict[str, Any]]:
        """Each lane's register link by lane number."""
        if self._links is None:
            return {}
        try:
            rows = self._links.link_status()
        except Exception:
            log.exception("control_link_status_failed")
            return {}
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            since = row.get("since")
            out[str(row.get("lane"))] = {
                "port": row.get("port"),
                "connected": row.get("connected"),
                "since": iso_time(float(since))
                if isinstance(since, int | float) and not isinstance(since, bool)
                else since,
                "problem": row.get("problem"),
                "retransmits": row.get("retransmits"),
            }
        return out

    def status(self) -> dict[str, Any]:
        """Daemon, cloud, relay, lanes with their sale and register, holds and problems."""
        now = self._clock()
        engine = self._engine
        state = engine.state
        problems: list[str] = []
        if not engine.healthy:
            problems.append("the journal could not be written: the daemon is unhealthy")

        try:
            snapshot = self._terminals.snapshot()
        except Exception:
            log.exception("control_terminal_snapshot_failed")
            snapshot = []
            problems.append("the lane terminal view failed (see the daemon log)")
        reachable = self.cloud_reachable
        if reachable is None and snapshot:
            reachable = bool(snapshot[0].get("cloud_reachable", True))
        if reachable is False:
            problems.append("Mercado Pago cannot be reached: card payments unavailable")

        relay = self.relay_view()
        if relay["state"] in ("silent", "down", "unknown"):
            detail = f": {relay['detail']}" if relay.get("detail") else ""
            problems.append(f"relay {relay['state']} since {relay.get('since')}{detail}")

        links = self.link_rows()
        lanes = []
        for row in snapshot:
            number = row.get("lane")
            name = str(number)
            sale = state.sale_on_lane(number) if isinstance(number, int) else None
            register = links.get(name)
            terminal_condition = row.get("condition")
            condition = terminal_condition
            if register is not None and register.get("connected") is False:
                # The register is the lane's only way to sell: without it the lane is not
                # ready, whatever its terminal says.
                condition = REGISTER_NOT_CONNECTED
                why = f" ({register['problem']})" if register.get("problem") else ""
                problems.append(
                    f"lane {name}: register not connected since {register['since']}{why}"
                )
            elif terminal_condition is not None and terminal_condition != LaneCondition.READY:
                problems.append(f"lane {name}: {terminal_condition}")
            lanes.append(
                {
                    "lane": name,
                    "condition": condition,
                    "terminal_condition": terminal_condition,
                    "terminal": row.get("terminal"),
                    "presence": row.get("presence"),
                    "mode": row.get("mode"),
                    "register": register,
                    "sale": None if sale is None else {
                        "sale_id": sale.sale_id,
                        "correlation_id": sale.correlation_id,
                        "state": sale.state.value,
                        "amount_cents": sale.amount_cents,
                        "payment_id": sale.payment_id,
                    },
                }
            )

        held = held_sales(state)
        for sale in held:
            why = f" ({sale.detail})" if sale.detail else ""
            problems.append(
                f"sale {sale.sale_id} (receipt {sale.correlation_id}) on lane {sale.lane} is "
                f"{sale.state.value}: do not hand over{why}"
            )
        return {
            "version": self._version,
            "started_at": iso_time(self._started_at),
            "uptime_s": round(max(0.0, now - self._started_at), 1),
            "ready": self.ready and engine.healthy,
            "healthy": engine.healthy,
            "journal": str(self._journal.path),
            "last_step_at": iso_time(engine.last_step_at),
            "cloud": {"reachable": reachable},
            "relay": relay,
            "lanes": lanes,
            "unfinished": len(state.unfinished()),
            "holds": len(held),
            "problems": problems,
            "alerts": [alert_row(alert) for alert in list(self._alerts())[-ALERTS_IN_STATUS:]],
        }


def status_line(status: Mapping[str, Any]) -> str:
    """The one line ``systemctl status`` shows: lanes ready, the relay, then what needs a person.

    ``2/2 lanes ready, relay connected`` when all is well; otherwise the first problems of
    the snapshot follow (``; lane 2: register not connected since …``).
    """
    lanes = [lane for lane in status.get("lanes", []) if isinstance(lane, Mapping)]
    ready = sum(1 for lane in lanes if lane.get("condition") == LaneCondition.READY)
    relay = status.get("relay")
    relay_state = str(relay.get("state", "unknown")) if isinstance(relay, Mapping) else "unknown"
    relay_text = "no relay (polling Mercado Pago)" if relay_state == "disabled" \
        else f"relay {relay_state}"
    line = f"{ready}/{len(lanes)} lanes ready, {relay_text}"
    if not status.get("healthy", True):
        line = f"UNHEALTHY, {line}"
    problems = [str(p) for p in status.get("problems", [])]
    shown = problems[:STATUS_LINE_PROBLEMS]
    if shown:
        line += "; " + "; ".join(shown)
    if len(problems) > len(shown):
        line += f" (+{len(problems) - len(shown)} more: pointctl status)"
    return line


def _action_name(effect: Effect) -> str:
    if isinstance(effect, FetchPayment):
        return f"fetch payment {effect.payment_id}"
    if isinstance(effect, FetchIntent):
        return f"fetch intent {effect.intent_id}"
    return "reconcile attempt"
