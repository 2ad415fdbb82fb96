"""The checkout lanes: register requests become core events, core decisions reach the register.

Theory of operation
-------------------
Each lane has one register session. What the register asks is answered from the core's
state (STATUS and HANDOVER_CHECK by ``pointd.core.answers``) or turned into a core event
for the engine (sale, cancel, handover done). What the core decides for the register
arrives as ``TellRegister`` effects and is shown through the lane's session. Nothing here
decides: every SALE becomes a ``SaleRequested`` with the lane's terminal verdict (USB,
device list, PDV mode, Mercado Pago reachable), and the core's admission (lane busy,
terminal held by another sale, correlation id repeated or reused) comes back in the Step,
which is only translated for the register.

A register that repeats a SALE with a correlation id the lane already knows (after a
reconnect, or after the daemon restarted) gets that sale's current standing again, never a
second sale — while that sale is in progress, or for ``Policy.sale_retry_window`` after it
ended (``pointd.core.machine.is_retry``). Later, and with another amount at any time, the
id is refused as reused (ERROR ``id_reused``): an old sale's RESULT never answers a new
purchase, and no new sale starts under an id the journal already gave to one.

A REFUND names its sale by the sale's correlation id on the same lane; the engine decides
it (``pointd.core.refunds``) under the key ``lane<N>:<refund correlation id>``, so a repeated
REFUND is the same refund. Its standing comes back as ``TellRefund`` effects.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import structlog

from pointd.core import answers
from pointd.core.effects import TellRefund, TellRegister
from pointd.core.events import CancelRequested, HandoverConfirmed, SaleRequested
from pointd.core.machine import CoreState, Sale, Step
from pointd.core.states import Admission, LaneCondition, Refusal
from pointd.register import messages as msg
from pointd.register.session import (
    CancelRequest,
    HandoverCheck,
    HandoverDecision,
    HandoverDone,
    RefundRequest,
    RegisterRequest,
    RegisterSession,
    Reply,
    RequestRejected,
    SaleRequest,
    SaleStatus,
    StatusQuery,
)

log = structlog.get_logger(__name__)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SALE_ID_LENGTH = 26


def new_sale_id(now: float | None = None, entropy: bytes | None = None) -> str:
    """A 26-character, time-ordered, unique sale id (ULID layout, Crockford base32)."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    random_bits = int.from_bytes(entropy if entropy is not None else os.urandom(10), "big")
    value = (millis << 80) | (random_bits & ((1 << 80) - 1))
    chars = []
    for _ in range(SALE_ID_LENGTH):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class Submitter(Protocol):
    """The part of the engine the lanes use."""

    @property
    def state(self) -> CoreState:
        """The current core state."""
        ...

    async def submit(self, event: SaleRequested | CancelRequested | HandoverConfirmed) -> Step:
        """Journal and decide one event."""
        ...

    async def request_refund(
        self,
        *,
        sale_id: str,
        amount_cents: int | None,
        by: str,
        uid: int | None = None,
        request_key: str | None = None,
        correlation_id: str | None = None,
    ) -> object:
        """Journal and decide a refund request for a sale."""
        ...


class TerminalCheck(Protocol):
    """Which terminal serves a lane and whether a sale may start there now."""

    def check(self, lane: int) -> tuple[str | None, Refusal | None]:
        """The terminal id and the verdict for a sale request right now."""
        ...


class StartUp(Protocol):
    """Whether start-up has finished what a sale's admission depends on."""

    async def wait(self) -> None:
        """Return once the lanes' terminals are known (the first device list was asked)."""
        ...


class RegisterScreens:
    """What the core decides for the registers, shown through each lane's session."""

    def __init__(self, sessions: Mapping[int, RegisterSession]) -> None:
        self._sessions = dict(sessions)

    @property
    def sessions(self) -> Mapping[int, RegisterSession]:
        """The register session of each lane."""
        return self._sessions

    @property
    def lanes(self) -> list[int]:
        """The lane numbers served."""
        return sorted(self._sessions)

    # --- engine → register -----------------------------------------------------------------

    async def tell(self, effect: TellRegister) -> None:
        """Show one sale's standing on its lane's register.

        A ``repeated`` telling (the register asked for this sale again) also carries the
        RESULT of a sale whose goods already left.
        """
        session = self._sessions.get(effect.lane)
        if session is None:
            log.warning("checkout.no_register_for_lane", lane=effect.lane)
            return
        if effect.refusal is not None:
            await session.show_refusal(effect.correlation_id, effect.refusal)
            return
        await session.show_state(
            effect.correlation_id,
            effect.state,
            payment_id=effect.payment_id,
            amount_cents=effect.amount_cents,
            notice=effect.notice,
            approval_withdrawn=effect.approval_withdrawn,
            repeated_sale=effect.repeated,
        )

    async def tell_refund(self, effect: TellRefund) -> None:
        """Show one refund's standing on its lane's register."""
        session = self._sessions.get(effect.lane) if effect.lane is not None else None
        if session is None:
            log.warning("checkout.no_register_for_lane", lane=effect.lane)
            return
        await session.show_refund(
            effect.correlation_id,
            effect.sale_correlation_id,
            effect.status,
            amount_cents=effect.amount_cents,
            refusal=effect.refusal,
            via=effect.via,
        )


class Checkout:
    """All lanes of this store PC: register requests become core events for the engine.

    A SALE is admitted only once start-up has learnt the lanes' terminals (``startup``):
    until then it waits (the register waits for its RESULT anyway) rather than being
    refused for a terminal the daemon simply has not looked up yet.
    """

    def __init__(
        self,
        *,
        engine: Submitter,
        terminals: TerminalCheck,
        screens: RegisterScreens,
        startup: StartUp,
        new_id: Callable[[], str] = new_sale_id,
    ) -> None:
        self._engine = engine
        self._terminals = terminals
        self._screens = screens
        self._startup = startup
        self._new_id = new_id

    def handler_for(self, lane: int) -> Callable[[RegisterRequest], Awaitable[Reply | None]]:
        """The request handler for one lane's session."""

        async def handle(request: RegisterRequest) -> Reply | None:
            return await self.on_request(lane, request)

        return handle

    async def show_condition(self, lane: int, condition: LaneCondition) -> None:
        """Show a lane's idle condition, unless a sale is in progress there."""
        session = self._screens.sessions.get(lane)
        if session is None:
            return
        if self._engine.state.sale_on_lane(lane) is None:
            await session.show_condition(condition)

    # --- register → engine -----------------------------------------------------------------

    async def on_request(self, lane: int, request: RegisterRequest) -> Reply | None:
        """Answer or act on one register request."""
        engine = self._engine
        if isinstance(request, RefundRequest):
            return await self._refund(engine, lane, request)
        sale = engine.state.sale_of_request(lane, request.correlation_id)
        match request:
            case SaleRequest():
                return await self._sale(engine, lane, request, sale)
            case CancelRequest():
                if sale is None:
                    return _unknown(request.correlation_id)
                await engine.submit(CancelRequested(sale_id=sale.sale_id, lane=lane, by="register"))
                return None
            case StatusQuery():
                standing = answers.status(engine.state, lane, request.correlation_id)
                return SaleStatus(
                    request.correlation_id,
                    standing.state,
                    amount_cents=standing.amount_cents,
                    payment_id=standing.payment_id,
                    handover=standing.handover,
                )
            case HandoverCheck():
                if sale is None:
                    return _unknown(request.correlation_id)
                return HandoverDecision(
                    request.correlation_id,
                    answers.goods_may_leave(engine.state, sale),
                    sale.state.value,
                )
            case HandoverDone():
                if sale is None:
                    return _unknown(request.correlation_id)
                await engine.submit(HandoverConfirmed(sale_id=sale.sale_id))
                return None

    async def _refund(
        self, engine: Submitter, lane: int, request: RefundRequest
    ) -> Reply | None:
        sale = engine.state.sale_of_request(lane, request.sale_correlation_id)
        if sale is None:
            return _unknown(request.correlation_id)
        await engine.request_refund(
            sale_id=sale.sale_id,
            amount_cents=request.amount_cents,
            by="register",
            request_key=f"lane{lane}:{request.correlation_id}",
            correlation_id=request.correlation_id,
        )
        return None

    async def _sale(
        self, engine: Submitter, lane: int, request: SaleRequest, known: Sale | None
    ) -> Reply | None:
        if known is None:
            # A new purchase: its admission depends on the lane's terminal, which start-up
            # may not have looked up yet. A repeat is answered from the journal at once.
            await self._startup.wait()
        terminal_id, refusal = self._terminals.check(lane)
        if request.terminal_id is not None and terminal_id not in {None, request.terminal_id}:
            refusal = refusal or Refusal.INVALID_REQUEST
        result = await engine.submit(
            SaleRequested(
                sale_id=self._new_id(),
                lane=lane,
                correlation_id=request.correlation_id,
                amount_cents=request.amount_cents,
                terminal_id=terminal_id or request.terminal_id or "",
                terminal_ok=refusal,
            )
        )
        if result.admission is Admission.ID_REUSED:
            assert result.rejection is not None
            return RequestRejected(
                request.correlation_id, msg.ErrorCode.ID_REUSED, result.rejection.reason
            )
        return None


def _unknown(correlation_id: str) -> RequestRejected:
    return RequestRejected(correlation_id, msg.ErrorCode.UNKNOWN_SALE, "no such sale on this lane")
