"""Plain-text views of control-socket results for pointctl, and the status problem check.

Every renderer is pure (result in, text out) and tolerant: a field it does not know is
ignored, a shape it does not know is shown as indented JSON, so a newer daemon never breaks
an older pointctl. Times are shown as the daemon sends them (ISO-8601 UTC to the second);
an epoch number where a time belongs (an older daemon) is shown the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pointd.core.states import LaneCondition, SaleState

# A lane sale in one of these states means goods must not leave and someone should look.
ATTENTION_STATES = frozenset({SaleState.HELD, SaleState.ESCALATED, SaleState.BLOCKED})
# Keys whose values are moments; numbers there are epoch seconds from an older daemon.
_TIME_KEYS = frozenset({"at", "since", "started_at", "updated_at", "opened_at", "held_since",
                        "requested_at", "verify_started_at", "last_step_at", "last_event_at",
                        "created_at"})
# Epoch seconds below this are durations or counts, not moments (2001-09-09).
_EPOCH_FLOOR = 1_000_000_000


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns sized to their widest cell; ``-`` for empty cells."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], len(value))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def key_values(data: Mapping[str, Any]) -> str:
    """One ``key: value`` line per field; nested objects as ``k=v`` lists, times as ISO."""
    if not data:
        return "(empty)"
    width = max(len(str(key)) for key in data)
    return "\n".join(
        f"{str(key) + ':':<{width + 1}} {_field(str(key), value)}" for key, value in data.items()
    )


def money(cents: Any) -> str:
    """Integer cents as units with two decimals; anything else as given."""
    if isinstance(cents, int) and not isinstance(cents, bool):
        sign = "-" if cents < 0 else ""
        return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"
    return _cell(cents)


def seconds(value: Any) -> str:
    """A duration in seconds, readable: ``4.2 s``, ``3 min 05 s``, ``2 h 10 min``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return _cell(value)
    if value < 60:
        return f"{value:.1f} s"
    whole = int(value)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600:02d} h"


def status_problems(status: Mapping[str, Any]) -> list[str]:
    """Everything in a status snapshot that needs a person.

    The daemon's own ``problems`` list is the answer when it sends one (each problem once);
    for a daemon that sends none, pointctl derives them from the lanes, relay and holds.
    """
    listed = status.get("problems")
    if isinstance(listed, list):
        problems = [str(p) for p in listed]
        if status.get("ready") is False and status.get("healthy") is not False:
            problems.insert(0, "daemon not ready")
        return list(dict.fromkeys(problems))
    problems = []
    if status.get("ready") is False:
        problems.append("daemon not ready")
    relay = status.get("relay")
    if isinstance(relay, Mapping) and relay.get("connected") is False:
        problems.append("relay not connected")
    for lane in _rows(status.get("lanes")):
        name = lane.get("lane", "?")
        condition = lane.get("condition")
        if condition is not None and condition != LaneCondition.READY:
            problems.append(f"lane {name}: {condition}")
        sale = lane.get("sale")
        if isinstance(sale, Mapping) and sale.get("state") in ATTENTION_STATES:
            problems.append(f"lane {name}: sale {sale.get('sale_id')} {sale.get('state')}")
    holds = status.get("holds")
    if isinstance(holds, int) and holds > 0 and not any("sale" in p for p in problems):
        problems.append(f"{holds} sale(s) held")
    return list(dict.fromkeys(problems))


def render_status(status: Mapping[str, Any]) -> str:
    """The status snapshot: a header, a lane table and the problems."""
    if not isinstance(status, Mapping) or "lanes" not in status:
        return _as_json(status)
    cloud = status.get("cloud")
    reachable = cloud.get("reachable") if isinstance(cloud, Mapping) else None
    header = key_values(
        {
            "pointd": status.get("version"),
            "started": status.get("started_at"),
            "uptime": seconds(status.get("uptime_s")),
            "ready": status.get("ready"),
            "mercado pago": _reachability(reachable),
            "relay": _relay_text(status.get("relay")),
            "holds": status.get("holds"),
        }
    )
    rows = []
    for lane in _rows(status.get("lanes")):
        raw_sale = lane.get("sale")
        sale: Mapping[str, Any] = raw_sale if isinstance(raw_sale, Mapping) else {}
        register = lane.get("register")
        link = None
        if isinstance(register, Mapping) and isinstance(register.get("connected"), bool):
            link = "up" if register["connected"] else "DOWN"
        rows.append(
            [
                lane.get("lane"),
                lane.get("condition"),
                lane.get("terminal"),
                link,
                sale.get("sale_id"),
                sale.get("correlation_id"),
                sale.get("state"),
                money(sale.get("amount_cents")) if sale else None,
            ]
        )
    lanes = table(
        ["lane", "condition", "terminal", "register", "sale", "receipt", "state", "amount"], rows
    )
    problems = status_problems(status)
    footer = "problems:\n" + "\n".join(f"  ! {p}" for p in problems) if problems else "no problems"
    return f"{header}\n\n{lanes}\n\n{footer}"


def render_sales(result: Any) -> str:
    """The sales list as a table."""
    sales = _rows(result.get("sales") if isinstance(result, Mapping) else None)
    if not sales:
        return "no sales" if isinstance(result, Mapping) else _as_json(result)
    return table(
        ["sale", "receipt", "lane", "state", "amount", "started", "updated", "payment"],
        [
            [
                s.get("sale_id"),
                s.get("correlation_id"),
                s.get("lane"),
                s.get("state"),
                money(s.get("amount_cents")),
                _moment(s.get("started_at")),
                _moment(s.get("updated_at")),
                s.get("payment_id"),
            ]
            for s in sales
        ],
    )


def render_sale(result: Any) -> str:
    """One sale's fields, its refunds, then its timeline (the state each event left)."""
    if not isinstance(result, Mapping) or not isinstance(result.get("sale"), Mapping):
        return _as_json(result)
    sale = dict(result["sale"])
    if "amount_cents" in sale:
        sale["amount"] = money(sale.pop("amount_cents"))
    refunds = _rows(sale.pop("refunds", None))
    parts = [key_values(sale)]
    if refunds:
        parts.append("refunds:\n" + table(
            ["refund", "status", "amount", "via", "requested", "detail"],
            [[r.get("refund_id"), r.get("status"), money(r.get("amount_cents")), r.get("via"),
              _moment(r.get("requested_at")), r.get("detail") or r.get("refusal")]
             for r in refunds],
        ))
    parts.append(table(
        ["at", "event", "state", "detail"],
        [
            [_moment(t.get("at")), t.get("event"), t.get("state"), _inline(t.get("detail"))]
            for t in _rows(result.get("timeline"))
        ],
    ))
    return "\n\n".join(parts)


def render_holds(result: Any) -> str:
    """Held and escalated sales as a table, with the register's receipt."""
    holds = _rows(result.get("holds") if isinstance(result, Mapping) else None)
    if not holds:
        return "no held sales" if isinstance(result, Mapping) else _as_json(result)
    return table(
        ["sale", "receipt", "lane", "state", "amount", "payment", "held since", "reason"],
        [
            [
                h.get("sale_id"),
                h.get("correlation_id"),
                h.get("lane"),
                h.get("state"),
                money(h.get("amount_cents")),
                h.get("payment_id"),
                _moment(h.get("held_since")),
                h.get("reason"),
            ]
            for h in holds
        ],
    )


def render_terminals(result: Any) -> str:
    """Terminals as a table, what the last device refresh saw change, then any advice."""
    terminals = _rows(result.get("terminals") if isinstance(result, Mapping) else None)
    if not terminals:
        return "no terminals configured" if isinstance(result, Mapping) else _as_json(result)
    text = table(
        ["lane", "terminal", "serial", "usb", "mode", "condition", "live sale", "last change"],
        [
            [
                t.get("lane"),
                t.get("terminal_id"),
                t.get("serial"),
                _presence(t.get("usb_present")),
                t.get("mode"),
                t.get("condition"),
                t.get("live_sale"),
                _change(t),
            ]
            for t in terminals
        ],
    )
    notes = []
    for t in terminals:
        lane = _cell(t.get("lane"))
        for key in ("problem", "pdv_switch", "catalog_error"):
            if t.get(key):
                notes.append(f"  lane {lane}: {_cell(t.get(key))}")
        for change in _rows(t.get("changes")):
            at, what = _moment(change.get("at")), _cell(change.get("change"))
            notes.append(f"  lane {lane}: {at} {what}")
    return text + ("\n\nnotes and recent changes:\n" + "\n".join(dict.fromkeys(notes))
                   if notes else "")


def render_relay(result: Any) -> str:
    """The relay consumer's health: state, since when, the last delivery and its age."""
    if not isinstance(result, Mapping):
        return _as_json(result)
    shown = dict(result)
    age = shown.pop("last_event_age", None)
    at = shown.pop("last_event_at", None)
    if at is not None or age is not None:
        shown["last event"] = f"{_moment(at)} ({seconds(age)} ago)" if age is not None \
            else _moment(at)
    return key_values(shown)


def render_connections(result: Any) -> str:
    """Open control connections: who, since when, and their last request."""
    connections = _rows(result.get("connections") if isinstance(result, Mapping) else None)
    if not connections:
        return "no connections" if isinstance(result, Mapping) else _as_json(result)
    rows = []
    for c in connections:
        requests = _rows(c.get("requests"))
        last = requests[-1] if requests else {}
        rows.append([
            c.get("pid"), c.get("uid"), c.get("access"), _moment(c.get("opened_at")),
            ", ".join(str(t) for t in c.get("topics") or []) or ("all" if c.get("subscribed")
                                                              else None),
            len(requests),
            f"{_cell(last.get('method'))} {_cell(last.get('outcome'))} at "
            f"{_moment(last.get('at'))}" if last else None,
        ])
    return table(["pid", "uid", "access", "opened", "events", "requests", "last request"], rows)


def render_reconcile(result: Any) -> str:
    """What reconcile asked Mercado Pago about each unfinished sale."""
    if not isinstance(result, Mapping):
        return _as_json(result)
    head = key_values({k: v for k, v in result.items() if k != "sales"})
    sales = _rows(result.get("sales"))
    if not sales:
        return head
    rows = [[s.get("sale_id"), s.get("state"), s.get("action")] for s in sales]
    return f"{head}\n\n{table(['sale', 'state', 'action'], rows)}"


def render_methods(result: Any) -> str:
    """The method list: name, access, params and description."""
    methods = _rows(result.get("methods") if isinstance(result, Mapping) else None)
    rows = []
    for method in methods:
        params = method.get("params")
        params = params if isinstance(params, Mapping) else {}
        alternatives = method.get("exactly_one_of")
        alternatives = alternatives if isinstance(alternatives, list) else []
        words = [
            name if isinstance(spec, Mapping) and spec.get("required") else f"[{name}]"
            for name, spec in params.items()
            if name not in alternatives
        ]
        if alternatives:
            words.append("(" + " | ".join(str(a) for a in alternatives) + ")")
        shown = " ".join(words)
        rows.append(
            [
                method.get("name"),
                "admin" if method.get("mutating") else "read",
                shown,
                method.get("description"),
            ]
        )
    text = table(["method", "access", "params", "description"], rows)
    topics = result.get("topics") if isinstance(result, Mapping) else None
    if isinstance(topics, Mapping) and topics:
        text += "\n\nevent topics:\n" + "\n".join(f"  {k}: {v}" for k, v in topics.items())
    return text


def render_mapping(result: Any) -> str:
    """Any flat result as ``key: value`` lines."""
    return key_values(result) if isinstance(result, Mapping) else _as_json(result)


def render_event(topic: str, data: Any) -> str:
    """One pushed event as a line for ``pointctl watch``'s log of what happened."""
    if not isinstance(data, Mapping):
        return f"{topic}: {_inline(data)}"
    if topic == "sale":
        return (f"sale {_cell(data.get('sale_id'))} lane {_cell(data.get('lane'))}: "
                f"{_cell(data.get('state'))} {money(data.get('amount_cents'))}"
                + (f" ({data['detail']})" if data.get("detail") else ""))
    if topic == "terminal":
        change = _change(data)
        return (f"terminal {_cell(data.get('terminal_id'))} lane {_cell(data.get('lane'))}: "
                f"{_cell(data.get('condition'))}" + (f", {change}" if change else ""))
    if topic == "relay":
        return f"relay {_cell(data.get('state'))} since {_moment(data.get('since'))}"
    return topic


def _reachability(reachable: Any) -> str:
    if reachable is True:
        return "reachable"
    if reachable is False:
        return "NOT reachable"
    return _cell(reachable)


def _relay_text(relay: Any) -> str:
    if not isinstance(relay, Mapping):
        return "-"
    state = relay.get("state")
    if state == "disabled":
        return "none configured (polling Mercado Pago)"
    text = "connected" if relay.get("connected") else f"NOT connected ({_cell(state)})"
    if relay.get("since"):
        text += f" since {_moment(relay.get('since'))}"
    return text


def _change(terminal: Mapping[str, Any]) -> str | None:
    changes = _rows(terminal.get("changes"))
    if not changes:
        return None
    return f"{_moment(changes[0].get('at'))} {_cell(changes[0].get('change'))}"


def _presence(value: Any) -> str | None:
    if isinstance(value, bool):
        return "present" if value else "ABSENT"
    return None


def _rows(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [row for row in value if isinstance(row, Mapping)]


def _moment(value: Any) -> str:
    """A time as ISO-8601 UTC; epoch seconds (an older daemon's) converted, text as sent."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
            and value >= _EPOCH_FLOOR:
        try:
            moment = dt.datetime.fromtimestamp(value, tz=dt.UTC)
        except (OverflowError, OSError, ValueError):
            return _cell(value)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return _cell(value)


def _field(key: str, value: Any) -> str:
    if key in _TIME_KEYS:
        return _moment(value)
    return _inline(value)


def _inline(value: Any) -> str:
    """A nested value on one line: ``k=v, k=v`` for objects, comma-joined lists."""
    if isinstance(value, Mapping):
        if not value:
            return "-"
        return ", ".join(f"{k}={_field(str(k), v)}" for k, v in value.items())
    if isinstance(value, list):
        if not value:
            return "-"
        if all(not isinstance(item, Mapping | list) for item in value):
            return ", ".join(_cell(item) for item in value)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _cell(value)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}" if math.isfinite(value) and abs(value) < 1e15 else str(value)
    if isinstance(value, Mapping | list):
        return _inline(value)
    return str(value)


def _as_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
