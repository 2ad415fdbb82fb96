"""A one-sale pointd core in its own process, for the crash tests to SIGKILL and restart.

Theory of operation
-------------------
``python -m tests.crash.driver --journal J --sim-url U --sale-id S --amount A ...`` builds
what the daemon builds at start-up, minus the lanes: the journal, the core state replayed
from it (policy recorded, recovery effects run), the backend named by ``--backend``
(``payment-intent``, the default, or ``orders``) over a ``PointApiClient`` pointed at the
cloud simulator, and the ``Engine``, whose register
output appends each ``TellRegister`` as a JSON line to ``--register-log``. If the journal
does not know the sale yet it submits ``SaleRequested``; it confirms the handover as soon
as the sale is APPROVED and stops once the sale is final, printing the outcome as one JSON
line on stdout (logs go to stderr).

Crashes are injected here and nowhere else:

- ``--crash-after-append N``: right after the N-th append of this process is committed,
  before the engine runs that step's effects, the process SIGKILLs itself;
- ``--crash-after-create``: the first create request of this process reaches the
  simulator, and the process SIGKILLs itself before the answer (or the error instead of
  one) can be journaled.

The access token comes from the ``POINTD_CRASH_TOKEN`` environment variable so that it
never shows in a process listing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import structlog

from pointd.app.engine import Engine
from pointd.cloud.backends import BACKENDS
from pointd.cloud.client import PointApiClient
from pointd.cloud.order_backend import OrdersBackend
from pointd.cloud.port import CloudPort, PaymentIntentBackend
from pointd.core.effects import TellRegister
from pointd.core.events import Event, HandoverConfirmed, SaleRequested
from pointd.core.machine import CoreState, Step
from pointd.core.policy import Policy
from pointd.core.recovery import recover
from pointd.core.states import SaleState
from pointd.journal.store import Journal

STORE_ID = "crash-test"
LANE = 1
TERMINAL_ID = "PAX_A910__SMARTPOS0001"
TOKEN_ENV = "POINTD_CRASH_TOKEN"
# A sale against the simulator on loopback ends in well under a second; this only bounds
# a driver that hangs, so the test reports it instead of waiting for pytest's timeout.
DRIVER_TIMEOUT = 20.0
EXIT_TIMEOUT = 3
EXIT_USAGE = 2
# Creates of both backends: POST .../payment-intents and POST /v1/orders.
_CREATE_PATH_SUFFIXES = ("/payment-intents", "/v1/orders")


def crash_policy() -> Policy:
    """Short timers so a sale ends quickly, long enough that none races an HTTP answer.

    The poll fallback stands in for webhooks (the simulator sends none here). It and the
    verify, reconcile and create-retry timers are far longer than a loopback answer, so each
    run journals the same events in the same order and crash point k is the same write in
    every run; escalation and abandonment never fire. (A poll due every 0.05 s was not: with
    both cores busy a fetch took longer, the poll fired again before its answer, and the run
    journaled one TimerExpired more than its baseline.)
    """
    return Policy(
        currency="ARS",
        collector_id="123456789",
        min_amount_cents=500,
        max_amount_cents=400_000_000,
        poll_fallback_after=1.0,
        verify_initial_backoff=2.0,
        verify_max_backoff=2.0,
        confirmation_escalate_after=600.0,
        abandon_after=600.0,
        reconcile_initial_backoff=2.0,
        reconcile_max_backoff=2.0,
        create_retry_after=2.0,
    )


def die() -> None:
    """SIGKILL this process: no cleanup, no flush, exactly like a power cut of the process."""
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingJournal(Journal):
    """A journal that kills the process right after its N-th committed append."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        super().__init__(connection, path)
        self.crash_after: int | None = None
        self.appends = 0

    def append(self, event: Event, now: float, state_after: CoreState, *,
               sale_id: str | None = None, notification_key: str | None = None) -> int:
        """Append as usual, then die if this was the chosen write-ahead point."""
        seq = super().append(event, now, state_after, sale_id=sale_id,
                             notification_key=notification_key)
        self.appends += 1
        if self.crash_after is not None and self.appends >= self.crash_after:
            die()
        return seq


class CrashAfterCreate(httpx.AsyncBaseTransport):
    """Passes requests through; dies once the first create reached the server."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request; for a create, die whatever came back (answer or error)."""
        is_create = request.method == "POST" and request.url.path.endswith(
            _CREATE_PATH_SUFFIXES
        )
        try:
            return await self._inner.handle_async_request(request)
        finally:
            if is_create:
                die()

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._inner.aclose()


class RegisterLog:
    """The register as a file: one JSON line per message the cashier would see."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def tell(self, effect: TellRegister) -> None:
        """Append the message and flush it to the kernel before the next one."""
        line = {
            "sale_id": effect.sale_id,
            "state": effect.state.value,
            "refusal": effect.refusal.value if effect.refusal else None,
            "payment_id": effect.payment_id,
            "notice": effect.notice.value if effect.notice else None,
            "pid": os.getpid(),
        }
        with self._path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


async def _no_wait(seconds: float) -> None:
    # The simulator does not enforce Mercado Pago's one GET per second per intent, and
    # honouring the client's pacing would make each crash case wait a second per fetch.
    await asyncio.sleep(0)


def outcome_of(state: CoreState, sale_id: str) -> dict[str, Any]:
    """The sale's standing as the test compares it."""
    sale = state.sales.get(sale_id)
    if sale is None:
        return {"sale_id": sale_id, "state": None}
    return {
        "sale_id": sale_id,
        "state": sale.state.value,
        "attempt": sale.attempt,
        "reference": sale.reference,
        "intent_id": sale.intent_id,
        "payment_id": sale.payment_id,
        "approved_payment_id": sale.approved_payment_id,
        "amount_cents": sale.amount_cents,
    }


async def run(args: argparse.Namespace, token: str) -> int:
    """Drive one sale to its end; return the process exit code."""
    policy = crash_policy()
    journal = CrashingJournal.open(args.journal)
    # Journal.open builds ``cls``; the check only tells the type checker so.
    assert isinstance(journal, CrashingJournal)
    state = journal.rebuild(STORE_ID, policy)
    journal.record_policy(policy)
    inner = httpx.AsyncHTTPTransport()
    transport = CrashAfterCreate(inner) if args.crash_after_create else inner
    client = PointApiClient(args.sim_url, token, transport=transport, sleep=_no_wait)
    # Built here rather than by build_cloud_port, which has no way to pass ``_no_wait``.
    cloud: CloudPort = (
        OrdersBackend(client) if args.backend == "orders" else PaymentIntentBackend(client)
    )
    finished = asyncio.Event()
    handover: list[asyncio.Task[Step]] = []
    engine: Engine

    def watch(current: CoreState) -> None:
        sale = current.sales.get(args.sale_id)
        if sale is None:
            return
        if sale.state is SaleState.APPROVED and not handover:
            handover.append(asyncio.ensure_future(
                engine.submit(HandoverConfirmed(sale_id=args.sale_id))))
        if sale.is_final:
            finished.set()

    engine = Engine(
        journal=journal,
        state=state,
        policy=policy,
        cloud=cloud,
        register=RegisterLog(Path(args.register_log)),
        wall_clock=time.time,
        on_step=lambda event, result: watch(result.state),
    )
    # Armed only now: replay and the policy record above are not write-ahead points.
    journal.crash_after = args.crash_after_append
    engine.run_effects(recover(state, time.time(), policy))
    if args.sale_id not in state.sales:
        await engine.submit(SaleRequested(
            sale_id=args.sale_id, lane=LANE, correlation_id=f"T-{args.sale_id}",
            amount_cents=args.amount, terminal_id=TERMINAL_ID, terminal_ok=None))
    watch(engine.state)
    code = 0
    try:
        await asyncio.wait_for(finished.wait(), DRIVER_TIMEOUT)
    except TimeoutError:
        code = EXIT_TIMEOUT
    await engine.stop()
    await client.aclose()
    outcome = outcome_of(engine.state, args.sale_id)
    outcome["appends"] = journal.appends
    outcome["timed_out"] = code == EXIT_TIMEOUT
    journal.close()
    print(json.dumps(outcome), flush=True)
    return code


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.crash.driver")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--sim-url", required=True)
    parser.add_argument("--sale-id", required=True)
    parser.add_argument("--amount", type=int, required=True)
    parser.add_argument("--register-log", required=True)
    parser.add_argument("--crash-after-append", type=int, default=None)
    parser.add_argument("--crash-after-create", action="store_true")
    parser.add_argument("--backend", choices=BACKENDS, default="payment-intent")
    args = parser.parse_args(argv)
    if args.crash_after_append is not None and args.crash_after_append < 1:
        parser.error("--crash-after-append must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: logs to stderr, the outcome to stdout."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"{TOKEN_ENV} must hold the simulator's access token", file=sys.stderr)
        return EXIT_USAGE
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    return asyncio.run(run(args, token))


if __name__ == "__main__":
    sys.exit(main())
