"""The engine: journal each event, step the pure core, then run the effects it decided.

Theory of operation
-------------------
Every fact the daemon observes (a register request, a Mercado Pago answer, a relayed
notification, a timer, a refund's answer) becomes a core event and goes through
``submit``, one at a time — sales and refunds alike, through one core ``step``:

1. the core's ``step`` decides the new state and the effects, with ``now`` passed in;
2. the journal commits the event and the state after it (one fsynced transaction);
3. only then are the effects started (write-ahead: no effect without its cause on disk).

Effects that call Mercado Pago run as tasks and report back through ``submit``; their
errors are translated here into the events the core understands, keeping "not sent"
apart from "outcome unknown" (a create whose fate is unknown is reconciled, never blindly
resent). With a backend whose creates are idempotent (the Orders API), reconciling *is* the
resend: the same call with the same idempotency key answers with the order the first send
made, or makes it now if the first never arrived, so one attempt is still one order.
Register messages are queued per lane, so a slow or unplugged register never stalls the
core and the cashier sees states in the order they were decided. There is one timer
effect for sales and refunds: a ``ScheduleTimer`` submits its ``due_event`` at its
wall-clock due time through a ``TimerService`` (the event loop by default; tests pass one
driven by their own clock); after a restart the recovery effects re-arm them. One
dispatcher (``_dispatch``) runs every effect.

Refunds live in the core state (``CoreState.refunds``), so the journal's snapshots hold
them and a start rebuilds them with the sales; ``resume_refunds`` re-arms the timers of
refunds a restart interrupted, as ``pointd.core.recovery.recover`` does for sales.

If the journal cannot be written the event did not happen: nothing is run, the engine
marks itself unhealthy (the systemd watchdog then stops being fed) and the error goes up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import structlog

from pointd.app.checkout import new_sale_id
from pointd.cloud.errors import (
    CannotCancel,
    CloudError,
    DeviceBusy,
    IdempotencyConflict,
    IdempotencyInProgress,
    InvalidRequest,
    NotFound,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    RefundExceedsBalance,
    RefundRetryLater,
    Rejected,
    ServerError,
)
from pointd.cloud.models import Payment as CloudPayment
from pointd.cloud.port import AttemptQuery, CloudPort, IntentView
from pointd.core import refunds
from pointd.core.effects import (
    AlertTechnician,
    CancelIntent,
    CancelTimer,
    CreateIntent,
    Effect,
    FetchIntent,
    FetchPayment,
    FetchRefund,
    ReconcileAttempt,
    ScheduleTimer,
    SendRefund,
    TellRefund,
    TellRegister,
)
from pointd.core.events import (
    AttemptNotFound,
    CancelRefused,
    CreateNotSent,
    CreateOutcomeUnknown,
    CreateRejected,
    Event,
    FoundPayment,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    PaymentNotFound,
    PaymentsFound,
    PaymentVerified,
    RefundNotSent,
    RefundObserved,
    RefundOutcomeUnknown,
    RefundRejected,
    RefundRequested,
    RefundSent,
    TerminalBusy,
    TimerKind,
)
from pointd.core.machine import CoreState, Step, step
from pointd.core.policy import Policy
from pointd.core.records import RefundBook
from pointd.core.recovery import awaiting_intent
from pointd.journal.store import Journal

log = structlog.get_logger(__name__)

# How long a stopping daemon lets in-flight Mercado Pago calls finish so that their answers
# are journaled; what is still unanswered after that is reconciled at the next start.
STOP_GRACE_TIMEOUT = 5.0


class RegisterOutput(Protocol):
    """Where the engine sends what the cashier must see."""

    async def tell(self, effect: TellRegister) -> None:
        """Show one sale's standing on its lane's register."""
        ...


@runtime_checkable
class RefundScreens(Protocol):
    """Where the engine sends a refund's standing (the checkout lanes are one)."""

    async def tell_refund(self, effect: TellRefund) -> None:
        """Show one refund's standing on its lane's register."""
        ...


class TimerHandle(Protocol):
    """An armed timer that can be disarmed."""

    def cancel(self) -> None:
        """Disarm the timer; no effect once it fired."""
        ...


class TimerService(Protocol):
    """Runs a callback at a wall-clock time (the core schedules in wall-clock seconds)."""

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback`` once the wall clock reaches ``when``."""
        ...


class LoopTimers:
    """Core timers on the event loop, converting wall-clock due times to loop delays."""

    def __init__(self, wall_clock: Callable[[], float]) -> None:
        self._clock = wall_clock

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback`` after ``when - now`` seconds (at once if already due)."""
        delay = max(0.0, when - self._clock())
        return asyncio.get_running_loop().call_later(delay, callback)


class EngineStopped(RuntimeError):
    """The engine is stopping and accepts no new events."""


@dataclass(frozen=True, slots=True)
class Alert:
    """A technician alert raised by the core."""

    at: float
    sale_id: str
    severity: str
    message: str


class Engine:
    """Runs the core with write-ahead journaling; the only place core effects happen."""

    def __init__(
        self,
        *,
        journal: Journal,
        state: CoreState,
        policy: Policy,
        cloud: CloudPort,
        register: RegisterOutput,
        wall_clock: Callable[[], float],
        on_alert: Callable[[Alert], None] = lambda alert: None,
        on_step: Callable[[Event, Step], None] = lambda event, result: None,
        ticket_numbers: bool = False,
        timers: TimerService | None = None,
        new_refund_id: Callable[[], str] | None = None,
    ) -> None:
        self._journal = journal
        self._state = state
        self._policy = policy
        self._cloud = cloud
        self._register = register
        self._clock = wall_clock
        self._on_alert = on_alert
        self._on_step = on_step
        self._ticket_numbers = ticket_numbers
        self._lock = asyncio.Lock()
        self._timer_service = timers if timers is not None else LoopTimers(wall_clock)
        self._timers: dict[tuple[str, TimerKind], TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._register_queues: dict[int, asyncio.Queue[TellRegister | TellRefund]] = {}
        self._new_refund_id = new_refund_id or (lambda: new_sale_id(wall_clock()))
        self._register_workers: dict[int, asyncio.Task[None]] = {}
        # Hinted fetches in flight, and whether another hint came meanwhile.
        self._hinted: dict[tuple[str, str], bool] = {}
        self._stopping = False
        self._journal_failed = asyncio.Event()
        self.last_step_at: float | None = None

    @property
    def healthy(self) -> bool:
        """False once a journal write failed: the daemon must not go on deciding."""
        return not self._journal_failed.is_set()

    async def wait_journal_failure(self) -> None:
        """Return when a journal write has failed (never, while the journal works)."""
        await self._journal_failed.wait()

    @property
    def state(self) -> CoreState:
        """The core state after the last journaled event."""
        return self._state

    @property
    def policy(self) -> Policy:
        """The decision parameters in force."""
        return self._policy

    @property
    def journal(self) -> Journal:
        """The journal this engine writes."""
        return self._journal

    def now(self) -> float:
        """The wall clock the engine decides with."""
        return self._clock()

    async def submit(self, event: Event, *, notification_key: str | None = None) -> Step:
        """Decide, journal, then run the effects of one event."""
        async with self._lock:
            if self._stopping:
                raise EngineStopped(f"not accepting {type(event).__name__}: stopping")
            now = self._clock()
            result = step(self._state, event, now=now, policy=self._policy)
            try:
                self._journal.append(
                    event,
                    now,
                    result.state,
                    sale_id=result.sale_id,
                    notification_key=notification_key,
                )
            except Exception:
                self._journal_failed.set()
                log.critical("engine.journal_failed", event_type=type(event).__name__)
                raise
            self._state = result.state
            self.last_step_at = now
        if result.rejection is not None:
            log.info(
                "core.rejected",
                event_type=type(event).__name__,
                sale_id=result.sale_id,
                refund_id=result.refund_id,
                reason=result.rejection.reason,
            )
        self._on_step(event, result)
        self.run_effects(result.effects)
        return result

    @property
    def refund_book(self) -> RefundBook:
        """The refund book after the last journaled event."""
        return self._state.refunds

    async def request_refund(
        self,
        *,
        sale_id: str,
        amount_cents: int | None,
        by: str,
        uid: int | None = None,
        request_key: str | None = None,
        correlation_id: str | None = None,
    ) -> Step:
        """Ask for a refund of a sale, reading the sale's facts from the core state now.

        ``request_key`` makes a repeated request the same refund (None: a new request);
        ``correlation_id`` is what the register calls the refund (None: its refund id).
        """
        refund_id = self._new_refund_id()
        sale = self._state.sales.get(sale_id)
        return await self.submit(RefundRequested(
            refund_id=refund_id,
            request_key=request_key or f"refund:{refund_id}",
            correlation_id=correlation_id or refund_id,
            sale_id=sale_id,
            amount_cents=amount_cents,
            by=by,
            uid=uid,
            sale=None if sale is None else refunds.facts_of(sale),
        ))

    def resume_refunds(self) -> None:
        """After a restart: poll or resend every unfinished refund (call once at start)."""
        self.run_effects(refunds.recover(self._state.refunds, self._clock()))

    def run_effects(self, effects: Iterable[Effect]) -> None:
        """Start effects in order; used by ``submit`` and by start-up recovery."""
        for effect in effects:
            self._dispatch(effect)

    async def stop(self) -> None:
        """Finish the step in progress, let in-flight calls answer briefly, then stop."""
        async with self._lock:
            self._stopping = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_TIMEOUT)
            for task in pending:
                task.cancel()
        for queue in self._register_queues.values():
            await _drain(queue, STOP_GRACE_TIMEOUT)
        for worker in self._register_workers.values():
            worker.cancel()

    def hint_intent(self, intent_id: str, external_reference: str | None = None) -> bool:
        """A notification named this intent: fetch it now if it is one of our sales'.

        The fetch is read-only and its answer goes through the core, so a hint can only make
        the daemon learn the truth sooner; nothing in the notification itself is used. An
        intent id we do not know is fetched only when the notification's reference is the
        current attempt of a sale still reconciling its create (the API's answer must then
        carry that reference for the sale to adopt it); other ids are ignored, so forged
        notifications cannot spend the request budget. Hints for one intent coalesce: while
        its fetch is in flight, any number of hints cost one more fetch after it.
        """
        if self._stopping:
            return False
        if intent_id not in self._state.intents and (
            awaiting_intent(self._state, external_reference) is None
        ):
            return False
        self._coalesced(("intent", intent_id),
                        lambda: self._observe(intent_id, ObservationSource.POLL))
        return True

    def hint_payment(self, payment_id: str) -> bool:
        """A notification named this payment: verify it now if one of our sales has it."""
        sale_id = self._state.payments.get(payment_id)
        if sale_id is None or self._stopping:
            return False
        self._coalesced(("payment", payment_id), lambda: self._fetch_payment(
            FetchPayment(sale_id=sale_id, payment_id=payment_id)))
        return True

    def _coalesced(self, key: tuple[str, str], fetch: Callable[[], Awaitable[None]]) -> None:
        if key in self._hinted:
            self._hinted[key] = True  # the answer in flight may predate this hint: ask again
            return
        self._hinted[key] = False

        async def run() -> None:
            try:
                while True:
                    await fetch()
                    if not self._hinted.get(key):
                        return
                    self._hinted[key] = False
            finally:
                self._hinted.pop(key, None)

        self._spawn(run())

    def pending_timers(self) -> list[tuple[str, TimerKind]]:
        """The armed timers by owner (sale id, or refund id for REFUND), for diagnostics."""
        return sorted(self._timers)

    # --- effect dispatch -------------------------------------------------------------------

    def _dispatch(self, effect: Effect) -> None:
        match effect:
            case ScheduleTimer():
                self._arm(effect)
            case CancelTimer(owner=owner, kind=kind):
                handle = self._timers.pop((owner, kind), None)
                if handle is not None:
                    handle.cancel()
            case TellRegister():
                self._queue_for(effect.lane).put_nowait(effect)
            case TellRefund(lane=lane):
                if lane is None:
                    log.info("refund.no_lane_to_tell", refund_id=effect.refund_id,
                             status=str(effect.status))
                else:
                    self._queue_for(lane).put_nowait(effect)
            case AlertTechnician(sale_id=sale_id, severity=severity, message=message):
                log.warning("core.alert", sale_id=sale_id, severity=str(severity), alert=message)
                self._on_alert(Alert(self._clock(), sale_id, str(severity), message))
            case CreateIntent():
                self._spawn(self._create(effect))
            case CancelIntent():
                self._spawn(self._cancel(effect))
            case FetchIntent():
                self._spawn(self._fetch_intent(effect))
            case FetchPayment():
                self._spawn(self._fetch_payment(effect))
            case ReconcileAttempt():
                self._spawn(self._reconcile(effect))
            case SendRefund():
                self._spawn(self._send_refund(effect))
            case FetchRefund():
                self._spawn(self._fetch_refund(effect))

    def _spawn(self, work: Awaitable[object]) -> None:
        task = asyncio.ensure_future(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Awaitable[object]) -> None:
        try:
            await work
        except EngineStopped:
            log.info("engine.answer_after_stop")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("engine.effect_failed")

    def _arm(self, timer: ScheduleTimer) -> None:
        key = (timer.owner, timer.kind)
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        if self._stopping:
            return
        self._timers[key] = self._timer_service.call_at(timer.at, lambda: self._fire(timer))

    def _fire(self, timer: ScheduleTimer) -> None:
        self._timers.pop((timer.owner, timer.kind), None)
        self._spawn(self.submit(timer.due_event()))

    def _queue_for(self, lane: int) -> asyncio.Queue[TellRegister | TellRefund]:
        queue = self._register_queues.get(lane)
        if queue is None:
            queue = asyncio.Queue()
            self._register_queues[lane] = queue
            self._register_workers[lane] = asyncio.ensure_future(self._tell_worker(queue))
        return queue

    async def _tell_worker(
        self, queue: asyncio.Queue[TellRegister | TellRefund]
    ) -> None:
        while True:
            effect = await queue.get()
            try:
                if isinstance(effect, TellRefund):
                    await self._tell_refund(effect)
                else:
                    await self._register.tell(effect)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("engine.register_tell_failed", lane=effect.lane)
            finally:
                queue.task_done()

    # --- Mercado Pago effects --------------------------------------------------------------

    async def _create(self, effect: CreateIntent) -> None:
        event: Event
        try:
            intent_id = await self._send_create(
                effect.sale_id, effect.terminal_id, effect.amount_cents, effect.external_reference
            )
        except IdempotencyConflict as exc:
            event = self._idempotency_conflict(effect.sale_id, effect.attempt,
                                               effect.external_reference, exc)
        except IdempotencyInProgress as exc:
            # The same key's first send is still being processed: its fate is unknown.
            event = CreateOutcomeUnknown(
                sale_id=effect.sale_id, attempt=effect.attempt, reason=_reason(exc)
            )
        except InvalidRequest as exc:
            event = CreateRejected(
                sale_id=effect.sale_id, attempt=effect.attempt, code=f"invalid_request: {exc}"[:120]
            )
        except NotSent as exc:
            event = CreateNotSent(sale_id=effect.sale_id, attempt=effect.attempt, reason=str(exc))
        except DeviceBusy:
            event = TerminalBusy(sale_id=effect.sale_id, attempt=effect.attempt)
        except Rejected as exc:
            event = CreateRejected(
                sale_id=effect.sale_id, attempt=effect.attempt, code=_rejection_code(exc)
            )
        except Exception as exc:
            event = CreateOutcomeUnknown(
                sale_id=effect.sale_id, attempt=effect.attempt, reason=_reason(exc)
            )
        else:
            event = IntentCreated(
                sale_id=effect.sale_id, attempt=effect.attempt, intent_id=intent_id
            )
        await self.submit(event)

    async def _send_create(
        self, sale_id: str, terminal_id: str, amount_cents: int, external_reference: str
    ) -> str:
        sale = self._state.sales.get(sale_id)
        # Sites that print a ticket number (MLA) get the register's id for the sale.
        ticket = sale.correlation_id if sale is not None and self._ticket_numbers else None
        return await self._cloud.create_payment(
            terminal_id,
            amount_cents,
            external_reference,
            # One key per attempt, and every send of an attempt has the same arguments:
            # backends that honour idempotency keys (Orders) make a resend harmless.
            external_reference,
            ticket_number=ticket,
        )

    def _idempotency_conflict(
        self, sale_id: str, attempt: int, external_reference: str, exc: IdempotencyConflict
    ) -> CreateRejected:
        # The key was used with another body: an order from an earlier send may exist and
        # could still be paid, and nothing the daemon can send settles it. A person must.
        message = (f"Mercado Pago refused attempt {attempt}'s idempotency key as used with "
                   f"another request; an order with external_reference {external_reference} "
                   "may exist: check the terminal and cancel or refund it")
        log.critical("engine.idempotency_conflict", sale_id=sale_id, attempt=attempt,
                     external_reference=external_reference)
        self._on_alert(Alert(self._clock(), sale_id, "critical", message))
        return CreateRejected(sale_id=sale_id, attempt=attempt, code=_rejection_code(exc))

    async def _cancel(self, effect: CancelIntent) -> None:
        try:
            await self._cloud.cancel_payment(effect.terminal_id, effect.intent_id)
        except CannotCancel as exc:
            await self.submit(CancelRefused(sale_id=effect.sale_id, reason=_reason(exc)))
            return
        except CloudError as exc:
            # The poll timer keeps fetching the intent: a cancel that did land shows up there.
            log.warning("engine.cancel_failed", sale_id=effect.sale_id, error=_reason(exc))
            return
        await self._observe(effect.intent_id, ObservationSource.POLL)

    async def _fetch_intent(self, effect: FetchIntent) -> None:
        await self._observe(effect.intent_id, ObservationSource.POLL)

    async def _observe(self, intent_id: str, source: ObservationSource) -> None:
        try:
            view = await self._cloud.get_payment_state(intent_id)
        except CloudError as exc:
            log.warning("engine.fetch_intent_failed", intent_id=intent_id, error=_reason(exc))
            return
        await self.submit(_observed(view, source))

    async def _fetch_payment(self, effect: FetchPayment) -> None:
        event: Event
        try:
            payment = await self._cloud.get_payment(effect.payment_id)
        except NotFound:
            event = PaymentNotFound(payment_id=effect.payment_id)
        except CloudError as exc:
            log.warning("engine.fetch_payment_failed", payment_id=effect.payment_id,
                        error=_reason(exc))
            return
        else:
            event = payment_verified(payment)
        await self.submit(event)

    async def _reconcile(self, effect: ReconcileAttempt) -> None:
        """Find this attempt at Mercado Pago: an intent, a payment, or proof of neither.

        Which sources prove what is the cloud port's business (``find_attempt``). Any
        failure to ask, or an answer that proves nothing, leaves the sale reconciling; the
        core's RECONCILE timer asks again. A backend with idempotent creates (Orders) has
        no listing to search: the create is resent.
        """
        if self._cloud.creates_are_idempotent:
            await self._resend_create(effect)
            return
        sale = self._state.sales.get(effect.sale_id)
        if sale is None:
            log.warning("engine.reconcile_unknown_sale", sale_id=effect.sale_id)
            return
        query = AttemptQuery(
            terminal_id=effect.terminal_id,
            external_reference=effect.external_reference,
            amount_cents=sale.amount_cents,
            since=effect.since,
            now=self._clock(),
            known_intents=frozenset(self._state.intents),
        )
        try:
            found = await self._cloud.find_attempt(query)
        except CloudError as exc:
            log.warning("engine.reconcile_incomplete", sale_id=effect.sale_id, error=_reason(exc))
            return
        if found.intent is not None:
            await self.submit(
                IntentCreated(sale_id=effect.sale_id, attempt=effect.attempt,
                              intent_id=found.intent.id)
            )
            await self.submit(_observed(found.intent, ObservationSource.RECONCILIATION))
        elif found.payments:
            await self.submit(
                PaymentsFound(
                    sale_id=effect.sale_id,
                    attempt=effect.attempt,
                    payments=tuple(
                        FoundPayment(payment_id=p.id, status=p.status, amount_cents=p.amount_cents)
                        for p in found.payments
                    ),
                )
            )
        else:
            log.info("engine.attempt_absent", sale_id=effect.sale_id, proofs=list(found.proofs))
            await self.submit(AttemptNotFound(sale_id=effect.sale_id, attempt=effect.attempt))

    async def _resend_create(self, effect: ReconcileAttempt) -> None:
        """Send the attempt's create again, same arguments and key; a 2xx names its order.

        Nothing but a 2xx or a key conflict tells what the first send did (a 423 means it
        is still being processed; a refusal or no answer proves nothing), so every other
        error leaves the sale reconciling and the RECONCILE timer resends.
        """
        sale = self._state.sales.get(effect.sale_id)
        if sale is None:
            log.warning("engine.reconcile_unknown_sale", sale_id=effect.sale_id)
            return
        try:
            intent_id = await self._send_create(
                effect.sale_id, effect.terminal_id, sale.amount_cents, effect.external_reference
            )
        except IdempotencyConflict as exc:
            await self.submit(self._idempotency_conflict(effect.sale_id, effect.attempt,
                                                         effect.external_reference, exc))
            return
        except CloudError as exc:
            log.warning("engine.reconcile_incomplete", sale_id=effect.sale_id, error=_reason(exc))
            return
        await self.submit(
            IntentCreated(sale_id=effect.sale_id, attempt=effect.attempt, intent_id=intent_id)
        )
        # The order's state, so that an order already paid moves on without a poll.
        await self._observe(intent_id, ObservationSource.RECONCILIATION)

    # --- refunds ---------------------------------------------------------------------------

    async def _tell_refund(self, effect: TellRefund) -> None:
        if isinstance(self._register, RefundScreens):
            await self._register.tell_refund(effect)
        else:
            log.info("refund.register_cannot_show", refund_id=effect.refund_id)

    async def _send_refund(self, effect: SendRefund) -> None:
        event: Event
        try:
            view = await self._cloud.refund_payment(
                effect.terminal_id,
                effect.intent_id,
                effect.payment_id,
                effect.amount_cents,
                effect.idempotency_key,
            )
        except RefundExceedsBalance as exc:
            event = RefundRejected(refund_id=effect.refund_id, code="exceeds_balance",
                                   refunded_cents=exc.refunded_cents)
        except DeviceBusy as exc:
            event = RefundNotSent(refund_id=effect.refund_id, reason=_reason(exc),
                                  terminal_busy=True)
        except NotSent as exc:
            event = RefundNotSent(refund_id=effect.refund_id, reason=_reason(exc),
                                  terminal_busy=False)
        except (
            OutcomeUnknown, IdempotencyInProgress, RefundRetryLater, RateLimited, ServerError
        ) as exc:
            # Resending with the same key is safe, so anything short of a clear refusal
            # (Mercado Pago still busy with this order's money included) is resent later.
            event = RefundOutcomeUnknown(refund_id=effect.refund_id, reason=_reason(exc))
        except (InvalidRequest, Rejected) as exc:
            code = _rejection_code(exc) if isinstance(exc, Rejected) else f"invalid: {exc}"
            event = RefundRejected(refund_id=effect.refund_id, code=code[:120],
                                   refunded_cents=None)
        except Exception as exc:
            event = RefundOutcomeUnknown(refund_id=effect.refund_id, reason=_reason(exc))
        else:
            event = RefundSent(refund_id=effect.refund_id, cloud_refund_id=view.id,
                               state=str(view.state), amount_cents=view.amount_cents,
                               via=view.via)
        await self.submit(event)

    async def _fetch_refund(self, effect: FetchRefund) -> None:
        try:
            view = await self._cloud.get_refund(
                effect.intent_id, effect.payment_id, effect.cloud_refund_id
            )
        except CloudError as exc:
            # The poll timer is re-armed with every fetch: the next one asks again.
            log.warning("engine.fetch_refund_failed", refund_id=effect.refund_id,
                        error=_reason(exc))
            return
        await self.submit(RefundObserved(refund_id=effect.refund_id,
                                                state=str(view.state),
                                                amount_cents=view.amount_cents))


def payment_verified(payment: CloudPayment) -> PaymentVerified:
    """The core event for what ``/v1/payments`` answered about one payment."""
    return PaymentVerified(
        payment_id=payment.id,
        status=payment.status,
        status_detail=payment.status_detail,
        amount_cents=payment.amount_cents,
        currency=payment.currency_id or "",
        collector_id=payment.collector_id or "",
        external_reference=payment.external_reference,
    )


def _observed(view: IntentView, source: ObservationSource) -> IntentObserved:
    return IntentObserved(
        intent_id=view.id,
        state=view.state.upper(),
        payment_id=view.payment_id,
        payment_state=view.payment_state,
        source=source,
        external_reference=view.external_reference,
    )


def _rejection_code(exc: Rejected) -> str:
    return getattr(exc, "error", None) or type(exc).__name__


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


async def _drain(
    queue: asyncio.Queue[TellRegister | TellRefund], within: float
) -> None:
    try:
        async with asyncio.timeout(within):
            await queue.join()
    except TimeoutError:
        log.warning("engine.register_messages_dropped_at_stop", pending=queue.qsize())
