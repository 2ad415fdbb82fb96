"""Plain-text views of control-socket results for pointctl, and the status problem check.

Every renderer is pure (result in, text out) and tolerant: a field it does not know is
ignored, a shape it does not know is shown as indented JSON, so a newer daemon never breaks
an older pointctl.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pointd.core.states import LaneCondition, SaleState

# A lane sale in one of these states means goods must not leave and someone should look.
ATTENTION_STATES = frozenset({SaleState.HELD, SaleState.ESCALATED, SaleState.BLOCKED})


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
    """One ``key: value`` line per field, nested objects as compact JSON."""
    if not data:
        return "(empty)"
    width = max(len(str(key)) for key in data)
    return "\n".join(f"{str(key) + ':':<{width + 1}} {_cell(value)}" for key, value in data.items())


def money(cents: Any) -> str:
    """Integer cents as units with two decimals; anything else as given."""
    if isinstance(cents, int) and not isinstance(cents, bool):
        sign = "-" if cents < 0 else ""
        return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"
    return _cell(cents)


def status_problems(status: Mapping[str, Any]) -> list[str]:
    """Everything in a status snapshot that needs a person: the daemon's list plus our checks."""
    listed = status.get("problems")
    problems: list[str] = [str(p) for p in listed] if isinstance(listed, list) else []
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
    if isinstance(holds, int) and holds > 0:
        problems.append(f"{holds} sale(s) held")
    return list(dict.fromkeys(problems))


def render_status(status: Mapping[str, Any]) -> str:
    """The status snapshot: a header, a lane table and the problems."""
    if not isinstance(status, Mapping) or "lanes" not in status:
        return _as_json(status)
    relay = status.get("relay")
    relay_text = "-"
    if isinstance(relay, Mapping):
        relay_text = "connected" if relay.get("connected") else "NOT connected"
        if relay.get("connected") is None and relay.get("state"):
            relay_text = str(relay["state"])
    header = key_values(
        {
            "pointd": status.get("version"),
            "started": status.get("started_at"),
            "ready": status.get("ready"),
            "relay": relay_text,
            "holds": status.get("holds"),
        }
    )
    rows = []
    for lane in _rows(status.get("lanes")):
        raw_sale = lane.get("sale")
        sale: Mapping[str, Any] = raw_sale if isinstance(raw_sale, Mapping) else {}
        rows.append(
            [
                lane.get("lane"),
                lane.get("condition"),
                lane.get("terminal"),
                sale.get("sale_id"),
                sale.get("state"),
                money(sale.get("amount_cents")) if sale else None,
            ]
        )
    lanes = table(["lane", "condition", "terminal", "sale", "state", "amount"], rows)
    problems = status_problems(status)
    footer = "problems:\n" + "\n".join(f"  ! {p}" for p in problems) if problems else "no problems"
    return f"{header}\n\n{lanes}\n\n{footer}"


def render_sales(result: Any) -> str:
    """The sales list as a table."""
    sales = _rows(result.get("sales") if isinstance(result, Mapping) else None)
    if not sales:
        return "no sales" if isinstance(result, Mapping) else _as_json(result)
    return table(
        ["sale", "lane", "state", "amount", "started", "payment"],
        [
            [
                s.get("sale_id"),
                s.get("lane"),
                s.get("state"),
                money(s.get("amount_cents")),
                s.get("started_at"),
                s.get("payment_id"),
            ]
            for s in sales
        ],
    )


def render_sale(result: Any) -> str:
    """One sale's fields, then its timeline."""
    if not isinstance(result, Mapping) or not isinstance(result.get("sale"), Mapping):
        return _as_json(result)
    sale = dict(result["sale"])
    if "amount_cents" in sale:
        sale["amount"] = money(sale.pop("amount_cents"))
    timeline = table(
        ["at", "event", "state", "detail"],
        [
            [t.get("at"), t.get("event"), t.get("state"), t.get("detail")]
            for t in _rows(result.get("timeline"))
        ],
    )
    return f"{key_values(sale)}\n\n{timeline}"


def render_holds(result: Any) -> str:
    """Held and escalated sales as a table."""
    holds = _rows(result.get("holds") if isinstance(result, Mapping) else None)
    if not holds:
        return "no held sales" if isinstance(result, Mapping) else _as_json(result)
    return table(
        ["sale", "lane", "state", "amount", "payment", "held since", "reason"],
        [
            [
                h.get("sale_id"),
                h.get("lane"),
                h.get("state"),
                money(h.get("amount_cents")),
                h.get("payment_id"),
                h.get("held_since"),
                h.get("reason"),
            ]
            for h in holds
        ],
    )


def render_terminals(result: Any) -> str:
    """Terminals as a table."""
    terminals = _rows(result.get("terminals") if isinstance(result, Mapping) else None)
    if not terminals:
        return "no terminals configured" if isinstance(result, Mapping) else _as_json(result)
    return table(
        ["lane", "terminal", "serial", "usb", "mode", "live intent"],
        [
            [
                t.get("lane"),
                t.get("terminal_id"),
                t.get("serial"),
                _presence(t.get("usb_present")),
                t.get("mode"),
                t.get("live_intent"),
            ]
            for t in terminals
        ],
    )


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


def _presence(value: Any) -> str | None:
    if isinstance(value, bool):
        return "present" if value else "ABSENT"
    return None


def _rows(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [row for row in value if isinstance(row, Mapping)]


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _as_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
