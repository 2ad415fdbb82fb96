"""Reconciling an unknown create: resend with the same key (Orders) or search (intents).

A fake ``CloudPort`` scripts each create's answer; the engine, its journal (SQLite in
tmp_path) and the core are real. Timers are armed on a hand-driven service, so the
RECONCILE timer fires only when a test fires it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog

from pointd.app.engine import Alert, Engine
from pointd.cloud.errors import (
    BadRequest,
    DeviceBusy,
    IdempotencyConflict,
    IdempotencyInProgress,
    NotSent,
    OutcomeUnknown,
    ServerError,
)
from pointd.cloud.models import Payment
from pointd.cloud.port import IntentView
from pointd.core.effects import TellRegister
from pointd.core.events import CreateRejected, SaleRequested, TimerKind
from pointd.core.machine import CoreState, step
from pointd.core.policy import Policy
from pointd.core.recovery import recover
from pointd.core.states import SaleState
from pointd.journal.store import Journal
from tests.support.clock import ManualClock
from tests.support.cloud import FakeCloud

STORE = "loja-1"
T0 = 1_795_000_000.0
TERMINAL = "PAX_A910__SMARTPOS0001"
SALE = "S1"
CENTS = 2500
REFERENCE = f"pd1_{STORE}_1_{SALE}_1"
ORDER = "ORD01JQ4S4KY8HWQ6NA5PXB65B3D3"
PAYMENT = "98765"
COLLECTOR = "123456789"
POLICY = Policy(currency="ARS", collector_id=COLLECTOR, min_amount_cents=100,
                max_amount_cents=10_000_000)
# Waiting on engine tasks that talk to the fake cloud; generous for a loaded machine.
TASK_TIMEOUT = 5.0

Answer = str | Exception


class NoRegister:
    async def tell(self, effect: TellRegister) -> None:
        return None


@dataclass
class Rig:
    engine: Engine
    cloud: FakeCloud
    timers: ManualClock
    alerts: list[Alert]

    async def until(self, what: str, predicate: Callable[[], bool]) -> None:
        async def poll() -> None:
            # The facts come from engine tasks talking to the fake cloud; yielding until
            # they hold is simpler than an event for each.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0)

        try:
            await asyncio.wait_for(poll(), TASK_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    def sale(self) -> Any:
        return self.engine.state.sales[SALE]

    def kinds(self) -> list[str]:
        return [entry.kind for entry in self.engine.journal.timeline(SALE)]

    async def start_sale(self) -> None:
        await self.engine.submit(SaleRequested(SALE, 1, "c-1", CENTS, TERMINAL, None))


def order_view(state: str, payment_id: str | None = None) -> IntentView:
    return IntentView(ORDER, state, payment_id, None, REFERENCE, CENTS)


def approved_payment() -> Payment:
    return Payment(id=PAYMENT, status="approved", status_detail="accredited",
                   transaction_amount=Decimal(CENTS) / 100, amount_cents=CENTS,
                   currency_id="ARS", collector_id=COLLECTOR, external_reference=REFERENCE,
                   live_mode=False, last_four_digits="4242", refunds=())


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def make_rig(tmp_path: Path, *, idempotent: bool, answers: list[Answer],
             state: CoreState | None = None) -> Rig:
    journal = Journal.open(tmp_path / "journal.db")
    journal.record_policy(POLICY)
    cloud = FakeCloud(creates_are_idempotent=idempotent, create_answers=answers)
    timers = ManualClock(T0)
    alerts: list[Alert] = []
    engine = Engine(journal=journal, state=state or CoreState.empty(STORE), policy=POLICY,
                    cloud=cloud, register=NoRegister(), wall_clock=timers,
                    on_alert=alerts.append, timers=timers)
    return Rig(engine, cloud, timers, alerts)


async def test_a_lost_create_answer_is_resent_with_the_same_key_and_adopts_the_order(
        tmp_path: Path, logs: list[MutableMapping[str, Any]]) -> None:
    rig = make_rig(tmp_path, idempotent=True, answers=[OutcomeUnknown("read timeout"), ORDER])
    rig.cloud.intents[ORDER] = order_view("OPEN")
    await rig.start_sale()
    await rig.until("the order adopted", lambda: rig.sale().intent_id == ORDER)
    await rig.until("its state observed", lambda: rig.kinds()[-1] == "IntentObserved")

    first, resent = rig.cloud.called("create")
    assert resent == first == (TERMINAL, CENTS, REFERENCE, REFERENCE, None)
    assert rig.kinds() == ["SaleRequested", "CreateOutcomeUnknown", "IntentCreated",
                           "IntentObserved"]
    assert rig.sale().state is SaleState.OPEN
    assert rig.sale().attempt == 1
    # Orders has no listing: the search path is never used.
    assert rig.cloud.called("find_attempt") == []
    await rig.engine.stop()


async def test_a_resend_that_finds_the_order_paid_goes_straight_to_verification(
        tmp_path: Path) -> None:
    rig = make_rig(tmp_path, idempotent=True, answers=[OutcomeUnknown("reset"), ORDER])
    rig.cloud.intents[ORDER] = order_view("FINISHED", PAYMENT)
    rig.cloud.payments[PAYMENT] = approved_payment()
    await rig.start_sale()
    await rig.until("approval", lambda: rig.sale().state is SaleState.APPROVED)
    assert rig.cloud.called("get_payment") == [PAYMENT]
    assert len(rig.cloud.called("create")) == 2
    await rig.engine.stop()


async def test_an_idempotency_conflict_on_the_resend_is_refused_and_alerted(
        tmp_path: Path, logs: list[MutableMapping[str, Any]]) -> None:
    conflict = IdempotencyConflict(409, "idempotency_key_already_used", "another body")
    rig = make_rig(tmp_path, idempotent=True, answers=[OutcomeUnknown("timeout"), conflict])
    await rig.start_sale()
    await rig.until("the refusal journaled", lambda: rig.kinds()[-1] == "CreateRejected")

    [event] = [e for _s, _at, e in rig.engine.journal.replay()
               if isinstance(e, CreateRejected)]
    assert event.code == "idempotency_key_already_used"
    [alert] = [a for a in rig.alerts if a.severity == "critical"]
    assert REFERENCE in alert.message
    assert next(e for e in logs if e["event"] == "engine.idempotency_conflict")["log_level"] \
        == "critical"
    # No new attempt, no third send: a person settles what the first send did.
    assert rig.sale().attempt == 1
    assert len(rig.cloud.called("create")) == 2
    await rig.engine.stop()


async def test_an_idempotency_conflict_on_the_first_send_fails_the_sale_with_an_alert(
        tmp_path: Path, logs: list[MutableMapping[str, Any]]) -> None:
    conflict = IdempotencyConflict(409, "idempotency_key_already_used", "another body")
    rig = make_rig(tmp_path, idempotent=True, answers=[conflict])
    await rig.start_sale()
    await rig.until("the sale to fail", lambda: rig.sale().state is SaleState.FAILED)
    assert any(a.severity == "critical" for a in rig.alerts)
    assert any(e["log_level"] == "critical" for e in logs)
    assert len(rig.cloud.called("create")) == 1
    await rig.engine.stop()


async def test_in_progress_on_the_resend_keeps_reconciling_until_the_order_is_named(
        tmp_path: Path) -> None:
    busy = IdempotencyInProgress(423, "locked", "still processing")
    rig = make_rig(tmp_path, idempotent=True, answers=[OutcomeUnknown("timeout"), busy, ORDER])
    rig.cloud.intents[ORDER] = order_view("ON_TERMINAL")
    await rig.start_sale()
    await rig.until("the second send", lambda: len(rig.cloud.called("create")) == 2)
    await rig.until("the reconcile timer", lambda: bool(rig.timers.pending()))
    assert rig.sale().state is SaleState.CREATE_UNKNOWN
    assert rig.kinds() == ["SaleRequested", "CreateOutcomeUnknown"]
    assert (SALE, TimerKind.RECONCILE) in rig.engine.pending_timers()

    rig.timers.fire_all()
    await rig.until("the order adopted", lambda: rig.sale().state is SaleState.ON_TERMINAL)
    assert len(set(rig.cloud.called("create"))) == 1, "every send is the same request"
    await rig.engine.stop()


async def test_in_progress_on_the_first_send_is_an_unknown_outcome(tmp_path: Path) -> None:
    busy = IdempotencyInProgress(423, "locked", "still processing")
    rig = make_rig(tmp_path, idempotent=True, answers=[busy, ORDER])
    rig.cloud.intents[ORDER] = order_view("OPEN")
    await rig.start_sale()
    await rig.until("the order adopted", lambda: rig.sale().intent_id == ORDER)
    assert rig.kinds()[:3] == ["SaleRequested", "CreateOutcomeUnknown", "IntentCreated"]
    await rig.engine.stop()


@pytest.mark.parametrize("error", [
    OutcomeUnknown("timeout again"),
    NotSent("connect refused"),
    DeviceBusy(409, "conflict_error", "queued"),
    ServerError(503, "unavailable", "later"),
    BadRequest(400, "bad_request", "refused"),
], ids=lambda e: type(e).__name__)
async def test_a_resend_without_a_2xx_never_proves_absence(tmp_path: Path,
                                                          error: Exception) -> None:
    rig = make_rig(tmp_path, idempotent=True, answers=[OutcomeUnknown("timeout"), error])
    await rig.start_sale()
    await rig.until("the second send", lambda: len(rig.cloud.called("create")) == 2)
    await rig.until("the reconcile timer", lambda: bool(rig.timers.pending()))
    assert rig.kinds() == ["SaleRequested", "CreateOutcomeUnknown"]
    assert rig.sale().state is SaleState.CREATE_UNKNOWN
    assert rig.sale().attempt == 1
    await rig.engine.stop()


async def test_after_a_restart_a_creating_sale_is_resent_not_given_a_new_attempt(
        tmp_path: Path) -> None:
    # The daemon died after journaling the sale, perhaps before its create was sent.
    first = step(CoreState.empty(STORE), SaleRequested(SALE, 1, "c-1", CENTS, TERMINAL, None),
                 now=T0, policy=POLICY)
    assert first.state.sales[SALE].state is SaleState.CREATING
    rig = make_rig(tmp_path, idempotent=True, answers=[ORDER], state=first.state)
    rig.cloud.intents[ORDER] = order_view("OPEN")
    rig.engine.run_effects(recover(first.state, T0, POLICY))
    await rig.until("the order adopted", lambda: rig.sale().intent_id == ORDER)
    assert rig.cloud.called("create") == [(TERMINAL, CENTS, REFERENCE, REFERENCE, None)]
    assert rig.sale().attempt == 1
    await rig.engine.stop()


async def test_without_idempotent_creates_the_attempt_is_searched_never_resent(
        tmp_path: Path) -> None:
    rig = make_rig(tmp_path, idempotent=False,
                   answers=[OutcomeUnknown("timeout"), "INT-2"])
    rig.cloud.intents["INT-2"] = IntentView("INT-2", "OPEN", None, None, None, CENTS)
    await rig.start_sale()
    await rig.until("a second attempt", lambda: rig.sale().intent_id == "INT-2")
    [query] = rig.cloud.called("find_attempt")
    assert (query.external_reference, query.amount_cents) == (REFERENCE, CENTS)
    first, second = rig.cloud.called("create")
    assert first[2] == REFERENCE
    assert second[2] == f"pd1_{STORE}_1_{SALE}_2", "a new attempt after proven absence"
    assert rig.kinds()[:3] == ["SaleRequested", "CreateOutcomeUnknown", "AttemptNotFound"]
    await rig.engine.stop()
