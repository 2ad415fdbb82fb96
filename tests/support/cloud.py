"""The one hand-written fake of the cloud port (``pointd.cloud.port.CloudPort``).

Tests that need Mercado Pago's real behaviour use the cloud simulator over loopback; this
fake is for the tests that need an answer they choose (a scripted create outcome, a payment
missing or approved, the API down) and a record of every call. Every call is recorded as
``(name, argument)`` with the port method's short name: ``create`` (terminal, cents,
reference, idempotency key, ticket), ``get_state``, ``cancel``, ``get_payment``,
``find_payments``, ``find_attempt``, ``refund_payment``, ``list_terminals``,
``set_operating_mode``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pointd.cloud.errors import NotFound, NotSent, ServerError
from pointd.cloud.models import Payment
from pointd.cloud.port import AttemptFound, AttemptQuery, IntentView, RefundView, TerminalView

# A create's scripted answer: the intent id it returns, or the error it raises.
Answer = str | Exception


@dataclass
class FakeCloud:
    """A CloudPort answering from tables and scripts, recording every call."""

    # list_terminals answers these; ``devices_failing`` makes it raise instead.
    devices: list[Any] = field(default_factory=list)
    devices_failing: bool = False
    # set_operating_mode records (device, mode); ``mode_change_fails`` makes it time out.
    mode_changes: list[tuple[str, str]] = field(default_factory=list)
    mode_change_fails: bool = False
    # Creates answer from ``create_answers`` in order while it lasts, else open an intent.
    create_answers: list[Answer] = field(default_factory=list)
    hold_creates: asyncio.Event | None = None  # when set, creates wait for it
    creates_are_idempotent: bool = False  # the Payment Intent API's behaviour
    intents: dict[str, IntentView] = field(default_factory=dict)
    payments: dict[str, Payment] = field(default_factory=dict)
    by_reference: dict[str, list[Payment]] = field(default_factory=dict)
    # ``failing``: payment reads answer 503; ``down``: payment reads are never sent.
    failing: bool = False
    down: bool = False
    calls: list[tuple[str, Any]] = field(default_factory=list)
    # Every device-list call, True when it answered: a test can await the next one.
    fetched: asyncio.Queue[bool] = field(default_factory=asyncio.Queue)

    def called(self, kind: str) -> list[Any]:
        """The arguments of every ``kind`` call, in order."""
        return [arg for name, arg in self.calls if name == kind]

    async def list_terminals(self) -> list[TerminalView]:
        self.calls.append(("list_terminals", None))
        self.fetched.put_nowait(not self.devices_failing)
        if self.devices_failing:
            raise ConnectionError("https://api.example/secret-path unreachable")
        return list(self.devices)

    async def set_operating_mode(self, device_id: str, mode: str) -> str:
        self.calls.append(("set_operating_mode", (device_id, mode)))
        self.mode_changes.append((device_id, mode))
        if self.mode_change_fails:
            raise TimeoutError("no answer")
        return mode

    async def create_payment(self, terminal_id: str, amount_cents: int,
                             external_reference: str, idempotency_key: str, *,
                             ticket_number: str | None = None, description: str | None = None,
                             print_on_terminal: bool = True) -> str:
        self.calls.append(("create", (terminal_id, amount_cents, external_reference,
                                      idempotency_key, ticket_number)))
        if self.hold_creates is not None:
            await self.hold_creates.wait()
        if self.create_answers:
            answer = self.create_answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        intent_id = f"INT-{external_reference}"
        self.intents[intent_id] = IntentView(intent_id, "OPEN", None, None,
                                             external_reference, amount_cents)
        return intent_id

    async def get_payment_state(self, intent_id: str) -> IntentView:
        self.calls.append(("get_state", intent_id))
        return self.intents[intent_id]

    async def cancel_payment(self, terminal_id: str, intent_id: str) -> None:
        self.calls.append(("cancel", intent_id))

    async def get_payment(self, payment_id: str) -> Payment:
        self.calls.append(("get_payment", payment_id))
        self._raise_if_unreachable()
        found = self.payments.get(payment_id)
        if found is None:
            found = next((p for ps in self.by_reference.values() for p in ps
                          if p.id == payment_id), None)
        if found is None:
            raise NotFound(404, "not_found", f"payment {payment_id} not found")
        return found

    async def find_payments(self, external_reference: str) -> list[Payment]:
        self.calls.append(("find_payments", external_reference))
        if self.down:
            raise NotSent("connection refused")
        return list(self.by_reference.get(external_reference, []))

    async def find_attempt(self, query: AttemptQuery) -> AttemptFound:
        """Nothing found, by both of the sources an absence needs."""
        self.calls.append(("find_attempt", query))
        return AttemptFound(None, (), ("payments_by_reference", "intent_events"))

    async def refund_payment(self, terminal_id: str, intent_or_order_id: str, payment_id: str,
                             amount_cents: int | None, idempotency_key: str) -> RefundView:
        self.calls.append(("refund_payment", payment_id))
        raise AssertionError("this test does not refund (the refund tests use the simulator)")

    async def get_refund(self, intent_or_order_id: str, payment_id: str,
                         refund_id: str) -> RefundView:
        raise AssertionError("this test does not refund (the refund tests use the simulator)")

    def _raise_if_unreachable(self) -> None:
        if self.down:
            raise NotSent("connection refused")
        if self.failing:
            raise ServerError(503, "unavailable", "from the test")
