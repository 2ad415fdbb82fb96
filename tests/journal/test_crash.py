"""A process killed mid-append loses nothing it acknowledged and leaves a sound file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pointd.journal import Journal
from tests.core.scenario import POLICY, STORE

ROOT = Path(__file__).resolve().parents[2]
# Acknowledgements to read before the kill: enough to be mid-stream, few enough to be quick.
ACKS_BEFORE_KILL = 60
# Generous bound for the child to produce them on a loaded 2-core machine.
CHILD_TIMEOUT = 60.0

WRITER = """
import sys
from pointd.core.events import SaleRequested, IntentCreated
from pointd.core.machine import CoreState, step
from pointd.journal import Journal
from tests.core.scenario import POLICY, STORE
journal = Journal.open(sys.argv[1])
state = CoreState.empty(STORE)
n = 0
while True:
    n += 1
    sale = f"S{n}"
    for event in (SaleRequested(sale, 1, sale, 1500, "T1", None),
                  IntentCreated(sale, 1, f"I{n}")):
        result = step(state, event, now=float(n), policy=POLICY)
        seq = journal.append(event, float(n), result.state, sale_id=result.sale_id)
        state = result.state
        print(seq, flush=True)
    from pointd.core.events import IntentObserved, ObservationSource
    end = IntentObserved(f"I{n}", "CANCELED", None, None, ObservationSource.POLL, None)
    result = step(state, end, now=float(n), policy=POLICY)
    print(journal.append(end, float(n), result.state, sale_id=result.sale_id), flush=True)
    state = result.state
"""


def test_kill_during_appends_keeps_every_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    acknowledged = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        assert child.stdout is not None
        while len(acknowledged) < ACKS_BEFORE_KILL and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            if line.strip().isdigit():  # other lines are the journal's own log output
                acknowledged.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=CHILD_TIMEOUT)
    assert len(acknowledged) == ACKS_BEFORE_KILL, "writer did not acknowledge appends"
    with Journal.open(path) as journal:
        assert journal.integrity_problems() == []
        stored = [seq for seq, _, _ in journal.replay()]
        assert set(acknowledged) <= set(stored)
        assert stored == list(range(1, len(stored) + 1))
        state = journal.rebuild(STORE, POLICY)
        assert all(row.state == state.sales[row.sale_id].state for row in journal.sales(
            limit=10_000))
