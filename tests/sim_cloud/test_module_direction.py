"""The simulator's HTTP surface and its server depend one way: server → app, never back."""

from __future__ import annotations

import ast
from pathlib import Path

import pointd.sim.cloud.app as app_module
import pointd.sim.cloud.server as server_module


def imported(module: object) -> set[str]:
    source = Path(str(getattr(module, "__file__", ""))).read_text(encoding="utf-8")
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_app_never_imports_the_server_even_for_types() -> None:
    assert "pointd.sim.cloud.server" not in imported(app_module)
    assert "pointd.sim.cloud.app" in imported(server_module)
