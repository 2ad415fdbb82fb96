"""The checkout lanes: register requests become core events, core decisions reach the register.

Theory of operation
-------------------
Each lane has one register session. What the register asks is answered here from the
core's state (status, handover checks) or turned into a core event for the engine (sale,
cancel, handover done). What the core decides for the register arrives as ``TellRegister``
effects and is shown through the lane's session.

A register that repeats a SALE with a correlation id the lane already knows (after a
reconnect, or after the daemon restarted) gets that sale's current standing again, never a
second sale — while that sale is in progress, or for ``Policy.sale_retry_window`` after it
ended (``pointd.core.machine.is_retry``). Later, and with another amount at any time, the
id is refused as reused: an old sale's RESULT never answers a new purchase, and no new sale
starts under an id the journal already gave to one.

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

from pointd.core.effects import TellRegister
from pointd.core.events import CancelRequested, HandoverConfirmed, SaleRequested
from pointd.core.machine import CoreState, Sale, is_retry
from pointd.core.policy import Policy
from pointd.core.refunds import TellRefund
from pointd.core.states import LaneCondition, Refusal
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

    @property
    def policy(self) -> Policy:
        """The decision parameters in force."""
        ...

    def now(self) -> float:
        """The wall clock the engine decides with."""
        ...

    async def submit(self, event: SaleRequested | CancelRequested | HandoverConfirmed) -> object:
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

    async def tell(self, effect: TellRegister, *, repeated_sale: bool = False) -> None:
        """Show one sale's standing on its lane's register.

        ``repeated_sale``: the register asked for this sale again, so it also gets the
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
            repeated_sale=repeated_sale,
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
        sale = _find(engine.state, lane, request.correlation_id)
        match request:
            case SaleRequest():
                return await self._sale(engine, lane, request, sale)
            case CancelRequest():
                if sale is None:
                    return _unknown(request.correlation_id)
                await engine.submit(CancelRequested(sale_id=sale.sale_id, lane=lane, by="register"))
                return None
            case StatusQuery():
                if sale is None:
                    return SaleStatus(request.correlation_id, None)
                return SaleStatus(
                    request.correlation_id,
                    sale.state,
                    amount_cents=sale.amount_cents,
                    payment_id=sale.payment_id,
                )
            case HandoverCheck():
                if sale is None:
                    return _unknown(request.correlation_id)
                return HandoverDecision(
                    request.correlation_id, sale.may_hand_over, sale.state.value
                )
            case HandoverDone():
                if sale is None:
                    return _unknown(request.correlation_id)
                await engine.submit(HandoverConfirmed(sale_id=sale.sale_id))
                return None

    async def _refund(
        self, engine: Submitter, lane: int, request: RefundRequest
    ) -> Reply | None:
        sale = _find(engine.state, lane, request.sale_correlation_id)
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
        if known is not None:
            if known.amount_cents != request.amount_cents:
                return RequestRejected(
                    request.correlation_id,
                    msg.ErrorCode.ID_REUSED,
                    "this correlation id names a sale of another amount",
                )
            if not is_retry(known, engine.now(), engine.policy):
                minutes = engine.policy.sale_retry_window / 60
                return RequestRejected(
                    request.correlation_id,
                    msg.ErrorCode.ID_REUSED,
                    f"this correlation id names a sale that ended more than {minutes:g} "
                    "minutes ago; a new purchase needs a new id (STATUS still answers it)",
                )
            await self._screens.tell(_standing(known), repeated_sale=True)
            return None
        if request.repeated:
            # The register used this id earlier and the journal no longer holds its sale
            # in memory: whatever it was, a new sale must not start under it.
            return RequestRejected(
                request.correlation_id,
                msg.ErrorCode.ID_REUSED,
                "this correlation id names an earlier sale; a new purchase needs a new id",
            )
        await self._startup.wait()
        terminal_id, refusal = self._terminals.check(lane)
        if request.terminal_id is not None and terminal_id not in {None, request.terminal_id}:
            refusal = refusal or Refusal.INVALID_REQUEST
        await engine.submit(
            SaleRequested(
                sale_id=self._new_id(),
                lane=lane,
                correlation_id=request.correlation_id,
                amount_cents=request.amount_cents,
                terminal_id=terminal_id or request.terminal_id or "",
                terminal_ok=refusal,
            )
        )
        return None


def _find(state: CoreState, lane: int, correlation_id: str) -> Sale | None:
    current = state.sale_on_lane(lane)
    if current is not None and current.correlation_id == correlation_id:
        return current
    matches = [
        s for s in state.sales.values() if s.lane == lane and s.correlation_id == correlation_id
    ]
    return max(matches, key=lambda s: s.requested_at) if matches else None


def _standing(sale: Sale) -> TellRegister:
    return TellRegister(
        lane=sale.lane,
        correlation_id=sale.correlation_id,
        sale_id=sale.sale_id,
        state=sale.state,
        refusal=sale.refusal,
        payment_id=sale.payment_id,
        amount_cents=sale.amount_cents,
        approval_withdrawn=sale.approval_withdrawn,
    )


def _unknown(correlation_id: str) -> RequestRejected:
    return RequestRejected(correlation_id, msg.ErrorCode.UNKNOWN_SALE, "no such sale on this lane")
