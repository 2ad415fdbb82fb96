"""Builders for the jobs tests: a journal filled through the core, a fake engine and cloud."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pointd.cloud.models import Payment, Refund
from pointd.core.effects import Effect
from pointd.core.events import Event
from pointd.core.machine import CoreState, Step, step
from pointd.core.policy import Policy
from pointd.journal.store import Journal

STORE = "loja-1"
COLLECTOR = "987654321"
POLICY = Policy(currency="BRL", collector_id=COLLECTOR, min_amount_cents=100,
                max_amount_cents=7_000_000)
TZ = ZoneInfo("America/Sao_Paulo")  # UTC-3 all year since 2019: day edges are exact
DAY = dt.date(2026, 3, 10)


def local(day: dt.date, hour: int, minute: int = 0) -> float:
    """Wall-clock seconds of a local time in TZ."""
    return dt.datetime.combine(day, dt.time(hour, minute), TZ).timestamp()


def ref(sale_id: str, lane: int, attempt: int = 1) -> str:
    return f"pd1_{STORE}_{lane}_{sale_id}_{attempt}"


def payment(payment_id: str, status: str, cents: int, reference: str | None,
            *, currency: str = "BRL", refunded: int = 0) -> Payment:
    refunds = (Refund(id="R1", amount_cents=refunded),) if refunded else ()
    return Payment(id=payment_id, status=status, status_detail=None,
                   transaction_amount=Decimal(cents) / 100, amount_cents=cents,
                   currency_id=currency, collector_id=COLLECTOR, external_reference=reference,
                   live_mode=False, last_four_digits="4242", refunds=refunds)


@dataclass
class FakeEngine:
    """The engine surface the jobs use, recording the effects it is asked to run.

    ``submit`` steps and journals like the real engine, at the time ``clock`` tells.
    """

    state: CoreState
    journal: Journal
    policy: Policy = POLICY
    ran: list[Effect] = field(default_factory=list)
    clock: Callable[[], float] | None = None
    submitted: list[Event] = field(default_factory=list)

    def run_effects(self, effects: Iterable[Effect]) -> None:
        self.ran.extend(effects)

    async def submit(self, event: Event) -> Step:
        now = self.clock() if self.clock is not None else max(
            (s.updated_at for s in self.state.sales.values()), default=0.0)
        result = step(self.state, event, now=now, policy=self.policy)
        self.journal.append(event, now, result.state, sale_id=result.sale_id)
        self.state = result.state
        self.submitted.append(event)
        self.run_effects(result.effects)
        return result


class Store:
    """A real journal in tmp_path, fed through the core as the engine would."""

    def __init__(self, path: Path) -> None:
        self.journal = Journal.open(path)
        self.journal.record_policy(POLICY)
        self.state = CoreState.empty(STORE)

    def feed(self, at: float, events: Sequence[Event]) -> None:
        """Step and journal each event, one second apart from ``at``."""
        for offset, event in enumerate(events):
            now = at + offset
            result = step(self.state, event, now=now, policy=POLICY)
            self.journal.append(event, now, result.state, sale_id=result.sale_id)
            self.state = result.state


@pytest.fixture
def store(tmp_path: Path) -> Iterable[Store]:
    built = Store(tmp_path / "journal.sqlite3")
    yield built
    built.journal.close()
