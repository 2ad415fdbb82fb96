"""Arbitrary event sequences against the core: the money-safety invariants always hold.

The machine mixes a plausible engine (answering the effects the core emits, mostly with
success) with an adversary (duplicates, stale and reordered observations, stray ids,
timers at any time, fraud alerts, overrides, cancels, handover claims, restarts), on two
lanes sharing one terminal plus a lane with its own.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pointd.core.effects import (
    CancelIntent,
    CreateIntent,
    Effect,
    FetchIntent,
    FetchPayment,
    ReconcileAttempt,
    ScheduleTimer,
)
from pointd.core.events import (
    AttemptNotFound,
    CancelRefused,
    CancelRequested,
    CreateNotSent,
    CreateOutcomeUnknown,
    CreateRejected,
    Event,
    FoundPayment,
    FraudAlerted,
    HandoverConfirmed,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    OverrideDecision,
    OverrideGiven,
    PaymentNotFound,
    PaymentsFound,
    PaymentVerified,
    SaleRequested,
    TerminalBusy,
    TimerExpired,
    TimerKind,
)
from pointd.core.machine import TRANSITIONS, CoreState, classify, step
from pointd.core.recovery import recover
from pointd.core.reference import ExternalReference
from pointd.core.states import IntentState, Refusal, SaleState
from tests.core.scenario import COLLECTOR, POLICY, STORE, T0, check_invariants

S = SaleState
LANE_TERMINALS = {1: "T-shared", 2: "T-shared", 3: "T-own"}
AMOUNTS = [1500, 1500, 2590, 50]  # 50 is below the site minimum
STATUSES = ["approved", "approved", "approved", "rejected", "pending", "in_process",
            "cancelled", "refunded", "authorized"]
INTENT_STATES = [s.value for s in IntentState] + ["finished", "BOGUS"]


_ANSWERABLE = (CreateIntent, ReconcileAttempt, FetchIntent, CancelIntent, FetchPayment,
               ScheduleTimer)


def intent_id(sale_id: str, attempt: int) -> str:
    return f"I-{sale_id}-{attempt}"


def payment_id(intent: str) -> str:
    return f"P-{intent}"


class CoreMachine(RuleBasedStateMachine):
    """Drives ``step`` and checks the invariants after every event."""

    @initialize()
    def start(self) -> None:
        self.state = CoreState.empty(STORE)
        self.now = T0
        self.journal: list[tuple[float, Event]] = []
        self.pending: list[Effect] = []
        self.next_sale = 0
        self.exact_approvals: set[tuple[str, str]] = set()
        self.released: set[str] = set()
        self.proven_absent: set[tuple[str, int]] = set()
        self.resends_allowed: dict[str, int] = {}
        self.creates: dict[str, list[int]] = {}

    # --- feeding and checking ----------------------------------------------------------

    def feed(self, event: Event) -> None:
        before = self.state
        result = step(before, event, now=self.now, policy=POLICY)
        self.journal.append((self.now, event))
        after = result.state
        if isinstance(event, IntentObserved) and event.source is ObservationSource.NOTIFICATION:
            # Rule 6: whatever a notification says, in whatever state, it is no fact.
            assert after == before, "a notification moved a sale"
            assert result.effects == (), "a notification made the core act"
        for sale_id, sale in before.sales.items():
            if sale.is_final:
                assert after.sales[sale_id] == sale, "a final sale changed"
        if result.sale_id in before.sales:
            old = before.sales[result.sale_id].state
            new = after.sales[result.sale_id].state
            if new is not old:
                trigger = classify(before.sales[result.sale_id], event, before, POLICY)[0]
                assert new in TRANSITIONS[(old, trigger)].targets, (old, event, new)
        if result.rejection is None and result.sale_id is not None:
            self._remember(event, result.sale_id, after)
        for effect in result.effects:
            if isinstance(effect, CreateIntent):
                self._check_create(effect, event)
        self.pending.extend(e for e in result.effects if isinstance(e, _ANSWERABLE))
        self.state = after

    def _remember(self, event: Event, sale_id: str, after: CoreState) -> None:
        sale = after.sales[sale_id]
        if isinstance(event, PaymentVerified):
            reference_ok = event.external_reference in (None, "", sale.reference)
            if (event.status.strip().lower() == "approved" and reference_ok
                    and event.amount_cents == sale.amount_cents
                    and event.currency == POLICY.currency
                    and event.collector_id == COLLECTOR):
                self.exact_approvals.add((sale_id, event.payment_id))
        elif isinstance(event, OverrideGiven) and event.decision is OverrideDecision.RELEASE:
            self.released.add(sale_id)
        elif isinstance(event, AttemptNotFound):
            self.proven_absent.add((sale_id, event.attempt))
        elif isinstance(event, CreateNotSent):
            self.resends_allowed[sale_id] = self.resends_allowed.get(sale_id, 0) + 1

    def _check_create(self, effect: CreateIntent, cause: Event) -> None:
        previous = self.creates.setdefault(effect.sale_id, [])
        sale = self.state.sales.get(effect.sale_id)
        if not previous:
            assert isinstance(cause, SaleRequested)
            assert effect.attempt == 1
        elif effect.attempt == previous[-1]:
            assert self.resends_allowed.get(effect.sale_id, 0) > 0, "resend without NotSent"
            self.resends_allowed[effect.sale_id] -= 1
        else:
            assert effect.attempt == previous[-1] + 1
            assert (effect.sale_id, previous[-1]) in self.proven_absent, "new attempt unproven"
        expected = ExternalReference(STORE, sale.lane if sale else 0, effect.sale_id,
                                     effect.attempt) if sale else None
        if expected is not None:
            assert effect.external_reference == str(expected)
        previous.append(effect.attempt)

    def known_sales(self) -> list[str]:
        # Mostly sales still in play, where the interesting transitions are.
        unfinished = [sale.sale_id for sale in self.state.unfinished()]
        return unfinished * 4 + sorted(self.state.sales) + ["NOPE"]

    # --- the register and the supervisor -------------------------------------------------

    @precondition(lambda self: len(self.state.lanes) < len(LANE_TERMINALS))
    @rule(lane=st.sampled_from(sorted(LANE_TERMINALS)), amount=st.sampled_from(AMOUNTS),
          verdict=st.sampled_from([None] * 6 + [Refusal.TERMINAL_NOT_CONNECTED]),
          repeat=st.booleans())
    def register_asks(self, lane: int, amount: int, verdict: Refusal | None,
                      repeat: bool) -> None:
        self.next_sale += 1
        sale_id = f"S{self.next_sale}"
        current = self.state.sale_on_lane(lane)
        correlation = current.correlation_id if (repeat and current) else f"r{self.next_sale}"
        self.feed(SaleRequested(sale_id, lane, correlation, amount, LANE_TERMINALS[lane],
                                verdict))

    @rule(data=st.data())
    def register_cancels(self, data: st.DataObject) -> None:
        if data.draw(st.booleans()):
            self.feed(CancelRequested(data.draw(st.sampled_from(self.known_sales())), None,
                                      "register"))
        else:
            self.feed(CancelRequested(None, data.draw(st.sampled_from([1, 2, 3, 4])), "r"))

    @rule(data=st.data())
    def register_claims_handover(self, data: st.DataObject) -> None:
        self.feed(HandoverConfirmed(data.draw(st.sampled_from(self.known_sales()))))

    @rule(data=st.data(), decision=st.sampled_from(OverrideDecision),
          reason=st.sampled_from(["seen on terminal", ""]))
    def supervisor_overrides(self, data: st.DataObject, decision: OverrideDecision,
                             reason: str) -> None:
        sale_id = data.draw(st.sampled_from(self.known_sales()))
        self.feed(OverrideGiven(sale_id, decision, reason, 1000))

    # --- the engine answering effects (mostly plausibly) --------------------------------

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data(), rounds=st.integers(1, 6))
    def engine_answers(self, data: st.DataObject, rounds: int) -> None:
        for _ in range(rounds):
            if not self.pending:
                return
            # Mostly the newest call to Mercado Pago, as a running engine would answer it
            # before any timer is due; sometimes a timer, or an old effect, late.
            calls = [i for i, e in enumerate(self.pending) if not isinstance(e, ScheduleTimer)]
            choices = [len(self.pending) - 1, 0]
            if calls:
                choices += [calls[-1]] * 4
            effect = self.pending.pop(data.draw(st.sampled_from(choices)))
            answer = data.draw(st.sampled_from(self._answers(effect, data)))
            if answer is not None:
                self.feed(answer)

    def _answers(self, effect: Effect, data: st.DataObject) -> list[Event | None]:
        if isinstance(effect, CreateIntent):
            sid, n = effect.sale_id, effect.attempt
            return [IntentCreated(sid, n, intent_id(sid, n))] * 3 + [
                CreateNotSent(sid, n, "refused"), CreateOutcomeUnknown(sid, n, "timeout"),
                TerminalBusy(sid, n), CreateRejected(sid, n, "bad_request")]
        if isinstance(effect, ReconcileAttempt):
            sid, n = effect.sale_id, effect.attempt
            intent = intent_id(sid, n)
            return [AttemptNotFound(sid, n), IntentCreated(sid, n, intent), None,
                    IntentObserved(intent, "FINISHED", payment_id(intent), None,
                                   ObservationSource.RECONCILIATION, effect.external_reference),
                    PaymentsFound(sid, n, (FoundPayment(payment_id(intent), "approved", 1500),))]
        if isinstance(effect, FetchIntent | CancelIntent):
            intent = effect.intent_id
            sale = self.state.sales.get(effect.sale_id)
            state = data.draw(st.sampled_from(INTENT_STATES))
            return [IntentObserved(intent, state, payment_id(intent), None,
                                   ObservationSource.POLL, sale.reference if sale else None),
                    CancelRefused(effect.sale_id, "conflict_error")]
        if isinstance(effect, FetchPayment):
            sale = self.state.sales.get(effect.sale_id)
            amount = sale.amount_cents if sale else 1500
            return [PaymentVerified(effect.payment_id, status, None, amount, "BRL", COLLECTOR,
                                    None) for status in STATUSES] + [
                PaymentNotFound(effect.payment_id)]
        if isinstance(effect, ScheduleTimer):
            return [effect.due_event()]
        return [None]

    # --- the adversary --------------------------------------------------------------------

    @rule(data=st.data(), source=st.sampled_from(ObservationSource),
          state=st.sampled_from(INTENT_STATES))
    def notification_arrives(self, data: st.DataObject, source: ObservationSource,
                             state: str) -> None:
        candidates = [*sorted(self.state.intents), "I-stray"]
        sale_ids = sorted(self.state.sales)
        if sale_ids:
            sid = data.draw(st.sampled_from(sale_ids))
            candidates.append(intent_id(sid, self.state.sales[sid].attempt))
        intent = data.draw(st.sampled_from(candidates))
        reference = None
        owner = self.state.intents.get(intent)
        if owner or sale_ids:
            sale = self.state.sales[owner or data.draw(st.sampled_from(sale_ids))]
            reference = data.draw(st.sampled_from([sale.reference, None, "information"]))
        pid = data.draw(st.sampled_from([payment_id(intent), None, "P-other"]))
        self.feed(IntentObserved(intent, state, pid, data.draw(st.sampled_from(
            ["approved", "rejected", "", None])), source, reference))

    @rule(data=st.data(), status=st.sampled_from(STATUSES), delta=st.sampled_from([0, 0, 1]),
          currency=st.sampled_from(["BRL", "BRL", "ARS"]),
          collector=st.sampled_from([COLLECTOR, COLLECTOR, "1"]))
    def payment_looked_up(self, data: st.DataObject, status: str, delta: int, currency: str,
                          collector: str) -> None:
        pid = data.draw(st.sampled_from([*sorted(self.state.payments), "P-unknown"]))
        owner = self.state.payments.get(pid)
        amount = (self.state.sales[owner].amount_cents if owner else 1500) + delta
        self.feed(PaymentVerified(pid, status, None, amount, currency, collector, None))

    @rule(data=st.data())
    def fraud_alert(self, data: st.DataObject) -> None:
        known = sorted(self.state.payments)
        candidates = known + [payment_id(i) for i in sorted(self.state.intents)] + ["P-x"]
        self.feed(FraudAlerted(data.draw(st.sampled_from(candidates))))

    @rule(data=st.data(), kind=st.sampled_from(TimerKind))
    def timer_fires_at_any_time(self, data: st.DataObject, kind: TimerKind) -> None:
        self.feed(TimerExpired(data.draw(st.sampled_from(self.known_sales())), kind))

    @rule(data=st.data(), attempt_delta=st.sampled_from([-1, 0, 1]))
    def stray_engine_answer(self, data: st.DataObject, attempt_delta: int) -> None:
        sid = data.draw(st.sampled_from(self.known_sales()))
        sale = self.state.sales.get(sid)
        n = (sale.attempt if sale else 1) + attempt_delta
        intent = intent_id(sid, n)
        self.feed(data.draw(st.sampled_from([
            AttemptNotFound(sid, n), IntentCreated(sid, n, intent), CreateNotSent(sid, n, "x"),
            CreateOutcomeUnknown(sid, n, "x"), PaymentsFound(sid, n, ()),
            PaymentsFound(sid, n, (FoundPayment(payment_id(intent), "approved", 1500),
                                   FoundPayment("P-second", "approved", 1500))),
            CancelRefused(sid, "conflict")])))

    @precondition(lambda self: bool(self.journal))
    @rule(data=st.data())
    def duplicate_delivery(self, data: st.DataObject) -> None:
        _, event = data.draw(st.sampled_from(self.journal))
        if not isinstance(event, SaleRequested):
            self.feed(event)

    @rule(seconds=st.sampled_from([0.5, 5.0, 60.0, 900.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def daemon_restarts(self) -> None:
        rebuilt = CoreState.empty(STORE)
        for at, event in self.journal:
            rebuilt = step(rebuilt, event, now=at, policy=POLICY).state
        assert rebuilt == self.state, "replay must rebuild the identical state"
        effects = recover(rebuilt, self.now, POLICY)
        assert not any(isinstance(e, CreateIntent | CancelIntent) for e in effects)
        self.pending = [e for e in effects if isinstance(e, _ANSWERABLE)]

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def money_is_safe(self) -> None:
        check_invariants(self.state)
        for sale in self.state.sales.values():
            if sale.state in (S.APPROVED, S.HANDED_OVER):
                assert (sale.sale_id, sale.approved_payment_id) in self.exact_approvals, sale
            if sale.state is S.OVERRIDDEN:
                assert sale.sale_id in self.released


CoreMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_core_machine = CoreMachine.TestCase
