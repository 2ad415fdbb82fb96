"""Benchmark of the write-ahead path: core steps plus durable journal appends per sale.

A realistic approved sale, as the engine (``pointd.app.engine.Engine.submit``) handles it:
for each event, ``pointd.core.machine.step`` decides, then ``Journal.append`` commits the
event and the sale's projection in one fsynced SQLite transaction (WAL, synchronous=FULL),
and each relayed notification first as its dedupe key (``mark_notification_seen``: a
notification is no core event, rule 6), then as the API's answer to the fetch it caused.
The eight events of one sale, and four notifications:

    SaleRequested → IntentCreated
    → [ON_TERMINAL notified] IntentObserved ON_TERMINAL (poll answer)
    → [PROCESSING notified] IntentObserved PROCESSING (poll answer)
    → [FINISHED notified] IntentObserved FINISHED (poll answer)
    → [the same FINISHED again] the same answer (a duplicate, rejected but still journaled)
    → PaymentVerified approved → HandoverConfirmed

Every append and every dedupe key is one ``BEGIN IMMEDIATE … COMMIT``, so commits per sale
= appends + notifications per sale;
SQLite fsyncs the WAL at each commit (and the database file at each checkpoint, every
~1000 WAL pages), which this benchmark measures as wall time rather than counting syscalls.
Sales run one after another on one thread, lanes taken in turn, all in one growing state
and one journal file, as in a store.

    python bench/journal.py                  # 2000 journaled sales, 20000 core-only sales
    python bench/journal.py --dir /var/lib/pointd-bench   # on the disk the daemon will use
    python bench/journal.py --quick          # a few sales: proves it runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from run_record import (  # noqa: E402
    add_run_arguments,
    describe_machine,
    print_machine,
    save_json,
    summarize,
)

from pointd.core.events import (  # noqa: E402
    Event,
    HandoverConfirmed,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    PaymentVerified,
    SaleRequested,
)
from pointd.core.machine import CoreState, step  # noqa: E402
from pointd.core.policy import Policy  # noqa: E402
from pointd.core.reference import ExternalReference  # noqa: E402
from pointd.core.states import SaleState  # noqa: E402
from pointd.journal import Journal  # noqa: E402

STORE = "loja-centro"
COLLECTOR = "987654321"
LANES = 12
AMOUNT_CENTS = 4590
POLICY = Policy(currency="BRL", collector_id=COLLECTOR, min_amount_cents=100,
                max_amount_cents=7_000_000)
T0 = 1_780_000_000.0
ANSWERED = ObservationSource.POLL


def sale_events(number: int) -> Iterator[tuple[Event | None, str | None]]:
    """Approved sale ``number``: its events, and (None, key) where a notification arrives."""
    sale_id = f"B{number:08d}"
    lane = number % LANES + 1
    terminal = f"PAX_A910__SMARTPOS{lane:04d}"
    intent = f"7f25f9aa-0000-4000-8000-{number:012d}"
    payment = str(90_000_000_000 + number)
    reference = str(ExternalReference(STORE, lane, sale_id, 1))

    def notified(state: str, payment_id: str | None,
                 key: str) -> Iterator[tuple[Event | None, str | None]]:
        yield None, f"{intent}:{key}"
        yield IntentObserved(intent, state, payment_id, None, ANSWERED, reference), None

    yield SaleRequested(sale_id, lane, f"R-{number}", AMOUNT_CENTS, terminal, None), None
    yield IntentCreated(sale_id, 1, intent), None
    yield from notified("ON_TERMINAL", None, "on_terminal")
    yield from notified("PROCESSING", None, "processing")
    yield from notified("FINISHED", payment, "finished")
    yield from notified("FINISHED", payment, "finished-again")
    yield PaymentVerified(payment, "approved", "accredited", AMOUNT_CENTS, "BRL", COLLECTOR,
                          reference), None
    yield HandoverConfirmed(sale_id), None


EVENTS_PER_SALE = sum(1 for event, _key in sale_events(0) if event is not None)


def check_handed_over(state: CoreState, number: int) -> None:
    """Fail loudly if the benchmark's sale did not go where a real one goes."""
    sale = state.sales[f"B{number:08d}"]
    if sale.state is not SaleState.HANDED_OVER:
        raise RuntimeError(f"sale {sale.sale_id} ended {sale.state}, not handed over")


def run_core_only(sales: int) -> dict[str, Any]:
    """Sales through ``step`` alone: what the pure core sustains."""
    state = CoreState.empty(STORE)
    now = T0
    step_ns: list[int] = []
    started = time.perf_counter()
    for number in range(sales):
        for event, _key in sale_events(number):
            if event is None:
                continue
            before = time.perf_counter_ns()
            state = step(state, event, now=now, policy=POLICY).state
            step_ns.append(time.perf_counter_ns() - before)
            now += 0.5
        check_handed_over(state, number)
    elapsed = time.perf_counter() - started
    return {"sales": sales, "seconds": elapsed, "sales_per_s": sales / elapsed,
            "step": summarize(step_ns)}


def run_journaled(sales: int, directory: Path) -> dict[str, Any]:
    """Sales through ``step`` then ``Journal.append``, as the engine does them."""
    path = directory / "journal.sqlite3"
    commit_ns: list[int] = []
    step_ns: list[int] = []
    state = CoreState.empty(STORE)
    now = T0
    with Journal.open(path) as journal:
        journal.record_policy(POLICY)
        first_seq = journal.last_seq()
        started = time.perf_counter()
        for number in range(sales):
            for event, key in sale_events(number):
                if event is None:
                    assert key is not None
                    before = time.perf_counter_ns()
                    journal.mark_notification_seen(key)
                    commit_ns.append(time.perf_counter_ns() - before)
                    continue
                before = time.perf_counter_ns()
                result = step(state, event, now=now, policy=POLICY)
                decided = time.perf_counter_ns()
                journal.append(event, now, result.state, sale_id=result.sale_id)
                commit_ns.append(time.perf_counter_ns() - decided)
                step_ns.append(decided - before)
                state = result.state
                now += 0.5
            check_handed_over(state, number)
        elapsed = time.perf_counter() - started
        appended = journal.last_seq() - first_seq
    size = path.stat().st_size + sum(
        p.stat().st_size for p in directory.glob("journal.sqlite3-*") if p.exists())
    return {
        "sales": sales,
        "seconds": elapsed,
        "sales_per_s": sales / elapsed,
        "events_per_sale": appended / sales,
        "commits_per_sale": len(commit_ns) / sales,
        "commit": summarize(commit_ns),
        "step": summarize(step_ns),
        "journal_bytes": size,
    }


def filesystem_of(directory: Path) -> str:
    """The mount point and filesystem type holding ``directory``, from /proc/mounts."""
    best = ("", "unknown")
    resolved = str(directory.resolve())
    try:
        lines = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        _device, mount, kind, *_rest = line.split()
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best[0]):
            best = (mount, kind)
    return f"{best[1]} at {best[0]}"


def main() -> int:
    """Run the core alone, then core plus journal, and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--sales", type=int, default=2000, help="journaled sales")
    parser.add_argument("--core-sales", type=int, default=20000, help="core-only sales")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to create the throw-away journal (default: system temp)")
    args = parser.parse_args()
    if args.sales < 1 or args.core_sales < 1:
        parser.error("--sales and --core-sales must be at least 1")
    # The journal logs migrations at info level; the benchmark times commits, not the console.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    sales, core_sales = (5, 20) if args.quick else (args.sales, args.core_sales)

    machine = describe_machine()
    print_machine("journal: core steps + fsynced appends per realistic sale", machine)

    core = run_core_only(core_sales)
    print(f"\ncore alone ({core_sales} sales, {EVENTS_PER_SALE} events each, one thread)")
    print(f"  {core['sales_per_s']:10.0f} sales/s   step p50 {core['step']['p50_us']:.1f} us  "
          f"p99 {core['step']['p99_us']:.1f} us  max {core['step']['max_us']:.1f} us")

    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pointd-bench-journal-", dir=args.dir) as tmp:
        directory = Path(tmp)
        where = filesystem_of(directory)
        journaled = run_journaled(sales, directory)
    commit = journaled["commit"]
    print(f"\ncore + journal ({sales} sales, journal on {where}, WAL, synchronous=FULL)")
    print(f"  events per sale {journaled['events_per_sale']:.0f}, "
          f"commits (fsynced transactions) per sale {journaled['commits_per_sale']:.0f}")
    print(f"  commit p50 {commit['p50_us'] / 1000:.3f} ms  p99 {commit['p99_us'] / 1000:.3f} ms  "
          f"max {commit['max_us'] / 1000:.3f} ms  (n {commit['n']})")
    print(f"  {journaled['sales_per_s']:10.1f} sales/s   "
          f"{journaled['sales_per_s'] * EVENTS_PER_SALE:.0f} events/s   "
          f"journal {journaled['journal_bytes'] / journaled['sales'] / 1024:.1f} KiB per sale")

    if args.json is not None:
        path = save_json("journal", args.json, {
            "benchmark": "journal",
            "machine": {**machine, "journal_filesystem": where},
            "quick": args.quick,
            "results": {"core_only": core, "core_and_journal": journaled},
        })
        print(f"\nJSON written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
