"""The benchmarks in bench/ still run: each with --quick, figures checked for shape, never speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

MAIN = Path(__file__).resolve().parents[2]
# A quick run takes well under a second; the bound only stops a hung pty exchange.
RUN_TIMEOUT = 60.0
MACHINE_KEYS = {"date", "nproc", "cpu_model", "python", "command"}


def run_bench(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python bench/<name>.py args`` from the project root."""
    return subprocess.run(
        [sys.executable, str(MAIN / "bench" / f"{name}.py"), *args],
        cwd=MAIN,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def run_quick(name: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A --quick run that must succeed; its stdout and its JSON."""
    target = tmp_path / f"{name}.json"
    done = run_bench(name, "--quick", "--json", str(target))
    assert done.returncode == 0, done.stderr
    record = json.loads(target.read_text(encoding="utf-8"))
    assert record["benchmark"] == name
    assert record["quick"] is True
    assert set(record["machine"]) >= MACHINE_KEYS
    assert f"bench/{name}.py --quick" in record["machine"]["command"]
    return done.stdout, record


def test_register_link_runs(tmp_path: Path) -> None:
    stdout, record = run_quick("register_link", tmp_path)
    results = record["results"]
    assert set(results["codec"]) == set(results["arq"]) == {"DISPLAY", "SALE", "RESULT"}
    assert set(results["pty"]) == {
        "daemon_to_register_shown",
        "daemon_to_register_acked",
        "register_to_daemon_delivered",
        "register_to_daemon_acked",
    }
    for figures in results["pty"].values():
        assert figures["n"] == 10
        assert set(figures["p99_over_wire"]) == {"9600", "115200"}
    assert "nproc" in stdout
    assert "p99" in stdout


def test_journal_runs_a_whole_sale_per_eight_commits(tmp_path: Path) -> None:
    stdout, record = run_quick("journal", tmp_path)
    journaled = record["results"]["core_and_journal"]
    assert journaled["sales"] == 5
    assert journaled["events_per_sale"] == journaled["commits_per_sale"] == 8
    assert journaled["commit"]["n"] == 40
    assert record["results"]["core_only"]["sales"] == 20
    assert "commits (fsynced transactions) per sale 8" in stdout


def test_journal_writes_into_the_directory_it_is_given(tmp_path: Path) -> None:
    target = tmp_path / "disk"
    done = run_bench("journal", "--quick", "--dir", str(target))
    assert done.returncode == 0, done.stderr
    assert target.is_dir()
    assert list(target.iterdir()) == []  # the throw-away journal is removed afterwards


@pytest.mark.parametrize("bad", [["--sales", "0"], ["--core-sales", "-3"], ["--sales", "x"]])
def test_journal_refuses_bad_counts(bad: list[str]) -> None:
    done = run_bench("journal", *bad)
    assert done.returncode == 2
    assert "--sales" in done.stderr or "--core-sales" in done.stderr
