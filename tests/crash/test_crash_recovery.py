"""Crash tests: SIGKILL the core at every write-ahead point and check the restart's outcome.

Each case first runs its sale once without a crash (the baseline), which tells how many
journal appends the sale takes (N) and what its outcome is. Then, for every k in 1..N, a
fresh simulator and a fresh journal: the driver (``tests.crash.driver``) is killed right
after its k-th committed append, before that step's effects run; a second driver without a
crash is started on the same journal. Some cases also kill the driver right after its
create reached the simulator, before the answer could be journaled. Cases named
``*_orders`` drive the same sale through the Orders backend (``--backend orders``); the
simulator records their orders with its intents, so the checks below are the same.

After every restart: the outcome equals the baseline's; the simulator shows exactly one
intent for the sale (never a second create, never two intents with a payment) and at most
one payment, of the expected status; the journal replays to the same outcome; a handover
was only ever journaled for a sale that was APPROVED with a verified approved payment; and
the register showed "approved" before "handed over".

The simulator runs in the test's event loop with its clock frozen and all terminal delays
zero, so an intent has reached its end by the first fetch; the driver's timers are far
longer than a loopback answer, so every run of a case journals the same events in the
same order and crash point k means the same write each time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from pointd.core.events import Event, HandoverConfirmed, SaleRequested
from pointd.core.machine import CoreState, step
from pointd.core.states import SaleState
from pointd.journal.store import Journal
from pointd.sim.cloud import CloudSimulator, Delays, SimConfig
from tests.crash.driver import LANE, STORE_ID, TOKEN_ENV, crash_policy

# Starts whole processes (crash, chaos, bench): left out of the inner loop, not of CI.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
# One driver run takes under a second; this bounds a hung one generously on a loaded box.
DRIVER_RUN_TIMEOUT = 45.0
KILLED = -signal.SIGKILL
# Crash points of one case are independent (each has its own simulator and journal), so
# they run two at a time, one per core; every driver timer is still far longer than a
# loopback answer on a loaded machine, so each run journals the same events in order.
PARALLEL_TRIALS = 2


@dataclass(frozen=True)
class SaleCase:
    """One sale to crash at every point, and what its end must look like."""

    name: str
    sale_id: str
    amount: int
    final_state: SaleState
    payment_status: str
    scenario: dict[str, Any] | None = None  # posted to /_sim/scenarios before the sale
    crash_after_create: bool = True  # also kill once the create reached the simulator
    baseline_states: frozenset[str] = field(default_factory=frozenset)  # told at least once
    baseline_kinds: tuple[str, ...] = ()  # the journal of the crash-free run, in order
    backend: str = "payment-intent"  # the driver's --backend


CASES = [
    SaleCase("approved", "A1500", 1500, SaleState.HANDED_OVER, "approved",
             baseline_states=frozenset({"approved", "handed_over"})),
    # Up to the create's answer every sale runs the same code: killing after the create
    # is covered by the approved sale and by the chains below, not repeated per amount.
    SaleCase("finished_rejected", "R1200", 1200, SaleState.DECLINED, "rejected",
             crash_after_create=False, baseline_states=frozenset({"verifying", "declined"})),
    SaleCase("confirmation_required_approved", "C1401", 1401, SaleState.HANDED_OVER,
             "approved", crash_after_create=False,
             baseline_states=frozenset({"held", "approved", "handed_over"})),
    # The create's connection is dropped after the intent was really created: the core
    # must find it by its reference and adopt it. Killing after the create adds nothing
    # here: the answer is lost either way.
    SaleCase("lost_create_answer", "L1500", 1500, SaleState.HANDED_OVER, "approved",
             scenario={"next": True, "create_failure": "drop"}, crash_after_create=False,
             baseline_kinds=("SaleRequested", "CreateOutcomeUnknown", "IntentCreated",
                             "IntentObserved", "PaymentVerified", "HandoverConfirmed")),
]
# The same sales over the Orders API. There the unknown create is reconciled by resending
# it with its idempotency key, so a crash before the first send is healed by the resend
# creating the order under attempt 1, and a lost answer by the resend naming the order.
CASES += [
    dataclasses.replace(case, name=f"{case.name}_orders", backend="orders")
    for case in CASES
    if case.name in ("approved", "lost_create_answer")
]


@dataclass
class Run:
    """What one driver process did."""

    returncode: int | None
    outcome: dict[str, Any] | None
    stderr: str

    def describe(self) -> str:
        """Exit code, outcome and the tail of the log, for a failure message."""
        return f"rc={self.returncode} outcome={self.outcome} log tail:\n{self.stderr[-1500:]}"


@dataclass
class Trial:
    """Crashing runs, the run that restarted after them, and what the simulator recorded."""

    killed: list[Run]
    journaled_at_kill: list[list[str]]  # the event kinds on disk after each kill
    last: Run  # the first run that was not killed (the restart, or a crash that missed)
    record: dict[str, Any]


@asynccontextmanager
async def simulator(token: str, case: SaleCase) -> AsyncIterator[CloudSimulator]:
    """A fresh simulated account, frozen in time, whose terminal finishes at once."""
    config = SimConfig(access_token=token, webhook_secret=secrets.token_hex(16),
                       time_scale=0, delays=Delays(take=0, read_card=0, authorise=0, close=0,
                                                   settle=0))
    async with CloudSimulator(config) as sim:
        if case.scenario is not None:
            async with httpx.AsyncClient(base_url=sim.base_url) as control:
                answer = await control.post("/_sim/scenarios", json=case.scenario)
                assert answer.status_code == 201, answer.text
        yield sim


async def run_driver(sim: CloudSimulator, token: str, case: SaleCase, workdir: Path,
                     *extra: str) -> Run:
    """Run the driver on ``workdir``'s journal until it ends or is killed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.crash.driver",
        "--journal", str(workdir / "journal.db"),
        "--sim-url", sim.base_url,
        "--sale-id", case.sale_id,
        "--amount", str(case.amount),
        "--register-log", str(workdir / "register.jsonl"),
        "--backend", case.backend,
        *extra,
        cwd=REPO_ROOT,
        env={**os.environ, TOKEN_ENV: token, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), DRIVER_RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    lines = out.decode().strip().splitlines()
    outcome = json.loads(lines[-1]) if lines else None
    return Run(process.returncode, outcome, err.decode(errors="replace"))


async def sim_record(sim: CloudSimulator) -> dict[str, Any]:
    """Everything the simulated account ever created, as ``GET /_sim/record`` shows it."""
    async with httpx.AsyncClient(base_url=sim.base_url) as control:
        answer = await control.get("/_sim/record")
    answer.raise_for_status()
    record: dict[str, Any] = answer.json()
    return record


async def trial(case: SaleCase, workdir: Path, *crashes: tuple[str, ...]) -> Trial:
    """Run the sale once per crash flag set, each killed, then once without a crash."""
    await asyncio.to_thread(workdir.mkdir)
    token = secrets.token_hex(16)
    killed: list[Run] = []
    journaled: list[list[str]] = []
    async with simulator(token, case) as sim:
        for flags in (*crashes, ()):
            run = await run_driver(sim, token, case, workdir, *flags)
            if run.returncode != KILLED or not flags:
                break
            killed.append(run)
            journaled.append(journal_kinds(workdir / "journal.db"))
        record = await sim_record(sim)
    return Trial(killed, journaled, run, record)


def sale_prefix(case: SaleCase) -> str:
    """The external_reference of every attempt of the sale starts with this."""
    return f"pd1_{STORE_ID}_{LANE}_{case.sale_id}_"


def problems_with_end(case: SaleCase, run: Run, record: dict[str, Any],
                      workdir: Path) -> list[str]:
    """Every way this finished run breaks the rules; empty when it keeps them all."""
    problems: list[str] = []
    outcome = run.outcome
    if run.returncode != 0 or outcome is None or outcome.get("timed_out"):
        return [f"the run did not finish: {run.describe()}"]
    if outcome["state"] != case.final_state.value:
        problems.append(f"ended {outcome['state']}, not {case.final_state.value}")
    prefix = sale_prefix(case)
    intents = [i for i in record["intents"] if (i["external_reference"] or "").startswith(prefix)]
    payments = [p for p in record["payments"]
                if (p["external_reference"] or "").startswith(prefix)]
    if len(record["intents"]) != 1 or len(intents) != 1:
        problems.append(f"the simulator holds {len(record['intents'])} intents, "
                        f"{len(intents)} of this sale: {intents}")
    if len([i for i in intents if i["payment_id"] is not None]) > 1:
        problems.append(f"two intents with a payment: {intents}")
    if [p["status"] for p in payments] != [case.payment_status]:
        problems.append(f"payments of this sale: {payments}, expected one "
                        f"{case.payment_status}")
    if intents and outcome["intent_id"] != intents[0]["id"]:
        problems.append(f"the sale follows intent {outcome['intent_id']}, the simulator "
                        f"created {intents[0]['id']}")
    if case.final_state is SaleState.HANDED_OVER:
        approved = [str(p["id"]) for p in payments
                    if p["status"] == "approved" and p["amount"] == case.amount]
        if outcome["approved_payment_id"] not in approved or len(approved) != 1:
            problems.append(f"handed over on payment {outcome['approved_payment_id']}, "
                            f"approved payments of the exact amount: {approved}")
    problems.extend(problems_in_journal(case, outcome, workdir / "journal.db"))
    problems.extend(problems_on_register(case, workdir / "register.jsonl"))
    return problems


def problems_in_journal(case: SaleCase, outcome: dict[str, Any], path: Path) -> list[str]:
    """Replay the journal: same end, and every handover came after a verified approval."""
    problems: list[str] = []
    policy = crash_policy()
    with Journal.open(path) as journal:
        rebuilt = journal.rebuild(STORE_ID, policy)
        state = CoreState.empty(STORE_ID)
        for seq, at, event in journal.replay():
            if isinstance(event, HandoverConfirmed):
                sale = state.sales[event.sale_id]
                if sale.state is not SaleState.APPROVED or sale.approved_payment_id is None:
                    problems.append(f"handover journaled at seq {seq} while the sale was "
                                    f"{sale.state} (approved payment "
                                    f"{sale.approved_payment_id})")
            state = step(state, event, now=at, policy=policy).state
    end = rebuilt.sales.get(case.sale_id)
    if end is None or end.state.value != outcome["state"]:
        problems.append(f"the journal replays to {end and end.state}, the driver reported "
                        f"{outcome['state']}")
    return problems


def problems_on_register(case: SaleCase, path: Path) -> list[str]:
    """The cashier must have been shown "approved" before "handed over"."""
    told = [json.loads(line)["state"] for line in path.read_text().splitlines()]
    if "handed_over" in told and "approved" not in told[: told.index("handed_over")]:
        return [f"register told handed_over without approved first: {told}"]
    return []


def journal_kinds(path: Path) -> list[str]:
    """The event kinds journaled, in order."""
    with Journal.open(path) as journal:
        return [type(event).__name__ for _, _, event in journal.replay()]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_sale_survives_a_crash_at_every_write_ahead_point(
        case: SaleCase, tmp_path: Path) -> None:
    """Baseline, then a SIGKILL after each append (and after the create): same end."""
    baseline = await trial(case, tmp_path / "baseline")
    base_dir = tmp_path / "baseline"
    assert problems_with_end(case, baseline.last, baseline.record, base_dir) == []
    kinds = journal_kinds(base_dir / "journal.db")
    told = {json.loads(line)["state"]
            for line in (base_dir / "register.jsonl").read_text().splitlines()}
    assert case.baseline_states <= told, f"the baseline never showed {case.baseline_states}"
    if case.baseline_kinds:
        assert tuple(kinds) == case.baseline_kinds
    appends = baseline.last.outcome["appends"] if baseline.last.outcome else 0
    assert appends == len(kinds) >= 5, kinds

    crashes: list[tuple[str, tuple[str, ...]]] = [
        (f"after append {k} ({kinds[k - 1]})", ("--crash-after-append", str(k)))
        for k in range(1, appends + 1)
    ]
    if case.crash_after_create:
        crashes.append(("after the create was sent", ("--crash-after-create",)))
    slots = asyncio.Semaphore(PARALLEL_TRIALS)

    async def crash_at(number: int, where: str, flags: tuple[str, ...]) -> list[str]:
        workdir = tmp_path / f"crash{number}"
        async with slots:
            result = await trial(case, workdir, flags)
        if not result.killed:
            return [f"{where}: the driver was not killed: {result.last.describe()}"]
        found: list[str] = []
        if flags[0] == "--crash-after-append":
            k = int(flags[1])
            if result.journaled_at_kill[0] != kinds[:k]:
                found.append(f"{where}: killed with {result.journaled_at_kill[0]} on disk, "
                             f"not the baseline's first {k} events")
        found.extend(f"{where}: {problem}"
                     for problem in problems_with_end(case, result.last, result.record, workdir))
        return found

    per_trial = await asyncio.gather(
        *(crash_at(number, where, flags) for number, (where, flags) in enumerate(crashes))
    )
    failures = [failure for found in per_trial for failure in found]
    assert failures == [], "\n".join(failures)


def after_append(k: int) -> tuple[str, ...]:
    """Driver flags: die right after this run's k-th committed append."""
    return ("--crash-after-append", str(k))


AFTER_CREATE = ("--crash-after-create",)
LOST_ANSWER_5XX = SaleCase("lost_create_answer_5xx", "F1500", 1500, SaleState.HANDED_OVER,
                           "approved", scenario={"next": True, "create_failure": "5xx"})


@dataclass(frozen=True)
class Chain:
    """Several crashing runs in a row on one journal, then a clean restart."""

    name: str
    case: SaleCase
    crashes: tuple[tuple[str, ...], ...]
    on_disk: tuple[tuple[str, ...], ...]  # event kinds journaled at each kill
    final_attempt: int


CHAINS = [
    # The first run dies before its create is sent; its restart proves attempt 1 absent,
    # sends attempt 2 and dies before the answer: the third run must adopt attempt 2.
    Chain("restart_killed_after_its_create", CASES[0], (after_append(1), AFTER_CREATE),
          (("SaleRequested",), ("SaleRequested", "AttemptNotFound")), 2),
    # The restart dies right after journaling that attempt 1 does not exist, before the
    # attempt-2 create: the third run reconciles attempt 2 too and only then creates 3.
    Chain("restart_killed_after_attempt_not_found", CASES[0], (after_append(1), after_append(1)),
          (("SaleRequested",), ("SaleRequested", "AttemptNotFound")), 3),
    # A create answered 500 although the intent exists; the run dies once the unknown
    # outcome is journaled, before reconciling: the restart reconciles and adopts it.
    Chain("create_answered_5xx_killed_before_reconciling", LOST_ANSWER_5XX, (after_append(2),),
          (("SaleRequested", "CreateOutcomeUnknown"),), 1),
]


@pytest.mark.parametrize("chain", CHAINS, ids=[c.name for c in CHAINS])
async def test_sale_survives_crashes_during_recovery(chain: Chain, tmp_path: Path) -> None:
    """Crashes in a row, some inside the restart's own recovery: still one sale, one intent."""
    result = await trial(chain.case, tmp_path / "chain", *chain.crashes)
    assert len(result.killed) == len(chain.crashes), result.last.describe()
    assert [tuple(kinds) for kinds in result.journaled_at_kill] == list(chain.on_disk)
    assert problems_with_end(chain.case, result.last, result.record, tmp_path / "chain") == []
    assert result.last.outcome is not None
    assert result.last.outcome["attempt"] == chain.final_attempt


def test_the_journal_check_catches_a_handover_before_approval(tmp_path: Path) -> None:
    """A handover journaled while the sale still verifies is reported, not waved through."""
    case = CASES[0]
    policy = crash_policy()
    state = CoreState.empty(STORE_ID)
    with Journal.open(tmp_path / "journal.db") as journal:
        events: list[Event] = [
            SaleRequested(sale_id=case.sale_id, lane=LANE, correlation_id="T", amount_cents=1500,
                          terminal_id="PAX_A910__SMARTPOS0001", terminal_ok=None),
            HandoverConfirmed(sale_id=case.sale_id),
        ]
        for now, event in enumerate(events):
            result = step(state, event, now=float(now), policy=policy)
            journal.append(event, float(now), result.state, sale_id=result.sale_id)
            state = result.state
    problems = problems_in_journal(case, {"state": "creating"}, tmp_path / "journal.db")
    assert len(problems) == 1
    assert "while the sale was creating" in problems[0]


def test_the_register_check_catches_handed_over_without_approved(tmp_path: Path) -> None:
    """The cashier seeing "handed over" with no "approved" before it is reported."""
    log = tmp_path / "register.jsonl"
    log.write_text("".join(json.dumps({"state": s}) + "\n"
                           for s in ("creating", "verifying", "handed_over", "approved")))
    assert problems_on_register(CASES[0], log) != []
    log.write_text("".join(json.dumps({"state": s}) + "\n" for s in ("approved", "handed_over")))
    assert problems_on_register(CASES[0], log) == []
