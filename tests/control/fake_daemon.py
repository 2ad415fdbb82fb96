"""A stand-in daemon for control tests: every catalogued method over an in-memory store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pointd.control.bundle import build_support_bundle, bundle_answer
from pointd.control.errors import MethodError
from pointd.control.methods import DAEMON_METHODS, register_daemon_methods
from pointd.control.protocol import ErrorCode
from pointd.control.server import Caller, ControlServer, Handler
from pointd.core.states import LaneCondition, SaleState

ACCESS_TOKEN = "APP_USR-1234567890123456-112203-0a1b2c3d4e5f60718293a4b5c6d7e8f9-987654321"
WEBHOOK_SECRET = "whsec-3f9c1e7a5b2d48e6a0c4f1b9d7e2a5c8"


@dataclass
class FakeDaemon:
    """Handlers that record their calls; the audit hook records into the same timeline."""

    sales: dict[str, dict[str, Any]] = field(default_factory=dict)
    timeline: list[tuple[str, Any]] = field(default_factory=list)
    audit_fails: bool = False
    lane_condition: str = LaneCondition.READY
    channels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sales.setdefault(
            "S-1",
            {
                "sale_id": "S-1",
                "lane": "1",
                "state": SaleState.HANDED_OVER,
                "amount_cents": 1500,
                "payment_id": "1234567890",
                "started_at": "2026-11-22T10:00:00Z",
            },
        )

    def record_audit(self, uid: int, method: str, params: dict[str, Any]) -> None:
        if self.audit_fails:
            raise OSError("disk full")
        self.timeline.append(("audit", (uid, method, params)))

    def hold(self, sale_id: str, lane: str = "1") -> None:
        self.sales[sale_id] = {
            "sale_id": sale_id,
            "lane": lane,
            "state": SaleState.HELD,
            "amount_cents": 2599,
            "payment_id": "555",
            "started_at": "2026-11-22T10:05:00Z",
        }

    def handlers(self) -> dict[str, Handler]:
        def recorded(name: str) -> Handler:
            async def handler(caller: Caller, **params: Any) -> Any:
                self.timeline.append(("call", (caller.uid, name, params)))
                return await getattr(self, f"do_{name}")(**params)

            return handler

        return {name: recorded(name) for name in DAEMON_METHODS}

    def calls(self) -> list[tuple[str, dict[str, Any]]]:
        return [(name, params) for kind, (_uid, name, params) in self.timeline if kind == "call"]

    def audits(self) -> list[tuple[int, str, dict[str, Any]]]:
        return [entry for kind, entry in self.timeline if kind == "audit"]

    def _sale(self, sale_id: str) -> dict[str, Any]:
        if sale_id not in self.sales:
            raise MethodError(ErrorCode.NOT_FOUND, f"no sale {sale_id!r}")
        return self.sales[sale_id]

    def _lane_sale(self, lane: str) -> dict[str, Any] | None:
        live = [s for s in self.sales.values() if s["lane"] == lane and s["state"] == "held"]
        return live[0] if live else None

    async def do_status(self) -> dict[str, Any]:
        held = [s for s in self.sales.values() if s["state"] == SaleState.HELD]
        return {
            "version": "0.1.0",
            "started_at": "2026-11-22T09:00:00Z",
            "ready": True,
            "relay": {"connected": True},
            "lanes": [
                {
                    "lane": "1",
                    "condition": self.lane_condition,
                    "terminal": "PAX_A910__SMARTPOS1",
                    "sale": self._lane_sale("1"),
                }
            ],
            "holds": len(held),
            # Worded as the real daemon words them (pointd.app.control_views.StatusView).
            "problems": [
                *([f"lane 1: {self.lane_condition}"] if self.lane_condition != "ready" else []),
                *(f"sale {s['sale_id']} on lane {s['lane']} is held: do not hand over"
                  for s in held),
            ],
        }

    async def do_sales(self, **filters: Any) -> dict[str, Any]:
        rows = [
            s
            for s in self.sales.values()
            if all(s.get(k) == v for k, v in filters.items() if k in ("lane", "state"))
        ]
        return {"sales": rows[: filters.get("limit", 50)]}

    async def do_sale(self, sale_id: str) -> dict[str, Any]:
        return {
            "sale": self._sale(sale_id),
            "timeline": [
                {
                    "at": "2026-11-22T10:00:00Z",
                    "event": "requested",
                    "state": "requested",
                    "detail": None,
                }
            ],
        }

    async def do_holds(self) -> dict[str, Any]:
        return {"holds": [s for s in self.sales.values() if s["state"] == SaleState.HELD]}

    async def do_terminals(self) -> dict[str, Any]:
        return {
            "terminals": [
                {
                    "lane": "1",
                    "terminal_id": "PAX_A910__SMARTPOS1",
                    "serial": "SMARTPOS1",
                    "usb_present": True,
                    "mode": "PDV",
                    "live_intent": None,
                }
            ]
        }

    async def do_relay(self) -> dict[str, Any]:
        return {"connected": True, "cursor": "c-42", "backlog": 0}

    async def do_verify(self, payment_id: str) -> dict[str, Any]:
        return {"payment_id": payment_id, "status": "approved"}

    async def do_override(self, decision: str, reason: str, sale_id: str | None = None,
                          correlation_id: str | None = None,
                          lane: str | None = None) -> dict[str, Any]:
        if sale_id is None:
            named = [s for s in self.sales.values() if s.get("correlation_id") == correlation_id]
            if not named:
                raise MethodError(ErrorCode.NOT_FOUND, f"no sale with receipt {correlation_id!r}")
            sale_id = named[0]["sale_id"]
        sale = self._sale(sale_id)
        if sale["state"] != SaleState.HELD:
            raise MethodError(ErrorCode.CONFLICT, f"sale {sale_id} is {sale['state']}, not held")
        sale["state"] = SaleState.OVERRIDDEN if decision == "release" else SaleState.DECLINED
        return {"sale_id": sale_id, "state": sale["state"]}

    async def do_cancel(self, sale_id: str | None = None, lane: str | None = None) -> Any:
        return {"canceled": sale_id or lane}

    async def do_reconcile(self) -> dict[str, Any]:
        return {"checked": len(self.sales)}

    async def do_refund(self, sale_id: str, amount_cents: int | None = None) -> dict[str, Any]:
        sale = self._sale(sale_id)
        return {"sale_id": sale_id, "refunded_cents": amount_cents or sale["amount_cents"]}

    async def do_bundle(self) -> dict[str, Any]:
        content = build_support_bundle(
            status=await self.do_status(),
            sales=list(self.sales.values()),
            config={"cloud": {"access_token": ACCESS_TOKEN}, "lanes": ["1"]},
            logs=[
                f"GET /v1/payments Authorization: Bearer {ACCESS_TOKEN}",
                f"secret={WEBHOOK_SECRET}",
            ],
            secrets=[ACCESS_TOKEN, WEBHOOK_SECRET],
            now=1_795_000_000.0,
        )
        return bundle_answer(content, 1_795_000_000.0)

    async def do_backup(self) -> dict[str, Any]:
        return {"name": "journal-20261122T100000Z.sqlite3", "size": 0, "sha256": "", "sales": 0}

    async def do_backup_chunk(self, name: str, offset: int) -> dict[str, Any]:
        raise MethodError(ErrorCode.NOT_FOUND, f"no backup {name}")

    async def do_integrator(self) -> dict[str, Any]:
        return {"event_channel_devices": self.channels, "email": "email" in self.channels}

    async def do_device_events(self, email: bool) -> dict[str, Any]:
        self.channels = ["email"] if email else []
        return await self.do_integrator()


def serve(daemon: FakeDaemon, path: str, **options: Any) -> ControlServer:
    """A control server with the fake daemon's handlers registered (not started)."""
    server = ControlServer(path, record_audit=daemon.record_audit, **options)
    register_daemon_methods(server, daemon.handlers())
    return server
