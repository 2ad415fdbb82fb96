"""The layer contracts of docs/architecture.md, checked with import-linter on the real tree.

The contracts live in pyproject.toml (``[tool.importlinter]``). A second check walks the
import graph itself: core's imports are the standard library and core, nothing else. Each
check is shown to fail on a copy of the tree with one forbidden import added.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
# lint-imports on the whole package: a few seconds, longer on a loaded machine.
LINT_TIMEOUT = 300.0


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter with the project's contracts on the package under ``root``."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
         " sys.exit(lint_imports_command())", "--config", str(root / "pyproject.toml"),
         "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=LINT_TIMEOUT,
        check=False,
    )


def test_every_layer_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("core/states.py", "import httpx", "core imports only the standard library"),
        ("cloud/sites.py", "import pointd.app.engine", "nothing imports app/"),
        ("relay/client.py", "import pointd.sim.cloud", "production code never imports"),
        ("app/engine.py", "import pointd.relay.service", "the daemon runs no relay service"),
        ("link/frame.py", "import pointd.register.messages", "link/ knows no register"),
        ("sim/ecr/wire.py", "import pointd.link.frame", "the second register implementation"),
        ("sim/ecr/fields.py", "import pointd.register.messages",
         "the second register implementation"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "pointd", copy / "pointd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    target = copy / "pointd" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", "utf-8")
    result = lint_imports(copy)
    assert result.returncode != 0
    # Exactly the contract about that import breaks (its name is in the report).
    assert "1 broken" in result.stdout, result.stdout
    assert contract in " ".join(result.stdout.split()), result.stdout


def core_imports_outside_the_standard_library(package: str) -> set[str]:
    """Modules imported by ``package.core`` that are neither core's own nor the stdlib's."""
    graph = grimp.build_graph(package, include_external_packages=True, cache_dir=None)
    outside: set[str] = set()
    for module in graph.find_descendants(f"{package}.core") | {f"{package}.core"}:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported == f"{package}.core" or imported.startswith(f"{package}.core."):
                continue
            if imported.split(".")[0] in sys.stdlib_module_names:
                continue
            outside.add(imported)
    return outside


def test_core_imports_nothing_but_the_standard_library() -> None:
    assert core_imports_outside_the_standard_library("pointd") == set()
