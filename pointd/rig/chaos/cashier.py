"""The people at the checkout: a cashier per lane selling through its register, a supervisor.

Theory of operation
-------------------
A ``Cashier`` takes its lane's sales from the ``SalePlanner`` one after the other and sells
each through the lane's register (``pointd.sim.ecr``, the second implementation of the
register protocol), as a store's cashier would:

* SALE, then wait for the RESULT; the register itself rides out reconnects (§7 of
  docs/register-protocol.md); a planned cancel is pressed at its moment;
* a sale held past the daemon's escalation is taken to the ``Supervisor``, who looks at the
  account itself (approved payment of the sale's amount naming this sale: release; else
  void) and decides over the daemon's control socket, as ``pointctl override`` does;
* a sale with no RESULT for a while is asked about with STATUS; an outcome that STATUS shows
  but whose RESULT never lands is noted as *withheld* (the checker fails the run for it);
* an approved sale is handed over only if HANDOVER_CHECK allows it, then HANDOVER_DONE,
  repeated until STATUS shows the goods gone;
* a refusal is read for a moment before the next sale; a sale scripted to stay pending is
  watched until its HOLD and then left held.

Time is the event loop's (``loop.time()``), never read from anywhere else.
What the cashier does not know about its environment comes from its ``Desk``: how to script a
sale at the simulator, and where the supervisor reads payments and reaches the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pointd.control.client import ControlClient
from pointd.control.errors import ControlError
from pointd.core.reference import ExternalReference, ExternalReferenceError
from pointd.core.states import SaleState
from pointd.rig.chaos.plan import PENDING, SalePlan
from pointd.sim.ecr.register import Register, RegisterError, Result

# STATUS states after which the register waits no longer for a RESULT.
SETTLED_STATES = frozenset({"handed_over", "declined", "canceled", "failed", "abandoned",
                            "overridden", "handover_unconfirmed", "approved"})
# STATUS states in which a sale waits for a person or for Mercado Pago: not lost.
WAITING_STATES = frozenset({"held", "escalated", "blocked", "unknown"})
GONE_STATES = frozenset({"handed_over", "overridden", "handover_unconfirmed"})


class Planner(Protocol):
    """Where a cashier gets its lane's next sale (``SalePlanner``)."""

    def next_for(self, lane: int) -> SalePlan | None:
        """The next sale for ``lane``; None when the run has sold enough."""
        ...


@dataclass(frozen=True)
class Timings:
    """How patient the people at the checkout are (seconds of the loop's clock)."""

    # One sale may ride out several daemon restarts, an abandonment and a hold.
    sale_timeout: float = 120.0
    # A sale held this long has been escalated (confirmation_escalate_after is 10 s): the
    # supervisor looks at it, and again this often while it stays held.
    supervisor_after: float = 12.0
    supervisor_look: float = 1.0
    # How long the cashier takes to read a refusal before the next sale.
    refusal_pause: float = 1.0
    # A sale not held that has had no RESULT for this long is asked about with STATUS.
    result_quiet: float = 30.0
    # When STATUS already shows the outcome, a RESULT in flight has this long to land
    # before the run counts it as withheld.
    result_grace: float = 5.0
    # How long a sale scripted to stay pending is watched for its HOLD.
    hold_watch: float = 20.0
    # How often a waiter looks again at state that has no event of its own.
    look_interval: float = 0.2
    # A register asks for a lost sale's outcome for this long after the selling stops.
    status_settle: float = 60.0


@dataclass
class SaleNote:
    """What the register saw of one sale."""

    plan: SalePlan
    outcome: str | None = None
    handover_allowed: bool | None = None
    handed_over: bool = False
    held_seen: bool = False
    error: str | None = None
    refusal: str | None = None
    # The sale's state when STATUS showed an outcome the register was never sent.
    withheld_state: str | None = None
    seconds: float = 0.0


@dataclass
class Tally:
    """Counts for the report: each fault planned (asked for) and fired (seen happening)."""

    planned: Counter[str] = field(default_factory=Counter)
    fired: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    overrides: Counter[str] = field(default_factory=Counter)
    results_withheld: list[str] = field(default_factory=list)

    def faults(self) -> dict[str, dict[str, int]]:
        """Every fault kind with its planned and fired counts, side by side."""
        kinds = sorted(set(self.planned) | set(self.fired))
        return {kind: {"planned": self.planned[kind], "fired": self.fired[kind]}
                for kind in kinds}


@dataclass(frozen=True)
class Desk:
    """What a cashier and the supervisor know of their environment."""

    # Tell the simulator what to do with the sale (its scenario).
    script: Callable[[SalePlan], Awaitable[None]]
    # The simulator's payments, as ``/_sim/record`` lists them.
    payments: Callable[[], Awaitable[Sequence[Mapping[str, Any]]]]
    # The control socket of the daemon serving each lane.
    control_socket: Callable[[int], Path]


def names_sale(reference: object, sale_id: str) -> bool:
    """Whether an external reference names ``sale_id``."""
    try:
        return ExternalReference.parse(str(reference)).sale == sale_id
    except ExternalReferenceError:
        return False


def outcome_of_state(state: str) -> str:
    """The register outcome a settled STATUS state means."""
    return {"approved": "approved", "handed_over": "approved", "overridden": "approved",
            "handover_unconfirmed": "approved", "declined": "declined",
            "canceled": "canceled", "failed": "error", "abandoned": "abandoned"}[state]


class Supervisor:
    """Settles escalated sales after checking the account, over the control socket."""

    def __init__(self, desk: Desk, tally: Tally) -> None:
        self._desk = desk
        self._tally = tally

    async def settle(self, note: SaleNote) -> None:
        """Release if Mercado Pago shows this sale paid, void otherwise (never blindly).

        A careful supervisor's decision, so that an override never hides a violation the
        daemon itself made (the checker holds every release to the same proof, rule
        ``override_unproven``).
        """
        plan = note.plan
        decision = "void"
        try:
            async with await ControlClient.connect(self._desk.control_socket(plan.lane)) as client:
                listed = await client.call("sales", {"lane": str(plan.lane),
                                                     "state": SaleState.ESCALATED.value})
                matches = [s for s in listed["sales"] if s["amount_cents"] == plan.amount_cents]
                if not matches:
                    return
                sale_id = matches[0]["sale_id"]
                paid = any(p["amount"] == plan.amount_cents and p["status"] == "approved"
                           and names_sale(p["external_reference"], sale_id)
                           for p in await self._desk.payments())
                decision = "release" if paid else "void"
                await client.call("override", {
                    "sale_id": sale_id,
                    "decision": decision,
                    "reason": "supervisor checked the payment at Mercado Pago",
                })
        except (ControlError, OSError) as exc:
            note.error = f"override: {type(exc).__name__}: {exc}"
            return
        self._tally.overrides[decision] += 1


class Cashier:
    """Sells a lane's planned sales through its register (module docstring)."""

    def __init__(self, lane: int, register: Register, *, planner: Planner, desk: Desk,
                 supervisor: Supervisor, tally: Tally, timings: Timings = Timings()) -> None:
        self.lane = lane
        self.register = register
        self._planner = planner
        self._desk = desk
        self._supervisor = supervisor
        self._tally = tally
        self._t = timings
        self.notes: list[SaleNote] = []

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def run(self) -> None:
        """Sell until the planner has no more sales for anyone."""
        while (plan := self._planner.next_for(self.lane)) is not None:
            note = SaleNote(plan)
            self.notes.append(note)
            self._tally.planned.update(plan.planned())
            await self._desk.script(plan)
            started = self._now()
            if plan.outcome == PENDING:
                await self._pending_sale(note)
                note.seconds = self._now() - started
                self._tally.outcomes["held (scripted pending)"] += 1
                return  # the lane stays held: a supervisor would have to decide
            await self._one_sale(note)
            note.seconds = self._now() - started
            label = note.outcome or "no outcome"
            if note.refusal:
                label = f"{label} ({note.refusal})"
                await asyncio.sleep(self._t.refusal_pause)
            self._tally.outcomes[label] += 1

    async def _one_sale(self, note: SaleNote) -> None:
        plan, register = note.plan, self.register
        cid = plan.correlation_id
        selling = asyncio.ensure_future(
            register.sale(cid, plan.amount_cents, within=self._t.sale_timeout))
        canceling = (asyncio.ensure_future(self._cancel(note, plan.cancel_after))
                     if plan.cancel_after is not None else None)
        held_since: float | None = None
        asked_at = self._now()
        while not selling.done():
            await asyncio.wait({selling}, timeout=self._t.supervisor_look)
            now = self._now()
            if selling.done():
                break
            if cid not in register.held and now - asked_at >= self._t.result_quiet:
                asked_at = now
                if await self._result_withheld(note, selling):
                    selling.cancel()
                    with contextlib.suppress(BaseException):
                        await selling
                    break
            if cid not in register.held:
                held_since = None
            elif held_since is None:
                held_since = now
            elif now - held_since >= self._t.supervisor_after:
                await self._supervisor.settle(note)
                held_since = now
        if canceling is not None:
            await canceling
        if note.withheld_state is not None:
            note.outcome = outcome_of_state(note.withheld_state)
            if note.outcome == "approved":
                await self._hand_over(note)
            return
        try:
            result: Result = selling.result()
        except RegisterError as exc:
            note.error = f"{type(exc).__name__}: {exc}"
            return
        note.outcome = result.outcome
        if result.outcome == "refused":
            note.refusal = result.reason
        if result.outcome == "approved":
            await self._hand_over(note)

    async def _result_withheld(self, note: SaleNote, selling: asyncio.Future[Result]) -> bool:
        """Whether the daemon holds an outcome for this sale that it never sent as RESULT.

        A register waits up to 20 minutes for a RESULT (docs/register-protocol.md §8); the
        cashier asks STATUS sooner so that a withheld RESULT is counted instead of stalling
        the lane. The outcome then comes from STATUS, as the register's own timeout would.
        """
        try:
            status = await self.register.status(note.plan.correlation_id)
        except RegisterError:
            return False
        if status.state not in SETTLED_STATES:
            return False
        await asyncio.wait({selling}, timeout=self._t.result_grace)
        if selling.done():
            return False
        note.withheld_state = status.state
        self._tally.results_withheld.append(note.plan.correlation_id)
        return True

    async def _cancel(self, note: SaleNote, after: float | None) -> None:
        await asyncio.sleep(after or 0.0)
        try:
            await self.register.cancel(note.plan.correlation_id)
        except RegisterError as exc:
            note.error = f"cancel: {type(exc).__name__}: {exc}"
            return
        self._tally.fired["cashier_cancel"] += 1

    async def _hand_over(self, note: SaleNote) -> None:
        """Ask whether the goods may leave; confirm they left until the daemon knows it."""
        register, cid = self.register, note.plan.correlation_id
        deadline = self._now() + self._t.sale_timeout
        while self._now() < deadline:
            try:
                if note.handover_allowed is None:
                    reply = await register.handover_check(cid)
                    note.handover_allowed = reply.allowed
                    if not reply.allowed:
                        return
                await register.handover_done(cid)
                status = await register.status(cid)
            except RegisterError as exc:
                note.error = f"handover: {type(exc).__name__}: {exc}"
                await asyncio.sleep(self._t.look_interval)
                continue
            if status.state in GONE_STATES:
                note.handed_over = True
                return
            await asyncio.sleep(self._t.look_interval)

    async def _pending_sale(self, note: SaleNote) -> None:
        register, cid = self.register, note.plan.correlation_id
        selling = asyncio.ensure_future(
            register.sale(cid, note.plan.amount_cents, within=self._t.sale_timeout))
        deadline = self._now() + self._t.hold_watch
        while self._now() < deadline and not selling.done():
            if cid in register.held:
                note.held_seen = True
                break
            await asyncio.sleep(self._t.look_interval)
        if selling.done():
            with contextlib.suppress(Exception):
                note.outcome = selling.result().outcome
        else:
            selling.cancel()
            with contextlib.suppress(BaseException):
                await selling

    async def ask_lost_outcomes(self) -> None:
        """After the selling: STATUS for every sale whose outcome the register never learned."""
        deadline = self._now() + self._t.status_settle
        for note in self.notes:
            if note.outcome is not None or note.plan.outcome == PENDING:
                continue
            while self._now() < deadline:
                try:
                    status = await self.register.status(note.plan.correlation_id)
                except RegisterError:
                    await asyncio.sleep(self._t.look_interval)
                    continue
                if status.state in SETTLED_STATES:
                    note.outcome = outcome_of_state(status.state)
                    if note.outcome == "approved" and not note.handed_over:
                        await self._hand_over(note)
                    break
                if status.state in WAITING_STATES:
                    break
                await asyncio.sleep(self._t.look_interval)
