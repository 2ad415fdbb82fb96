"""Every shell example in docs/ is marked, and every one marked runnable runs, as written.

The marker is an HTML comment on the line before the fence (README, "Developing"):

- ``<!-- runnable -->``: the docs test runs the block with ``bash -euo pipefail`` and it
  must exit 0. It runs as root on a CI machine, in a scratch working directory, with
  ``DESTDIR`` set to a scratch root (the install examples write under ``${DESTDIR:-/}``,
  which is ``/`` on a real PC), ``HOME`` a scratch directory, pointd's commands first on
  ``PATH`` and ``POINTD_CONTROL_SOCKET`` naming a real ``pointd run`` serving a store on the
  simulators, so ``pointctl`` examples talk to a daemon as they would at a checkout.
- ``<!-- not-runnable: why -->``: the reason is said where the example is (systemd as PID
  1, real hardware, a secret typed in, a service that runs until Ctrl-C, …).

A block the docs forgot to mark fails the first test, so an example can only be left out
of the run on purpose.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import pointd
from pointd.rig import PACKAGE_ROOT, RigLane, StoreRig, StoreSpec, child_environment
from tests.support.subprocesses import run_to_exit

DOCS = PACKAGE_ROOT / "docs"
SHELLS = frozenset({"sh", "bash", "shell", "console"})
FENCE = re.compile(r"^```([A-Za-z]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"^<!-- (?:(runnable)|not-runnable: (\S.{10,}?)) -->$")
EXAMPLE_TIMEOUT = 120.0


@dataclass(frozen=True)
class Example:
    """One shell block of a docs page, and what its marker says."""

    page: str
    line: int
    code: str
    marker: str | None  # the marker line, None when there is none
    runnable: bool

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def examples() -> list[Example]:
    """Every shell block of docs/*.md, in page order."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) not in SHELLS:
                continue
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
            marker = MARKER.fullmatch(before)
            found.append(Example(page.name, line, match.group(2),
                                 before if marker else None,
                                 bool(marker and marker.group(1))))
    return found


def test_every_shell_example_in_the_docs_says_whether_it_runs() -> None:
    unmarked = [e.where for e in examples() if e.marker is None]
    assert unmarked == [], (
        "mark each with <!-- runnable --> or <!-- not-runnable: why --> on the line before"
    )
    assert sum(e.runnable for e in examples()) >= 8


@pytest.mark.slow
async def test_every_runnable_example_runs_as_written(tmp_path: Path) -> None:
    spec = StoreSpec(store_id="docs-store", lanes=(RigLane(1, "PAX_A910__SMARTPOS1234345545"),),
                     relay="none", daemon="process", sim={"time_scale": 0.0})
    (tmp_path / "store").mkdir()
    async with StoreRig(tmp_path / "store", spec) as rig:
        await rig.hello_all()
        failures = []
        for page, runnable in _by_page():
            destdir = tmp_path / "root" / page
            work = tmp_path / "work" / page
            home = tmp_path / "home" / page
            for path in (destdir, work, home):
                path.mkdir(parents=True)
            env = child_environment({
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "DESTDIR": str(destdir),
                "HOME": str(home),
                "POINTD_CONTROL_SOCKET": str(rig.state_dir / "control.sock"),
            })
            for example in runnable:
                code, out, err = await run_to_exit(
                    ["bash", "-euo", "pipefail", "-c", example.code], env=env, cwd=work,
                    within=EXAMPLE_TIMEOUT)
                if code != 0:
                    failures.append(f"{example.where} exited {code}:\n{example.code}\n"
                                    f"{out}{err}")
    assert failures == [], "\n\n".join(failures)


def _by_page() -> list[tuple[str, list[Example]]]:
    pages: dict[str, list[Example]] = {}
    for example in examples():
        if example.runnable:
            pages.setdefault(example.page.removesuffix(".md"), []).append(example)
    return list(pages.items())


def test_the_upgrade_procedure_reads_the_changelog_which_names_this_version() -> None:
    changelog = (PACKAGE_ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    upgrade = (DOCS / "operations.md").read_text(encoding="utf-8").split("## 2. Upgrade")[1]
    assert "[CHANGELOG.md](../CHANGELOG.md)" in upgrade.split("## 3.")[0]
    assert "## Unreleased" in changelog
    assert f"## {pointd.__version__}" in changelog
    assert "release notes" not in upgrade
