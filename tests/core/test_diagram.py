"""The committed lifecycle diagram is the one the transition table draws."""

from __future__ import annotations

from pathlib import Path

import pytest

from pointd.core import diagram
from pointd.core.states import SaleState

DOC = Path(__file__).resolve().parents[2] / "docs" / "sale-lifecycle.md"


def test_committed_diagram_is_current() -> None:
    document = DOC.read_text(encoding="utf-8")
    assert diagram.embed(document, diagram.render()) == document, (
        "docs/sale-lifecycle.md is stale: run python -m pointd.core.diagram "
        "--write docs/sale-lifecycle.md")


def test_every_state_appears_in_the_diagram() -> None:
    rendered = diagram.render()
    for state in SaleState:
        if state is SaleState.REQUESTED:
            assert "REQUESTED --> CREATING" in rendered
        assert f"{state.name} " in rendered


def test_check_mode_detects_staleness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"x\n{diagram.BEGIN_MARKER}\nold\n{diagram.END_MARKER}\ny\n")
    assert diagram.main(["--check", str(doc)]) == 1
    assert diagram.main(["--write", str(doc)]) == 0
    assert diagram.main(["--check", str(doc)]) == 0
    assert doc.read_text().startswith("x\n")
    assert doc.read_text().endswith("y\n")
    assert diagram.main([]) == 0
    assert capsys.readouterr().out.startswith("stateDiagram-v2")
