"""TOML text for the configurations the rig writes (tables, arrays of tables, scalars)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def toml_text(table: Mapping[str, Any]) -> str:
    """A TOML document: nested tables, arrays of tables, and str/int/float/bool/Path values."""
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, str | Path):
            return json.dumps(str(value))  # a TOML basic string for the characters used here
        raise TypeError(f"no TOML form for {value!r}")

    def body(mapping: Mapping[str, Any], prefix: str) -> None:
        for key, value in mapping.items():
            if not isinstance(value, dict | list):
                lines.append(f"{key} = {scalar(value)}")
        for key, value in mapping.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                lines.append(f"\n[{name}]")
                body(value, name + ".")
            elif isinstance(value, list):
                for item in value:
                    lines.append(f"\n[[{name}]]")
                    body(item, name + ".")

    body(table, "")
    return "\n".join(lines).strip() + "\n"


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` laid over it, table by table (arrays are replaced whole)."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
