"""The benchmarks in bench/ still run: each with --quick, figures checked for shape, never speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Starts whole processes (crash, chaos, bench): left out of the inner loop, not of CI.
pytestmark = pytest.mark.slow

MAIN = Path(__file__).resolve().parents[2]
# Quick runs take 1-15 s (the end-to-end ones start the whole product); the bound only
# stops a hang.
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


def test_journal_runs_a_whole_sale_per_twelve_commits(tmp_path: Path) -> None:
    stdout, record = run_quick("journal", tmp_path)
    journaled = record["results"]["core_and_journal"]
    assert journaled["sales"] == 5
    # Eight events, and four notifications journaled as dedupe keys (no core events).
    assert journaled["events_per_sale"] == 8
    assert journaled["commits_per_sale"] == 12
    assert journaled["commit"]["n"] == 60
    assert record["results"]["core_only"]["sales"] == 20
    assert "commits (fsynced transactions) per sale 12" in stdout


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


def test_notification_to_display_times_relay_and_polling(tmp_path: Path) -> None:
    stdout, record = run_quick("notification_to_display", tmp_path)
    results = record["results"]
    for mode in ("relay", "polling"):
        figures = results[mode]
        assert figures["sales"] == 6
        assert figures["timed"] == 6, figures
        assert figures["outcomes"] == {"approved": 6}
        assert figures["final_to_display"]["n"] == 6
        assert figures["display_texts"] == ["VERIFICANDO PAGO | NO ENTREGUE AUN"]
    assert results["relay"]["webhook_to_display"]["n"] == 6
    assert "webhook_to_display" not in results["polling"]
    assert set(results["ratio_polling_over_relay"]) == {"p50", "p99", "max"}
    assert set(results["display_wire_ms"]) == {"9600", "115200"}
    assert "polling / relay" in stdout


def test_daemon_footprint_reads_a_real_daemon(tmp_path: Path) -> None:
    stdout, record = run_quick("daemon_footprint", tmp_path)
    results = record["results"]
    idle, selling = results["idle"], results["selling"]
    assert idle["seconds"] >= 5.0
    assert idle["rss_mb_max"] > 0
    assert selling["rss_mb_max"] > 0
    assert selling["sales"] > 0
    assert selling["outcomes"].keys() == {"approved"}
    assert selling["cpu_percent"] > idle["cpu_percent"]
    assert "% of a core" in stdout


@pytest.mark.parametrize(
    ("name", "bad"),
    [("notification_to_display", ["--sales", "0"]), ("notification_to_display", ["--lanes", "0"]),
     ("daemon_footprint", ["--seconds", "-1"]), ("daemon_footprint", ["--lanes", "100"])],
)
def test_end_to_end_benchmarks_refuse_bad_arguments(name: str, bad: list[str]) -> None:
    done = run_bench(name, *bad)
    assert done.returncode == 2
    assert bad[0] in done.stderr


def test_explore_reports_states_per_depth_against_its_reference(tmp_path: Path) -> None:
    stdout, record = run_quick("explore", tmp_path)
    results = record["results"]
    assert results["violation"] is None
    assert results["depth_reached"] == 3
    assert [d["depth"] for d in results["per_depth"]] == [1, 2, 3]
    assert sum(d["new_states"] for d in results["per_depth"]) + 1 == results["states"]
    assert results["calibration_ms"] > 0
    assert results["reference_steps_per_s"] > 0
    assert "of the reference's core steps/s" in stdout
