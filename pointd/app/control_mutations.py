"""The control socket's methods that change something: verify, override, cancel, reconcile, refund.

None changes a sale itself: an override or a cancel becomes a core event submitted to the
engine, which journals it before anything happens, exactly as if a register or a timer had
caused it, so the core's rules apply to people too. ``verify`` fetches the payment and,
when it belongs to one of our sales, submits what it saw as ``PaymentVerified``;
``reconcile`` starts the API-asking recovery effects of the unfinished sales; ``refund``
asks the engine's refund book.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from pointd.app.control_views import lane_number, reconciliation, refund_row
from pointd.app.engine import Engine, EngineStopped, payment_verified
from pointd.cloud.errors import CloudError
from pointd.cloud.errors import NotFound as PaymentMissing
from pointd.cloud.port import CloudPort
from pointd.control.errors import MethodError
from pointd.control.protocol import ErrorCode
from pointd.control.server import Caller
from pointd.core.effects import TellRegister
from pointd.core.events import (
    CancelRequested,
    Event,
    OverrideDecision,
    OverrideGiven,
    PaymentNotFound,
    RefundRefusal,
)
from pointd.core.machine import OVERRIDABLE_STATES, CoreState, Sale, Step
from pointd.core.reference import ExternalReference, ExternalReferenceError
from pointd.core.states import RefundStatus

log = structlog.get_logger(__name__)


class MutationMethods:
    """The methods that act, one coroutine each; every change goes through the engine."""

    def __init__(self, *, engine: Engine, cloud: CloudPort, clock: Callable[[], float]) -> None:
        self._engine = engine
        self._cloud = cloud
        self._clock = clock

    async def verify(self, caller: Caller, payment_id: str) -> dict[str, Any]:
        """Fetch the payment now; if it is one of our sales', let the core apply it."""
        state = self._engine.state
        sale = self._sale_of_payment(state, payment_id, None)
        try:
            payment = await self._cloud.get_payment(payment_id)
        except PaymentMissing:
            if sale is not None:
                await self._submit(PaymentNotFound(payment_id=payment_id))
            raise MethodError(
                ErrorCode.NOT_FOUND, f"Mercado Pago has no payment {payment_id} (yet)"
            ) from None
        except CloudError as exc:
            raise MethodError(
                ErrorCode.UNAVAILABLE,
                f"could not ask Mercado Pago about payment {payment_id} "
                f"({type(exc).__name__}); nothing was changed",
            ) from None
        event = payment_verified(payment)
        answer: dict[str, Any] = {
            "payment_id": payment.id,
            "status": payment.status,
            "status_detail": payment.status_detail,
            "amount_cents": payment.amount_cents,
            "currency": payment.currency_id,
            "sale_id": None,
            "sale_state": None,
            "verdict": None,
            "reason": None,
            "changed": False,
        }
        sale = self._sale_of_payment(self._engine.state, payment.id, payment.external_reference)
        if sale is None:
            return answer
        result = await self._submit(event)
        after = result.state.sales[sale.sale_id]
        # The core judged the payment for the sale it routed it to (Step.judgement).
        judgement = result.judgement
        answer.update(
            sale_id=sale.sale_id,
            sale_state=after.state.value,
            verdict=None if judgement is None else judgement.verdict.value,
            reason=None if judgement is None else judgement.reason,
            changed=result.rejection is None and after != sale,
        )
        return answer

    async def override(
        self,
        caller: Caller,
        *,
        decision: str,
        reason: str,
        sale_id: str | None = None,
        correlation_id: str | None = None,
        lane: str | None = None,
    ) -> dict[str, Any]:
        """A supervisor's release or void of a sale that cannot settle by itself.

        The sale is named by the daemon's id or by the register's correlation id (the
        receipt a supervisor holds), with ``lane`` when two lanes used the same one.
        """
        sale = self._override_target(sale_id, correlation_id, lane)
        sale_id = sale.sale_id
        if sale.state not in OVERRIDABLE_STATES:
            allowed = ", ".join(sorted(s.value for s in OVERRIDABLE_STATES))
            raise MethodError(
                ErrorCode.CONFLICT,
                f"sale {sale_id} is {sale.state.value}; an override applies only to a sale "
                f"that is {allowed} (nothing was done)",
            )
        result = await self._submit(
            OverrideGiven(
                sale_id=sale_id, decision=OverrideDecision(decision), reason=reason, uid=caller.uid
            )
        )
        after = result.state.sales[sale_id]
        if result.rejection is not None:
            raise MethodError(
                ErrorCode.CONFLICT,
                f"override of sale {sale_id} refused: {result.rejection.reason} "
                f"(the sale is still {after.state.value})",
            )
        return {"sale_id": sale_id, "correlation_id": after.correlation_id,
                "state": after.state.value, "decision": decision}

    def _override_target(
        self, sale_id: str | None, correlation_id: str | None, lane: str | None
    ) -> Sale:
        sales = self._engine.state.sales
        if sale_id is not None:
            sale = sales.get(sale_id)
            if sale is None:
                raise MethodError(ErrorCode.NOT_FOUND, f"no sale {sale_id!r} (nothing was done)")
            return sale
        assert correlation_id is not None  # the server enforces exactly one of the two
        number = lane_number(lane) if lane is not None else None
        found = [s for s in sales.values() if s.correlation_id == correlation_id
                 and (number is None or s.lane == number)]
        # A receipt number may come back on another day or lane: the sale that can still be
        # overridden is the one meant.
        open_ones = [s for s in found if s.state in OVERRIDABLE_STATES] or found
        if not open_ones:
            on_lane = f" on lane {lane}" if lane is not None else ""
            raise MethodError(
                ErrorCode.NOT_FOUND,
                f"no sale with receipt {correlation_id!r}{on_lane} (nothing was done)",
            )
        if len(open_ones) > 1:
            listed = ", ".join(f"{s.sale_id} (lane {s.lane}, {s.state.value})" for s in open_ones)
            raise MethodError(
                ErrorCode.CONFLICT,
                f"receipt {correlation_id!r} names several sales: {listed}; give the lane or "
                "the sale id (nothing was done)",
            )
        return open_ones[0]

    async def cancel(
        self, caller: Caller, sale_id: str | None = None, lane: str | None = None
    ) -> dict[str, Any]:
        """Ask the core to cancel a sale, named by id or as its lane's current sale."""
        state = self._engine.state
        if sale_id is not None:
            target = state.sales.get(sale_id)
            if target is None:
                raise MethodError(ErrorCode.NOT_FOUND, f"no sale {sale_id!r} (nothing was done)")
        else:
            assert lane is not None  # the server enforces exactly one of sale_id, lane
            found = state.sale_on_lane(lane_number(lane))
            if found is None:
                raise MethodError(
                    ErrorCode.NOT_FOUND, f"lane {lane} has no sale in progress (nothing was done)"
                )
            target = found
        if target.is_final:
            raise MethodError(
                ErrorCode.CONFLICT,
                f"sale {target.sale_id} already ended {target.state.value} (nothing was done)",
            )
        result = await self._submit(
            CancelRequested(sale_id=target.sale_id, lane=None, by=f"control uid {caller.uid}")
        )
        after = result.state.sales[target.sale_id]
        if result.rejection is not None:
            raise MethodError(
                ErrorCode.CONFLICT,
                f"cancel of sale {target.sale_id} refused: {result.rejection.reason}",
            )
        notice = next(
            (e.notice for e in result.effects if isinstance(e, TellRegister) and e.notice), None
        )
        return {
            "sale_id": target.sale_id,
            "state": after.state.value,
            "cancel_requested": after.cancel_requested,
            "notice": notice.value if notice is not None else None,
        }

    async def reconcile(self, caller: Caller) -> dict[str, Any]:
        """Start the API checks of every unfinished sale now; results follow as sale events."""
        rows, started = reconciliation(self._engine.state, self._clock(), self._engine.policy)
        self._engine.run_effects(started)
        log.info("control_reconcile", checked=len(rows), asked=len(started), uid=caller.uid)
        return {"checked": len(rows), "asked": len(started), "sales": rows}

    async def refund(
        self, caller: Caller, sale_id: str, amount_cents: int | None = None
    ) -> dict[str, Any]:
        """Refund (part of) a paid sale; answers once the refund is journaled and sent off.

        The outcome follows on the sale's register and in ``sale``'s refunds; a refusal
        (unknown sale, no verified payment, more than was paid) is journaled too and
        answered as an error, having sent nothing.
        """
        try:
            result = await self._engine.request_refund(
                sale_id=sale_id, amount_cents=amount_cents, by=f"control uid {caller.uid}",
                uid=caller.uid,
            )
        except EngineStopped:
            raise MethodError(
                ErrorCode.UNAVAILABLE, "the daemon is stopping; nothing was done"
            ) from None
        refund = result.book.refunds.get(result.refund_id or "")
        if refund is None:
            raise MethodError(ErrorCode.CONFLICT, f"refund refused: {result.rejection}")
        if refund.status is RefundStatus.REFUSED:
            assert refund.refusal is not None
            code = (ErrorCode.NOT_FOUND if refund.refusal is RefundRefusal.UNKNOWN_SALE
                    else ErrorCode.CONFLICT)
            raise MethodError(
                code, f"refund of sale {sale_id} refused ({refund.refusal.value}): "
                      f"{refund.detail} (nothing was sent)")
        return refund_row(refund)

    async def _submit(self, event: Event) -> Step:
        try:
            return await self._engine.submit(event)
        except EngineStopped:
            raise MethodError(
                ErrorCode.UNAVAILABLE, "the daemon is stopping; nothing was done"
            ) from None

    @staticmethod
    def _sale_of_payment(
        state: CoreState, payment_id: str, external_reference: str | None
    ) -> Sale | None:
        sale_id = state.payments.get(payment_id)
        if sale_id is None and external_reference:
            try:
                ref = ExternalReference.parse(external_reference)
            except ExternalReferenceError:
                return None
            if ref.store == state.store_id:
                sale_id = ref.sale
        return state.sales.get(sale_id) if sale_id is not None else None
