"""The catalogue of methods and topics the daemon serves on its control socket.

One table names every daemon method with its params, access and description, so the daemon
(which supplies the handlers), pointctl and docs/control-socket.md cannot drift apart:
``register_daemon_methods`` refuses a handler set that misses or adds a method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pointd.control.server import ControlServer, Handler, Param
from pointd.core.states import SaleState

# verify asks Mercado Pago GET /v1/payments/{id}; once a second keeps a technician's loop from
# eating the account's API budget that the daemon's own back-off needs.
VERIFY_MIN_INTERVAL = 1.0
# reconcile walks every open sale and the terminals' queues against the API.
RECONCILE_MIN_INTERVAL = 10.0
# A bundle holds logs and recent sales; building it costs the daemon noticeable work.
BUNDLE_MIN_INTERVAL = 5.0
# A backup reads the whole journal in a worker thread (one at a time: a second call while
# one runs is refused); a loop calling it must not keep the disk busy.
BACKUP_MIN_INTERVAL = 1.0

MAX_SALES_LIMIT = 1000
MAX_REASON_LENGTH = 500


@dataclass(frozen=True)
class MethodSpec:
    """A daemon method's declaration, without its handler."""

    mutating: bool
    description: str
    params: Mapping[str, Param]
    min_interval: float = 0.0
    exactly_one_of: tuple[str, ...] = ()


_SALE_ID = Param(str, "the sale id (as shown by pointctl sales)", minimum=1)

DAEMON_METHODS: dict[str, MethodSpec] = {
    "status": MethodSpec(
        False,
        "Daemon, lanes, terminals, relay and open problems in one snapshot.",
        {},
    ),
    "sales": MethodSpec(
        False,
        "Recent sales, newest first, optionally filtered.",
        {
            "lane": Param(str, "only this lane", required=False, minimum=1),
            "state": Param(
                str, "only sales in this state", required=False, choices=tuple(SaleState)
            ),
            "since": Param(
                str,
                "only sales changed at or after this ISO-8601 time (UTC without an offset)",
                required=False,
            ),
            "limit": Param(
                int,
                "at most this many (default 50)",
                required=False,
                minimum=1,
                maximum=MAX_SALES_LIMIT,
            ),
        },
    ),
    "sale": MethodSpec(False, "One sale with its full journaled timeline.", {"sale_id": _SALE_ID}),
    "holds": MethodSpec(
        False, "Sales held, escalated or blocked: goods must not leave until settled.", {}
    ),
    "terminals": MethodSpec(
        False, "Configured terminals: lane, USB presence, cloud mode, live intent.", {}
    ),
    "relay": MethodSpec(False, "Relay consumer: connection, cursor, last delivery, backlog.", {}),
    "verify": MethodSpec(
        False,
        "Re-check a payment with Mercado Pago now and apply the verified result.",
        {"payment_id": Param(str, "the Mercado Pago payment id", minimum=1)},
        min_interval=VERIFY_MIN_INTERVAL,
    ),
    "override": MethodSpec(
        True,
        "Supervisor decision on a held or escalated sale: release goods or void it.",
        {
            "sale_id": Param(str, "the sale id", required=False, minimum=1),
            "correlation_id": Param(
                str, "or the register's correlation id (its receipt)", required=False, minimum=1
            ),
            "lane": Param(
                str, "with correlation_id: the lane, when two lanes used it", required=False,
                minimum=1,
            ),
            "decision": Param(str, "release or void", choices=("release", "void")),
            "reason": Param(str, "why, for the journal", minimum=3, maximum=MAX_REASON_LENGTH),
        },
        exactly_one_of=("sale_id", "correlation_id"),
    ),
    "cancel": MethodSpec(
        True,
        "Cancel a sale (by id or the lane's current sale) while its intent is still open.",
        {
            "sale_id": Param(str, "the sale to cancel", required=False, minimum=1),
            "lane": Param(str, "cancel this lane's current sale", required=False, minimum=1),
        },
        exactly_one_of=("sale_id", "lane"),
    ),
    "reconcile": MethodSpec(
        True,
        "Ask Mercado Pago now about every unfinished sale; results follow as sale events.",
        {},
        min_interval=RECONCILE_MIN_INTERVAL,
    ),
    "refund": MethodSpec(
        True,
        "Refund (part of) a paid sale; journaled, sent with an idempotency key, never more "
        "than was paid. The outcome shows on the sale's register and in `sale`.",
        {
            "sale_id": _SALE_ID,
            "amount_cents": Param(
                int,
                "partial amount in cents; omitted = full refund",
                required=False,
                minimum=1,
            ),
        },
    ),
    "bundle": MethodSpec(
        False,
        "Support bundle (tar.gz, secrets removed) as base64 for pointctl bundle.",
        {},
        min_interval=BUNDLE_MIN_INTERVAL,
    ),
    "backup": MethodSpec(
        False,
        "Copy the journal now (SQLite online backup, consistent while the daemon runs); "
        "fetch the copy with backup_chunk.",
        {},
        min_interval=BACKUP_MIN_INTERVAL,
    ),
    "backup_chunk": MethodSpec(
        False,
        "A piece of a backup, as base64 (pointctl backup joins them and checks the sha256).",
        {
            "name": Param(str, "the backup's name, as backup answered", minimum=1, maximum=64),
            "offset": Param(int, "where the piece starts, in bytes", minimum=0),
        },
    ),
    "integrator": MethodSpec(
        False,
        "Mercado Pago's integrator record for this account: the device-event channels on.",
        {},
    ),
    "device_events": MethodSpec(
        True,
        "Turn Mercado Pago's e-mail channel for device events (terminal restarts, logouts, "
        "PDV/STANDALONE changes) on or off; it starts about 30 minutes after enabling.",
        {"email": Param(bool, "true: e-mail device events; false: stop")},
    ),
}

DAEMON_TOPICS: dict[str, str] = {
    "status": "the status snapshot changed (data: same shape as the status result)",
    "sale": "a sale changed state (data: sale_id, lane, state, amount_cents, at)",
    "terminal": "a terminal was plugged, unplugged or changed mode (data: one terminals row)",
    "relay": "the relay connection changed (data: the relay result)",
}


def register_daemon_methods(server: ControlServer, handlers: Mapping[str, Handler]) -> None:
    """Register every catalogued method with its handler and every topic; refuse gaps."""
    missing = sorted(set(DAEMON_METHODS) - set(handlers))
    extra = sorted(set(handlers) - set(DAEMON_METHODS))
    if missing or extra:
        raise ValueError(f"handlers do not match the catalogue: missing={missing} extra={extra}")
    for name, spec in DAEMON_METHODS.items():
        server.register(
            name,
            handlers[name],
            mutating=spec.mutating,
            params=spec.params,
            description=spec.description,
            min_interval=spec.min_interval,
            exactly_one_of=spec.exactly_one_of,
        )
    for topic, description in DAEMON_TOPICS.items():
        server.register_topic(topic, description)
