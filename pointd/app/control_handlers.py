"""The daemon's side of every control-socket method, and the events it pushes to subscribers.

Theory of operation: ``DaemonHandlers`` is the mapping of method name to handler that
``register_daemon_methods`` receives. Read-only methods build their answers from the core
state the engine holds (live sales, holds, lanes), the journal (sale history, timelines,
audit) and the small status providers the runtime hands in (lane terminals, relay health,
register links). Mutating methods never change a sale themselves: an override or a cancel
becomes a core event submitted to the engine, which journals it before anything happens,
exactly as if a register or a timer had caused it, so the core's rules apply to people too.
``verify`` fetches the payment and, when it belongs to one of our sales, submits what it
saw as ``PaymentVerified``; ``reconcile`` starts the API-asking recovery effects of the
unfinished sales. The server audits a mutating call before it runs (``record_audit``); the
handler records its outcome after it, so the audit log shows both the request and what
came of it.

The runtime also calls ``engine_stepped`` on every engine step, ``add_alert`` for every core
alert, and ``publish_relay`` / ``publish_terminals`` when those change; these push ``sale``,
``status``, ``relay`` and ``terminal`` events through the attached server. A ``status`` event
is pushed only when the snapshot differs (ignoring ages and uptimes) from the last one
pushed, so subscribers see changes, not the clock.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import structlog

import pointd
from pointd.app.engine import Alert, Engine, EngineStopped
from pointd.cloud.errors import CloudError
from pointd.cloud.errors import NotFound as PaymentMissing
from pointd.cloud.port import CloudPort
from pointd.control.bundle import build_support_bundle, bundle_answer, collect_versions
from pointd.control.errors import MethodError
from pointd.control.methods import DAEMON_METHODS
from pointd.control.protocol import ErrorCode
from pointd.control.server import Caller, Handler
from pointd.core.effects import Effect, FetchIntent, FetchPayment, ReconcileAttempt, TellRegister
from pointd.core.events import (
    CancelRequested,
    Event,
    OverrideDecision,
    OverrideGiven,
    PaymentNotFound,
    PaymentVerified,
    RefundRefusal,
)
from pointd.core.gate import judge_payment
from pointd.core.machine import OVERRIDABLE_STATES, CoreState, Sale, Step
from pointd.core.policy import Policy
from pointd.core.recovery import recover
from pointd.core.reference import MAX_LANE, ExternalReference, ExternalReferenceError
from pointd.core.refunds import Refund, RefundStatus
from pointd.core.states import LaneCondition, SaleState
from pointd.journal.store import Journal, SaleRow

log = structlog.get_logger(__name__)

S = SaleState

# Sales in these states keep the goods in the store until a verified payment or a person
# settles them: the ``holds`` list, and a problem in ``status``.
HOLD_STATES = frozenset({S.HELD, S.ESCALATED, S.BLOCKED})
DEFAULT_SALES_LIMIT = 50
# Alerts kept in memory for status and the bundle; older ones are in the daemon's log.
ALERTS_KEPT = 100
ALERTS_IN_STATUS = 10
BUNDLE_SALES = 500
BUNDLE_AUDIT_ENTRIES = 200
# A live sale in CREATING has its create request in flight: reconciling it now could prove
# "not found" before the create lands and start a second attempt. Its own answer (or the
# reconcile timer after an unknown outcome) settles it.
_NOT_RECONCILED_NOW = frozenset({S.CREATING})
_ASKING_EFFECTS = (FetchIntent, FetchPayment, ReconcileAttempt)
_LANE_TEXT = re.compile(r"[0-9]{1,3}")
# Fields of a status snapshot that change with the clock alone; ignored when deciding
# whether the status changed enough to push an event.
_VOLATILE_STATUS_FIELDS = frozenset({"uptime_s", "last_step_at"})
_VOLATILE_RELAY_FIELDS = frozenset({"last_event_age"})

Publish = Callable[[str, Any], object]


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
        """Rows of ``lane``, ``port``, ``connected``, ``since``."""
        ...


class ConnectionReporter(Protocol):
    """The control server, as far as the handlers use it."""

    def publish(self, topic: str, data: Any) -> int:
        """Push an event to subscribers."""
        ...

    def connection_report(self) -> list[dict[str, Any]]:
        """Open connections and their recent requests."""
        ...


def iso_time(epoch: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC to the second (``2026-11-22T10:05:00Z``)."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    return {
        "sale_id": sale.sale_id,
        "lane": str(sale.lane),
        "state": sale.state.value,
        "amount_cents": sale.amount_cents,
        "payment_id": sale.payment_id,
        "started_at": iso_time(sale.requested_at),
        "updated_at": iso_time(sale.updated_at),
        "terminal_id": sale.terminal_id or None,
        "intent_id": sale.intent_id,
        "attempt": sale.attempt,
        "refusal": sale.refusal.value if sale.refusal else None,
        "detail": sale.detail or None,
    }


def _row_summary(row: SaleRow) -> dict[str, Any]:
    return {
        "sale_id": row.sale_id,
        "lane": str(row.lane),
        "state": row.state.value,
        "amount_cents": row.amount_cents,
        "payment_id": row.payment_id,
        "started_at": iso_time(row.requested_at),
        "updated_at": iso_time(row.updated_at),
        "terminal_id": row.terminal_id or None,
        "intent_id": row.intent_id,
        "attempt": row.attempt,
        "refusal": row.refusal,
        "detail": row.detail or None,
    }


def _hold_row(sale: Sale) -> dict[str, Any]:
    return {
        "sale_id": sale.sale_id,
        "lane": str(sale.lane),
        "state": sale.state.value,
        "amount_cents": sale.amount_cents,
        "payment_id": sale.payment_id,
        "held_since": iso_time(sale.verify_started_at or sale.updated_at),
        "reason": sale.detail or None,
    }


def _alert_row(alert: Alert) -> dict[str, Any]:
    return {
        "at": iso_time(alert.at),
        "sale_id": alert.sale_id,
        "severity": alert.severity,
        "message": alert.message,
    }


def _lane_number(text: str) -> int:
    if _LANE_TEXT.fullmatch(text) is None or not 1 <= int(text) <= MAX_LANE:
        raise MethodError(
            ErrorCode.BAD_PARAMS, f"param 'lane' must be a lane number 1-{MAX_LANE}", param="lane"
        )
    return int(text)


def _epoch_of(text: str) -> float:
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


def _event_detail(event: Event) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(event.to_json())
    body.pop("kind", None)
    body.pop("sale_id", None)
    return body


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
        config: Mapping[str, Any],
        secrets: Sequence[str],
        clock: Callable[[], float],
        started_at: float,
        version: str = pointd.__version__,
        recent_logs: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self._engine = engine
        self._journal = journal
        self._cloud = cloud
        self._terminals = terminals
        self._relay = relay
        self._links = links
        self._config = config
        self._secrets = tuple(s for s in secrets if s)
        self._clock = clock
        self._started_at = started_at
        self._version = version
        self._recent_logs = recent_logs
        self._alerts: deque[Alert] = deque(maxlen=ALERTS_KEPT)
        self._server: ConnectionReporter | None = None
        self._published_states: dict[str, SaleState] = {}
        self._published_status: str | None = None
        self.ready = False  # set by the runtime once the daemon has told systemd READY=1
        self.cloud_reachable: bool | None = None  # None: take the lane terminals' view
        self._table: dict[str, Callable[..., Awaitable[Any]]] = {
            "status": self.status,
            "sales": self.sales,
            "sale": self.sale,
            "holds": self.holds,
            "terminals": self.terminals,
            "relay": self.relay,
            "verify": self.verify,
            "override": self.override,
            "cancel": self.cancel,
            "reconcile": self.reconcile,
            "refund": self.refund,
            "bundle": self.bundle,
        }

    def __repr__(self) -> str:
        return f"DaemonHandlers(journal={str(self._journal.path)!r})"

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

    # --- wiring -----------------------------------------------------------------------------

    def attach(self, server: ConnectionReporter) -> None:
        """Publish events through this server and list its connections in bundles."""
        self._server = server

    def record_audit(self, uid: int, method: str, params: dict[str, Any]) -> None:
        """The server's audit hook: journal a mutating call before it runs (raises if not)."""
        self._journal.record_audit(
            uid=uid, method=method, args=params, outcome="requested", now=self._clock()
        )

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
        if self._server is None:
            return
        try:
            status = self._status()
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

    def publish_relay(self) -> None:
        """Push the relay view (call when the relay's health changes)."""
        self._publish("relay", self._relay_view())
        self.publish_status()

    def publish_terminals(self) -> None:
        """Push every terminal row (call when a terminal was plugged, pulled or changed mode)."""
        for row in self._terminal_rows():
            self._publish("terminal", row)
        self.publish_status()

    def _publish(self, topic: str, data: Any) -> None:
        if self._server is None:
            return
        try:
            self._server.publish(topic, data)
        except Exception:
            # Publishing runs inside engine steps and alerts: a display problem must never
            # fail them.
            log.exception("control_publish_failed", topic=topic)

    # --- read-only methods ------------------------------------------------------------------

    async def status(self, caller: Caller) -> dict[str, Any]:
        """Daemon, cloud, relay, lanes with their sale and register, holds and problems."""
        return self._status()

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
            lane=_lane_number(lane) if lane is not None else None,
            since=_epoch_of(since) if since is not None else None,
            limit=limit,
        )
        return {"sales": [_row_summary(row) for row in rows]}

    async def sale(self, caller: Caller, sale_id: str) -> dict[str, Any]:
        """One sale with its journaled timeline."""
        timeline = [
            {
                "seq": entry.seq,
                "at": iso_time(entry.at),
                "event": entry.kind,
                "detail": _event_detail(entry.event),
            }
            for entry in self._journal.timeline(sale_id)
        ]
        sale = self._engine.state.sales.get(sale_id)
        if sale is None:
            # Settled sales leave the daemon's memory after a few days; the journal keeps them.
            row = self._journal.sale(sale_id)
            if row is None:
                raise MethodError(ErrorCode.NOT_FOUND, f"no sale {sale_id!r} in the journal")
            detail = _row_summary(row)
            detail.update(
                in_memory=False,
                refunds=[refund_row(r) for r in self._engine.refund_book.of_sale(sale_id)],
            )
            return {"sale": detail, "timeline": timeline}
        detail = sale_summary(sale)
        detail.update(
            in_memory=True,
            correlation_id=sale.correlation_id,
            approved_payment_id=sale.approved_payment_id,
            may_hand_over=sale.may_hand_over,
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
        return {"holds": [_hold_row(sale) for sale in self._held(self._engine.state)]}

    async def terminals(self, caller: Caller) -> dict[str, Any]:
        """Each lane's terminal: identity, USB presence, cloud mode, live intent."""
        return {"terminals": self._terminal_rows()}

    async def relay(self, caller: Caller) -> dict[str, Any]:
        """The relay consumer's health and cursor."""
        return self._relay_view()

    async def verify(self, caller: Caller, payment_id: str) -> dict[str, Any]:
        """Fetch the payment now; if it is one of our sales', let the core apply it."""
        state = self._engine.state
        sale = self._sale_of_payment(state, payment_id, None)
        try:
            payment = await self._cloud.get_payment(payment_id)
        except PaymentMissing:
            if sale is not None:
                await self._submit(PaymentNotFound(payment_id=payment_id))
            raise MethodError(
                ErrorCode.NOT_FOUND, f"Mercado Pago has no payment {payment_id} (yet)"
            ) from None
        except CloudError as exc:
            raise MethodError(
                ErrorCode.UNAVAILABLE,
                f"could not ask Mercado Pago about payment {payment_id} "
                f"({type(exc).__name__}); nothing was changed",
            ) from None
        event = PaymentVerified(
            payment_id=payment.id,
            status=payment.status,
            status_detail=payment.status_detail,
            amount_cents=payment.amount_cents,
            currency=payment.currency_id or "",
            collector_id=payment.collector_id or "",
            external_reference=payment.external_reference,
        )
        answer: dict[str, Any] = {
            "payment_id": payment.id,
            "status": payment.status,
            "status_detail": payment.status_detail,
            "amount_cents": payment.amount_cents,
            "currency": payment.currency_id,
            "sale_id": None,
            "sale_state": None,
            "verdict": None,
            "reason": None,
            "changed": False,
        }
        sale = self._sale_of_payment(self._engine.state, payment.id, payment.external_reference)
        if sale is None:
            return answer
        policy = self._engine.policy
        judgement = judge_payment(
            event,
            amount_cents=sale.amount_cents,
            currency=policy.currency,
            collector_id=policy.collector_id,
            external_reference=sale.reference,
            fraud_alerted=payment.id in self._engine.state.fraud_alerts,
            tips_allowed=policy.tips_allowed,
        )
        result = await self._submit(event)
        after = result.state.sales[sale.sale_id]
        answer.update(
            sale_id=sale.sale_id,
            sale_state=after.state.value,
            verdict=judgement.verdict.value,
            reason=judgement.reason,
            changed=result.rejection is None and after != sale,
        )
        return answer

    async def bundle(self, caller: Caller) -> dict[str, Any]:
        """The redacted support bundle as base64."""
        now = self._clock()
        status = self._status()
        status["pending_timers"] = [
            {"sale_id": sale_id, "timer": kind.value}
            for sale_id, kind in self._engine.pending_timers()
        ]
        history = {
            "sales": [_row_summary(row) for row in self._journal.sales(limit=BUNDLE_SALES)],
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
            "alerts": [_alert_row(alert) for alert in self._alerts],
        }
        content = build_support_bundle(
            status=status,
            sales=history,
            config=self._config,
            now=now,
            secrets=self._secrets,
            logs=self._recent_logs() if self._recent_logs is not None else None,
            versions={**collect_versions(), "pointd": self._version},
            connections=self._server.connection_report() if self._server else None,
        )
        return bundle_answer(content, now)

    # --- mutating methods -------------------------------------------------------------------

    async def override(
        self, caller: Caller, sale_id: str, decision: str, reason: str
    ) -> dict[str, Any]:
        """A supervisor's release or void of a sale that cannot settle by itself."""
        sale = self._engine.state.sales.get(sale_id)
        if sale is None:
            raise MethodError(ErrorCode.NOT_FOUND, f"no sale {sale_id!r} (nothing was done)")
        if sale.state not in OVERRIDABLE_STATES:
            allowed = ", ".join(sorted(s.value for s in OVERRIDABLE_STATES))
            raise MethodError(
                ErrorCode.CONFLICT,
                f"sale {sale_id} is {sale.state.value}; an override applies only to a sale "
                f"that is {allowed} (nothing was done)",
            )
        result = await self._submit(
            OverrideGiven(
                sale_id=sale_id, decision=OverrideDecision(decision), reason=reason, uid=caller.uid
            )
        )
        after = result.state.sales[sale_id]
        if result.rejection is not None:
            raise MethodError(
                ErrorCode.CONFLICT,
                f"override of sale {sale_id} refused: {result.rejection.reason} "
                f"(the sale is still {after.state.value})",
            )
        return {"sale_id": sale_id, "state": after.state.value, "decision": decision}

    async def cancel(
        self, caller: Caller, sale_id: str | None = None, lane: str | None = None
    ) -> dict[str, Any]:
        """Ask the core to cancel a sale, named by id or as its lane's current sale."""
        state = self._engine.state
        if sale_id is not None:
            target = state.sales.get(sale_id)
            if target is None:
                raise MethodError(ErrorCode.NOT_FOUND, f"no sale {sale_id!r} (nothing was done)")
        else:
            assert lane is not None  # the server enforces exactly one of sale_id, lane
            found = state.sale_on_lane(_lane_number(lane))
            if found is None:
                raise MethodError(
                    ErrorCode.NOT_FOUND, f"lane {lane} has no sale in progress (nothing was done)"
                )
            target = found
        if target.is_final:
            raise MethodError(
                ErrorCode.CONFLICT,
                f"sale {target.sale_id} already ended {target.state.value} (nothing was done)",
            )
        result = await self._submit(
            CancelRequested(sale_id=target.sale_id, lane=None, by=f"control uid {caller.uid}")
        )
        after = result.state.sales[target.sale_id]
        if result.rejection is not None:
            raise MethodError(
                ErrorCode.CONFLICT,
                f"cancel of sale {target.sale_id} refused: {result.rejection.reason}",
            )
        notice = next(
            (e.notice for e in result.effects if isinstance(e, TellRegister) and e.notice), None
        )
        return {
            "sale_id": target.sale_id,
            "state": after.state.value,
            "cancel_requested": after.cancel_requested,
            "notice": notice.value if notice is not None else None,
        }

    async def reconcile(self, caller: Caller) -> dict[str, Any]:
        """Start the API checks of every unfinished sale now; results follow as sale events."""
        rows, started = reconciliation(self._engine.state, self._clock(), self._engine.policy)
        self._engine.run_effects(started)
        log.info("control_reconcile", checked=len(rows), asked=len(started), uid=caller.uid)
        return {"checked": len(rows), "asked": len(started), "sales": rows}

    async def refund(
        self, caller: Caller, sale_id: str, amount_cents: int | None = None
    ) -> dict[str, Any]:
        """Refund (part of) a paid sale; answers once the refund is journaled and sent off.

        The outcome follows on the sale's register and in ``sale``'s refunds; a refusal
        (unknown sale, no verified payment, more than was paid) is journaled too and
        answered as an error, having sent nothing.
        """
        try:
            result = await self._engine.request_refund(
                sale_id=sale_id, amount_cents=amount_cents, by=f"control uid {caller.uid}",
                uid=caller.uid,
            )
        except EngineStopped:
            raise MethodError(
                ErrorCode.UNAVAILABLE, "the daemon is stopping; nothing was done"
            ) from None
        refund = result.book.refunds.get(result.refund_id or "")
        if refund is None:
            raise MethodError(ErrorCode.CONFLICT, f"refund refused: {result.rejection}")
        if refund.status is RefundStatus.REFUSED:
            assert refund.refusal is not None
            code = (ErrorCode.NOT_FOUND if refund.refusal is RefundRefusal.UNKNOWN_SALE
                    else ErrorCode.CONFLICT)
            raise MethodError(
                code, f"refund of sale {sale_id} refused ({refund.refusal.value}): "
                      f"{refund.detail} (nothing was sent)")
        return refund_row(refund)

    # --- building blocks --------------------------------------------------------------------

    async def _submit(self, event: Event) -> Step:
        try:
            return await self._engine.submit(event)
        except EngineStopped:
            raise MethodError(
                ErrorCode.UNAVAILABLE, "the daemon is stopping; nothing was done"
            ) from None

    @staticmethod
    def _held(state: CoreState) -> list[Sale]:
        return [sale for sale in state.unfinished() if sale.state in HOLD_STATES]

    @staticmethod
    def _sale_of_payment(
        state: CoreState, payment_id: str, external_reference: str | None
    ) -> Sale | None:
        sale_id = state.payments.get(payment_id)
        if sale_id is None and external_reference:
            try:
                ref = ExternalReference.parse(external_reference)
            except ExternalReferenceError:
                return None
            if ref.store == state.store_id:
                sale_id = ref.sale
        return state.sales.get(sale_id) if sale_id is not None else None

    def _terminal_rows(self) -> list[dict[str, Any]]:
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
                }
            )
        return rows

    def _relay_view(self) -> dict[str, Any]:
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
        since = raw.get("since")
        if isinstance(since, int | float) and not isinstance(since, bool):
            view["since"] = iso_time(float(since))
        if raw.get("cursor") is not None:
            view["cursor"] = str(raw["cursor"])
        return view

    def _link_rows(self) -> dict[str, dict[str, Any]]:
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
            }
        return out

    def _status(self) -> dict[str, Any]:
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

        relay = self._relay_view()
        if relay["state"] in ("silent", "down", "unknown"):
            detail = f": {relay['detail']}" if relay.get("detail") else ""
            problems.append(f"relay {relay['state']} since {relay.get('since')}{detail}")

        links = self._link_rows()
        lanes = []
        for row in snapshot:
            number = row.get("lane")
            name = str(number)
            sale = state.sale_on_lane(number) if isinstance(number, int) else None
            register = links.get(name)
            condition = row.get("condition")
            if condition is not None and condition != LaneCondition.READY:
                problems.append(f"lane {name}: {condition}")
            if register is not None and register.get("connected") is False:
                problems.append(f"lane {name}: register not connected since {register['since']}")
            lanes.append(
                {
                    "lane": name,
                    "condition": condition,
                    "terminal": row.get("terminal"),
                    "presence": row.get("presence"),
                    "mode": row.get("mode"),
                    "register": register,
                    "sale": None if sale is None else {
                        "sale_id": sale.sale_id,
                        "state": sale.state.value,
                        "amount_cents": sale.amount_cents,
                        "payment_id": sale.payment_id,
                    },
                }
            )

        held = self._held(state)
        for sale in held:
            why = f" ({sale.detail})" if sale.detail else ""
            problems.append(
                f"sale {sale.sale_id} on lane {sale.lane} is {sale.state.value}: "
                f"do not hand over{why}"
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
            "alerts": [_alert_row(alert) for alert in list(self._alerts)[-ALERTS_IN_STATUS:]],
        }


def _action_name(effect: Effect) -> str:
    if isinstance(effect, FetchPayment):
        return f"fetch payment {effect.payment_id}"
    if isinstance(effect, FetchIntent):
        return f"fetch intent {effect.intent_id}"
    return "reconcile attempt"
