"""A reduced chaos run: 50 randomized sales through real `pointd run` and `pointd relay` processes
while every kind of fault is injected; the money-safety rules must hold, on the Payment
Intent backend and on the Orders API, with half the registers on ptys and half on socket://,
and with the daemon reading the relay on either delivery leg (each run pairs a backend with
a leg, so two runs cover both backends and both legs).

The run is ``bench/chaos.py`` itself, started as a subprocess exactly as the benchmark is,
with a fixed seed and a shorter mean time between faults so that 50 sales see every kind of
fault against the parts (the first faults and the first sales walk through all kinds). The
run checks the rules itself; this test reads its JSON and insists that it checked something
of each kind, that every fault kind was seen firing (not merely planned), and that nothing
was violated.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos import PART_FAULT_WEIGHTS
from pointd.rig.chaos.invariants import RULES
from pointd.rig.chaos.plan import SALE_FAULTS

# Starts whole processes (crash, chaos, bench): left out of the inner loop, not of CI.
pytestmark = pytest.mark.slow

MAIN = Path(__file__).resolve().parents[2]
SEED = 20261122
SALES = 50
# 50 sales with faults every ~1.2 s take 40-70 s on two shared cores; this bounds a hang.
RUN_TIMEOUT = 240.0


@pytest.mark.timeout(RUN_TIMEOUT + 30)
@pytest.mark.parametrize(
    ("backend", "delivery"), [("payment-intent", "stream"), ("orders", "long-poll")]
)
def test_fifty_sales_under_every_fault_keep_the_money_rules(
    tmp_path: Path, backend: str, delivery: str
) -> None:
    figures_path = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, str(MAIN / "bench" / "chaos.py"), "--sales", str(SALES),
         "--seed", str(SEED), "--fault-interval", "1.2", "--state-dir", str(tmp_path / "state"),
         "--backend", backend, "--relay-delivery", delivery, "--json", str(figures_path)],
        cwd=MAIN,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode != 2, f"the product could not be run:\n{done.stderr[-3000:]}"
    figures = json.loads(figures_path.read_text(encoding="utf-8"))
    assert figures["violations"] == [], done.stdout[-3000:]
    assert done.returncode == 0, done.stdout[-3000:]
    assert set(figures["violations_by_rule"]) == set(RULES)

    assert figures["sales"] == SALES
    fired = {kind for kind, counts in figures["faults"].items() if counts["fired"] > 0}
    assert fired >= set(PART_FAULT_WEIGHTS) | set(SALE_FAULTS), (
        f"fault kinds never injected: {set(PART_FAULT_WEIGHTS) | set(SALE_FAULTS) - fired}"
    )
    overcounted = {kind: counts for kind, counts in figures["faults"].items()
                if counts["fired"] > counts["planned"]}
    assert overcounted == {}, "a fault counted firing more often than it was planned"
    assert figures["daemon_restarts"] >= 1
    assert figures["relay_restarts"] >= 1

    checked = figures["checked"]
    assert checked["register_disagrees"] == SALES  # every register sale was judged
    assert checked["unfinished"] >= SALES - 1  # every journal sale was judged
    assert figures["unexercised_rules"] == [], "a rule that examined nothing proves nothing"
    assert figures["results_withheld"] == []
    assert figures["passed"] is True
    assert "PASS: 0 violation(s), 0 rule(s) that examined nothing" in done.stdout
    assert f"backend {backend}" in done.stdout
    assert f"relay delivery {delivery}" in done.stdout
