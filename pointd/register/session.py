"""One register lane's session: handshake, request correlation and the prompts the engine pushes.

Theory of operation
-------------------
``RegisterSession.run(link)`` runs the link and reads its events. Each connection starts
without a handshake; until the register's HELLO is answered, requests get ERROR
``hello_required``. Payloads are decoded with ``pointd.register.messages``; a bad one is
answered with ERROR and its code, never dropped silently.

The session translates; it decides nothing about sales. Every SALE goes to the handler,
which has the core decide it: one sale at a time per lane (``Refusal.LANE_BUSY``), a
repeated correlation id answered with its sale's standing again (a repeated telling also
carries the RESULT of goods that already left), an id reused for another amount or after
the retry window refused (ERROR ``id_reused``, returned as a ``RequestRejected``). The
session keeps only the promises of the link itself:

* after a HELLO the current screen and a HOLD for every held sale are sent again, because
  a register that reconnected has lost them;
* an approval withdrawn before the register confirmed the handover is told with WITHDRAW
  (then the HOLD or the new RESULT);
* what did not reach the register is pushed again (below).

A REFUND goes to the handler every time it arrives: the engine's refund book, not this
session, knows whether its correlation id is a repeat, and answers a repeat with the
refund's standing again. ``show_refund`` shows a refund's standing and, once it is final,
sends its REFUND_RESULT.

The handler (the daemon's engine) is called once per accepted request, each call in its
own task so that a slow SALE does not hold up a CANCEL. It answers StatusQuery with a
``SaleStatus`` and HandoverCheck with a ``HandoverDecision`` built from the journal; for
the other requests it returns None or a ``RequestRejected``.

``show_state`` / ``show_refusal`` / ``show_condition`` never raise on link trouble: the
register recovers the truth with STATUS after reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from pointd.core.effects import Notice
from pointd.core.events import RefundRefusal
from pointd.core.states import (
    ENDED_UNPAID_STATES,
    FINAL_STATES,
    HOLD_STATES,
    PAID_FINAL_STATES,
    RELEASED_STATES,
    LaneCondition,
    RefundStatus,
    Refusal,
    SaleState,
)
from pointd.link.driver import LinkEvent, LinkLost, LinkUp
from pointd.link.errors import LinkError, LinkNotSent
from pointd.register import messages as msg
from pointd.register.prompts import LANGUAGES, RefundScreen, Subject, prompt_for

log = structlog.get_logger(__name__)

# Sales whose latest messages are remembered (to push again what did not arrive): far more
# than a lane does between restarts of its register, small enough to never matter.
SALE_MEMORY = 256

_OUTCOMES = {
    SaleState.DECLINED: msg.Outcome.DECLINED,
    SaleState.CANCELED: msg.Outcome.CANCELED,
    SaleState.FAILED: msg.Outcome.ERROR,
    SaleState.ABANDONED: msg.Outcome.ABANDONED,
}
assert set(_OUTCOMES) == ENDED_UNPAID_STATES


_REFUND_REFUSAL_SCREENS = {
    RefundRefusal.OVER_AMOUNT: RefundScreen.OVER_AMOUNT,
    RefundRefusal.NOTHING_LEFT: RefundScreen.NOTHING_LEFT,
    RefundRefusal.NOT_REFUNDABLE: RefundScreen.NOT_REFUNDABLE,
    RefundRefusal.UNKNOWN_SALE: RefundScreen.NOT_REFUNDABLE,
    RefundRefusal.INVALID_AMOUNT: RefundScreen.INVALID_AMOUNT,
}
_REFUND_OUTCOMES = {
    RefundStatus.REFUNDED: msg.RefundOutcome.REFUNDED,
    RefundStatus.FAILED: msg.RefundOutcome.FAILED,
    RefundStatus.REFUSED: msg.RefundOutcome.REFUSED,
}

# --- what the engine receives ---------------------------------------------------------------


@dataclass(frozen=True)
class SaleRequest:
    """The register asks to take ``amount_cents`` by card."""

    correlation_id: str
    amount_cents: int
    terminal_id: str | None = None


@dataclass(frozen=True)
class CancelRequest:
    """The register asks to cancel the sale."""

    correlation_id: str


@dataclass(frozen=True)
class StatusQuery:
    """The register asks what happened to the sale."""

    correlation_id: str


@dataclass(frozen=True)
class HandoverCheck:
    """The register asks whether the goods may leave."""

    correlation_id: str


@dataclass(frozen=True)
class HandoverDone:
    """The register reports that the goods left."""

    correlation_id: str


@dataclass(frozen=True)
class RefundRequest:
    """The register asks to refund ``amount_cents`` (None: all that is left) of a sale."""

    correlation_id: str
    sale_correlation_id: str
    amount_cents: int | None = None


RegisterRequest = (
    SaleRequest | CancelRequest | StatusQuery | HandoverCheck | HandoverDone | RefundRequest
)


# --- what the engine answers ------------------------------------------------------------------


@dataclass(frozen=True)
class SaleStatus:
    """Where a sale stands, from the journal; ``state`` None means no such sale."""

    correlation_id: str
    state: SaleState | None
    amount_cents: int | None = None
    payment_id: str | None = None
    card_last4: str | None = None
    handover: bool = False  # the core's judgement (pointd.core.answers): the goods may leave


@dataclass(frozen=True)
class HandoverDecision:
    """The answer to HandoverCheck."""

    correlation_id: str
    allowed: bool
    reason: str


@dataclass(frozen=True)
class RequestRejected:
    """The request cannot be acted on; sent to the register as ERROR."""

    correlation_id: str | None
    code: msg.ErrorCode
    text: str


Reply = SaleStatus | HandoverDecision | RequestRejected
Handler = Callable[[RegisterRequest], Awaitable[Reply | None]]


class RegisterLink(Protocol):
    """What the session needs of a link (``pointd.link.driver.LinkDriver`` is one)."""

    async def run(self) -> None:
        """Open and keep the link open until close()."""
        ...

    async def send(self, payload: bytes) -> None:
        """Send one payload and wait for its ACK."""
        ...

    async def next_event(self) -> LinkEvent:
        """The next LinkUp, PayloadReceived or LinkLost."""
        ...

    def close(self) -> None:
        """Stop the link."""
        ...


def _refund_screen(
    status: RefundStatus, refusal: RefundRefusal | None, via: str | None
) -> RefundScreen:
    if status is RefundStatus.REFUSED:
        return _REFUND_REFUSAL_SCREENS.get(refusal or RefundRefusal.NOT_REFUNDABLE,
                                           RefundScreen.NOT_REFUNDABLE)
    if status is RefundStatus.PENDING and via == "terminal":
        return RefundScreen.ON_TERMINAL
    return {
        RefundStatus.UNKNOWN: RefundScreen.CHECKING,
        RefundStatus.REFUNDED: RefundScreen.DONE,
        RefundStatus.FAILED: RefundScreen.FAILED,
    }.get(status, RefundScreen.PROCESSING)


def status_reply(status: SaleStatus) -> msg.StatusReply:
    """The STATUS_REPLY message for the engine's answer."""
    if status.state is None:
        return msg.StatusReply(status.correlation_id, msg.UNKNOWN_STATE, handover=False)
    return msg.StatusReply(
        status.correlation_id,
        status.state.value,
        handover=status.handover,
        amount_cents=status.amount_cents,
        payment_id=status.payment_id,
        card_last4=status.card_last4,
    )


class _Sent(enum.Enum):
    """Whether a message reached the register: acknowledged, provably not, or unknown."""

    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


class RegisterSession:
    """The daemon's side of one register lane."""

    def __init__(self, lane: int, language: str, handler: Handler) -> None:
        if language not in LANGUAGES:
            raise ValueError(f"language must be one of {', '.join(LANGUAGES)}")
        self.lane = lane
        self.language = language
        self._handler = handler
        self._link: RegisterLink | None = None
        self._hello_done = False
        self._latest: OrderedDict[str, tuple[msg.DaemonMessage, ...]] = OrderedDict()
        # Sales under a HOLD and its reason, told again after every HELLO.
        self._held: dict[str, str] = {}
        # Sales whose latest messages did not all reach the register, and whether any of
        # them provably never left (link down, daemon just restarted: pushed again as soon
        # as the link is back) or may have arrived (no ACK: pushed again after a HELLO,
        # which a register sends after every reconnect it notices).
        self._unsent: OrderedDict[str, bool] = OrderedDict()
        self._screen: msg.Display | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def register_connected(self) -> bool:
        """True while the register's HELLO on the current connection has been answered."""
        return self._hello_done

    async def run(self, link: RegisterLink) -> None:
        """Run the link and serve the register until stop(); survives reconnects."""
        self._link = link
        runner = asyncio.create_task(link.run(), name=f"register-link-{self.lane}")
        consumer = asyncio.create_task(self._consume(link), name=f"register-session-{self.lane}")
        try:
            done, _pending = await asyncio.wait(
                {runner, consumer}, return_when=asyncio.FIRST_COMPLETED
            )
            for finished in done:
                finished.result()
        finally:
            link.close()
            consumer.cancel()
            pending: list[asyncio.Task[object]] = [runner, consumer, *self._tasks]
            for task in pending:
                if task is not runner:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, LinkError):
                    await task

    def stop(self) -> None:
        """Make run() return."""
        if self._link is not None:
            self._link.close()

    # --- pushing state to the register ----------------------------------------------------

    async def show_state(
        self,
        correlation_id: str,
        state: SaleState,
        *,
        payment_id: str | None = None,
        amount_cents: int | None = None,
        card_last4: str | None = None,
        notice: Notice | None = None,
        approval_withdrawn: bool = False,
        repeated_sale: bool = False,
    ) -> None:
        """Show the sale's state and send the RESULT, HOLD, RELEASE or WITHDRAW it implies.

        A ``notice`` (advice that replaces the state's screen) changes only the screen; the
        messages the state implies are sent all the same. ``approval_withdrawn`` (the sale
        was approved, then not, before the register confirmed the handover) sends WITHDRAW
        before them. ``repeated_sale`` (the register sent this SALE again) also repeats the
        approved RESULT of a sale whose goods already left.
        """
        screen: Subject = notice if notice is not None else state
        messages: list[msg.DaemonMessage] = [self._display(screen, correlation_id)]
        if approval_withdrawn and state not in RELEASED_STATES:
            messages.append(msg.Withdraw(correlation_id, state.value))
        if state in HOLD_STATES:
            self._held[correlation_id] = state.value
            messages.append(msg.Hold(correlation_id, state.value))
        elif state is SaleState.APPROVED:
            if correlation_id in self._held:
                messages.append(msg.Release(correlation_id, "approved"))
            messages.append(
                msg.Result(
                    correlation_id, msg.Outcome.APPROVED, amount_cents, payment_id, card_last4
                )
            )
        elif state is SaleState.OVERRIDDEN:
            messages.append(msg.Release(correlation_id, "override"))
            messages.append(
                msg.Result(
                    correlation_id,
                    msg.Outcome.APPROVED,
                    amount_cents,
                    payment_id,
                    card_last4,
                    reason="override",
                )
            )
        elif repeated_sale and state in PAID_FINAL_STATES:
            messages.append(
                msg.Result(
                    correlation_id, msg.Outcome.APPROVED, amount_cents, payment_id, card_last4
                )
            )
        elif state in _OUTCOMES:
            messages.append(
                msg.Result(
                    correlation_id,
                    _OUTCOMES[state],
                    amount_cents,
                    payment_id,
                    card_last4,
                    reason=state.value,
                )
            )
        if state in FINAL_STATES or state is SaleState.APPROVED:
            self._held.pop(correlation_id, None)
        await self._push(correlation_id, messages)

    async def show_refusal(self, correlation_id: str, refusal: Refusal) -> None:
        """Tell the register its sale was refused before anything reached Mercado Pago."""
        messages: list[msg.DaemonMessage] = [
            self._display(refusal, correlation_id),
            msg.Result(correlation_id, msg.Outcome.REFUSED, reason=refusal.value),
        ]
        await self._push(correlation_id, messages)

    async def show_refund(
        self,
        correlation_id: str,
        sale_correlation_id: str | None,
        status: RefundStatus,
        *,
        amount_cents: int | None = None,
        refusal: RefundRefusal | None = None,
        via: str | None = None,
    ) -> None:
        """Show a refund's standing; a final one also gets its REFUND_RESULT."""
        if refusal is RefundRefusal.ID_REUSED:
            text = "this refund id belongs to a refund of another sale or amount"
            await self._send(msg.Error(msg.ErrorCode.ID_REUSED, text, correlation_id))
            return
        messages: list[msg.DaemonMessage] = [
            self._display(_refund_screen(status, refusal, via), correlation_id)
        ]
        outcome = _REFUND_OUTCOMES.get(status)
        if outcome is not None and sale_correlation_id is not None:
            reason = refusal.value if refusal is not None else (
                None if outcome is msg.RefundOutcome.REFUNDED else status.value)
            messages.append(msg.RefundResult(correlation_id, sale_correlation_id, outcome,
                                             amount_cents, reason))
        await self._push(correlation_id, messages)

    async def show_condition(self, condition: LaneCondition) -> None:
        """Show the lane's standing while no sale is in progress."""
        display = self._display(condition, None)
        self._screen = display
        await self._send(display)

    def _display(self, subject: Subject, correlation_id: str | None) -> msg.Display:
        prompt = prompt_for(subject, self.language)
        return msg.Display(prompt.lines, prompt.severity, self.language, correlation_id)

    async def _push(self, correlation_id: str, messages: list[msg.DaemonMessage]) -> None:
        self._latest[correlation_id] = tuple(messages)
        self._latest.move_to_end(correlation_id)
        while len(self._latest) > SALE_MEMORY:
            self._latest.popitem(last=False)
        display = messages[0]
        if isinstance(display, msg.Display):
            self._screen = display
        await self._deliver(correlation_id, messages)

    async def _deliver(self, correlation_id: str, messages: Sequence[msg.DaemonMessage]) -> None:
        for message in messages:
            outcome = await self._send_reporting(message)
            if outcome is not _Sent.YES:
                self._unsent[correlation_id] = outcome is _Sent.NO
                while len(self._unsent) > SALE_MEMORY:
                    self._unsent.popitem(last=False)
                return
        self._unsent.pop(correlation_id, None)

    async def _send_unsent(self, *, only_never_sent: bool) -> None:
        """Send again the latest messages of sales that did not reach the register."""
        for correlation_id, never_sent in list(self._unsent.items()):
            if only_never_sent and not never_sent:
                continue
            messages = self._latest.get(correlation_id)
            if messages is None:
                self._unsent.pop(correlation_id, None)
                continue
            await self._deliver(correlation_id, messages)
            if correlation_id in self._unsent:
                return

    async def _send(self, message: msg.DaemonMessage) -> None:
        await self._send_reporting(message)

    async def _send_reporting(self, message: msg.DaemonMessage) -> _Sent:
        link = self._link
        if link is None:
            log.info("register.not_running", lane=self.lane, message=type(message).__name__)
            return _Sent.NO
        try:
            await link.send(message.to_payload())
        except LinkError as exc:
            log.warning(
                "register.send_failed",
                lane=self.lane,
                message=type(message).__name__,
                error=str(exc),
            )
            return _Sent.NO if isinstance(exc, LinkNotSent) else _Sent.UNKNOWN
        return _Sent.YES

    # --- serving the register -----------------------------------------------------------

    async def _consume(self, link: RegisterLink) -> None:
        while True:
            event = await link.next_event()
            if isinstance(event, LinkUp):
                self._hello_done = False
                log.info("register.link_up", lane=self.lane, generation=event.generation)
                # A register on a serial line may never notice that the daemon restarted,
                # so it will not say HELLO: what it missed is pushed as soon as we can.
                if any(self._unsent.values()):
                    self._spawn(self._send_unsent(only_never_sent=True))
            elif isinstance(event, LinkLost):
                self._hello_done = False
                log.warning("register.link_lost", lane=self.lane, reason=event.reason)
            else:
                self._on_payload(event.payload)

    def _spawn(self, coroutine: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reject(self, code: msg.ErrorCode, text: str, correlation_id: str | None) -> None:
        log.info("register.request_rejected", lane=self.lane, code=code.value, id=correlation_id)
        self._spawn(self._send(msg.Error(code, text, correlation_id)))

    def _on_payload(self, payload: bytes) -> None:
        try:
            message = msg.decode_message(payload)
        except msg.MessageError as exc:
            self._reject(exc.code, exc.text, exc.correlation_id)
            return
        if isinstance(message, msg.Hello):
            self._on_hello(message)
            return
        if not isinstance(message, msg.RegisterMessage):
            self._reject(
                msg.ErrorCode.WRONG_DIRECTION,
                f"{type(message).__name__} is sent by the daemon, not to it",
                getattr(message, "correlation_id", None),
            )
            return
        if not self._hello_done:
            self._reject(msg.ErrorCode.HELLO_REQUIRED, "send HELLO first", message.correlation_id)
            return
        if isinstance(message, msg.Sale):
            self._on_sale(message)
        elif isinstance(message, msg.Cancel):
            self._spawn(self._call(CancelRequest(message.correlation_id)))
        elif isinstance(message, msg.Status):
            self._spawn(self._call(StatusQuery(message.correlation_id)))
        elif isinstance(message, msg.HandoverCheck):
            self._spawn(self._call(HandoverCheck(message.correlation_id)))
        elif isinstance(message, msg.Refund):
            log.info("register.refund", lane=self.lane, id=message.correlation_id,
                     sale=message.sale_id, amount=message.amount_cents)
            request = RefundRequest(message.correlation_id, message.sale_id, message.amount_cents)
            self._spawn(self._call(request))
        else:
            self._spawn(self._call(HandoverDone(message.correlation_id)))

    def _on_hello(self, hello: msg.Hello) -> None:
        majors = {int(version.split(".")[0]) for version in hello.versions}
        if not majors & msg.SUPPORTED_MAJOR_VERSIONS:
            self._reject(
                msg.ErrorCode.UNSUPPORTED_VERSION,
                f"this daemon speaks {msg.PROTOCOL_VERSION}",
                None,
            )
            return
        self._hello_done = True
        log.info("register.hello", lane=self.lane, versions=",".join(hello.versions))
        reply = msg.HelloReply(msg.PROTOCOL_VERSION, self.lane, self.language)

        async def answer() -> None:
            await self._send(reply)
            if self._screen is not None:
                await self._send(self._screen)
            # A HOLD is a standing order: a register that reconnected (or a daemon that
            # restarted and recovered the sale) must hear it again, not only the screen.
            for correlation_id, reason in list(self._held.items()):
                await self._send(msg.Hold(correlation_id, reason))
            await self._send_unsent(only_never_sent=False)

        self._spawn(answer())

    def _on_sale(self, sale: msg.Sale) -> None:
        log.info("register.sale", lane=self.lane, id=sale.correlation_id, amount=sale.amount_cents)
        request = SaleRequest(sale.correlation_id, sale.amount_cents, sale.terminal_id)
        self._spawn(self._call(request))

    async def _call(self, request: RegisterRequest) -> None:
        try:
            reply = await self._handler(request)
        except Exception:
            log.exception("register.handler_failed", lane=self.lane, request=type(request).__name__)
            await self._send(
                msg.Error(
                    msg.ErrorCode.INTERNAL,
                    "daemon error; ask STATUS later",
                    request.correlation_id,
                )
            )
            return
        answer = self._answer(request, reply)
        if answer is not None:
            await self._send(answer)

    def _answer(self, request: RegisterRequest, reply: Reply | None) -> msg.DaemonMessage | None:
        cid = request.correlation_id
        if isinstance(reply, RequestRejected):
            return msg.Error(reply.code, reply.text, reply.correlation_id or cid)
        if isinstance(request, StatusQuery):
            status = reply if isinstance(reply, SaleStatus) else SaleStatus(cid, None)
            return status_reply(status)
        if isinstance(request, HandoverCheck):
            if isinstance(reply, HandoverDecision):
                return msg.HandoverReply(cid, reply.allowed, reply.reason)
            return msg.HandoverReply(cid, allowed=False, reason=msg.UNKNOWN_STATE)
        return None
