"""A deterministic stand-in for the daemon's engine, for recording and replaying transcripts.

The real engine belongs to the core; this one decides a sale's path from the amount's
cents, the way Mercado Pago's test cards decide by amount:

    ..00  OPEN, PROCESSING, APPROVED (payment "P<amount>", card 4242)
    ..01  OPEN, DECLINED
    ..02  OPEN, HELD (released only by a later approve())
    ..03  OPEN, then nothing until the register asks STATUS: the answer is APPROVED

It answers a SALE the way the core's admission does (the session only translates): a
correlation id it knows, with the same amount, is told its standing again; with another
amount it is ERROR ``id_reused``; a new one while another sale is unfinished is refused as
``lane_busy``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from pointd.core.states import FINAL_STATES, HANDOVER_ALLOWED_STATES, Refusal, SaleState
from pointd.register import messages as msg
from pointd.register.session import (
    CancelRequest,
    HandoverCheck,
    HandoverDecision,
    HandoverDone,
    RegisterRequest,
    RegisterSession,
    Reply,
    RequestRejected,
    SaleRequest,
    SaleStatus,
    StatusQuery,
)

CARD_LAST4 = "4242"
_PATHS = {
    0: (SaleState.OPEN, SaleState.PROCESSING, SaleState.APPROVED),
    1: (SaleState.OPEN, SaleState.DECLINED),
    2: (SaleState.OPEN, SaleState.HELD),
    3: (SaleState.OPEN,),
}


class StubEngine:
    """Answers a RegisterSession's requests and pushes sale states to it."""

    def __init__(self) -> None:
        self.session: RegisterSession | None = None
        self.requests: list[RegisterRequest] = []
        self.states: dict[str, SaleState] = {}
        self.amounts: dict[str, int] = {}
        self.sale_requested = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, session: RegisterSession) -> None:
        """Push states to this session."""
        self.session = session

    async def close(self) -> None:
        """Cancel pushes still running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _show(self, cid: str, state: SaleState, *, repeated: bool = False) -> None:
        assert self.session is not None
        self.states[cid] = state
        amount = self.amounts[cid]
        approved = state in HANDOVER_ALLOWED_STATES
        await self.session.show_state(
            cid,
            state,
            payment_id=f"P{amount}" if approved else None,
            amount_cents=amount,
            card_last4=CARD_LAST4 if approved else None,
            repeated_sale=repeated,
        )

    async def _run_sale(self, cid: str) -> None:
        for state in _PATHS.get(self.amounts[cid] % 100, _PATHS[0]):
            await self._show(cid, state)

    async def approve(self, cid: str) -> None:
        """Finish a held sale as approved."""
        await self._show(cid, SaleState.APPROVED)

    def _status(self, cid: str) -> SaleStatus:
        state = self.states.get(cid)
        if state is None:
            return SaleStatus(cid, None)
        approved = state in HANDOVER_ALLOWED_STATES
        return SaleStatus(
            cid,
            state,
            amount_cents=self.amounts[cid],
            payment_id=f"P{self.amounts[cid]}" if approved else None,
            card_last4=CARD_LAST4 if approved else None,
            handover=approved,
        )

    async def __call__(self, request: RegisterRequest) -> Reply | None:
        """The session's handler."""
        self.requests.append(request)
        cid = request.correlation_id
        if isinstance(request, SaleRequest) and cid in self.states:
            if self.amounts[cid] != request.amount_cents:
                return RequestRejected(cid, msg.ErrorCode.ID_REUSED,
                                       "this correlation id names a sale of another amount")
            self._spawn(self._show(cid, self.states[cid], repeated=True))
            return None
        if isinstance(request, SaleRequest) and any(
                state not in FINAL_STATES for state in self.states.values()):
            assert self.session is not None
            self._spawn(self.session.show_refusal(cid, Refusal.LANE_BUSY))
            return None
        if isinstance(request, SaleRequest):
            self.amounts[cid] = request.amount_cents
            self.states[cid] = SaleState.REQUESTED
            self.sale_requested.set()
            self._spawn(self._run_sale(cid))
            return None
        if isinstance(request, StatusQuery):
            if self.states.get(cid) is SaleState.OPEN and self.amounts[cid] % 100 == 3:
                self.states[cid] = SaleState.APPROVED
                self._spawn(self._show(cid, SaleState.APPROVED))
            return self._status(cid)
        state = self.states.get(cid)
        if state is None:
            return RequestRejected(cid, msg.ErrorCode.UNKNOWN_SALE, "no such sale")
        if isinstance(request, HandoverCheck):
            return HandoverDecision(cid, state in HANDOVER_ALLOWED_STATES, state.value)
        if isinstance(request, HandoverDone):
            self._spawn(self._show(cid, SaleState.HANDED_OVER))
            return None
        assert isinstance(request, CancelRequest)
        if state not in FINAL_STATES and state is not SaleState.APPROVED:
            self._spawn(self._show(cid, SaleState.CANCELED))
        return None
