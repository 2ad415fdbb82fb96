"""The README's first command: `pointd demo` plays every scripted outcome and exits 0."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pointd.rig.demo import SCRIPT

ROOT = Path(__file__).resolve().parents[2]
# The scripted sales take about 25 s of simulated terminal time on this machine.
DEMO_TIMEOUT = 180


@pytest.mark.slow
def test_demo_plays_every_outcome_and_exits_zero(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pointd.cli", "demo", "--state-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{len(SCRIPT)} of {len(SCRIPT)} sales ended as expected" in result.stdout
    for sale in SCRIPT:
        assert sale.name in result.stdout
    # The cashier saw the hold before the release of a CONFIRMATION_REQUIRED sale.
    assert "DO NOT HAND OVER" in result.stdout
    # The demo left its journal behind in the state directory it was given.
    assert (tmp_path / "journal.sqlite3").exists()


def test_demo_help_names_its_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pointd.cli", "demo", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "--interactive" in result.stdout


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```sh\n(.*?)\n```", text, re.MULTILINE | re.DOTALL)


def test_the_readme_installs_what_its_first_two_commands_need() -> None:
    demo, tests = _readme_commands()[:2]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    base = " ".join(project["dependencies"])
    # The demo serves the cloud simulator and the relay over HTTP: the relay extra's job
    # (tests/technician/test_without_web.py shows `pointd demo` refusing without it).
    assert "-e '.[relay]'" in demo
    assert "pointd demo" in demo
    assert {"starlette", "uvicorn"} <= {re.split(r"[\[<>=]", r)[0] for r in extras["relay"]}
    assert "starlette" not in base
    assert "uvicorn" not in base
    assert "-e '.[test]'" in tests
    assert any(r.startswith("pointd[relay") for r in extras["test"])
    # The suite runs on every core: `-n` is pytest-xdist's option.
    assert re.search(r"-m pytest .*-n auto", tests)
    assert any(r.startswith("pytest-xdist") for r in extras["test"])
