"""What show_state / show_refusal / show_condition send, for every value, over an in-memory link."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pointd.core.effects import Notice
from pointd.core.states import LaneCondition, Refusal, SaleState
from pointd.link.driver import LinkEvent, LinkUp, PayloadReceived
from pointd.register import messages as m
from pointd.register.prompts import prompt_for
from pointd.register.session import RegisterRequest, RegisterSession, Reply

WAIT = 5.0


class RecordingLink:
    """A link that is always up and keeps what the session sends."""

    def __init__(self) -> None:
        self.sent: list[m.Message] = []
        self._events: asyncio.Queue[LinkEvent] = asyncio.Queue()
        self._events.put_nowait(LinkUp(1))
        self._closed = asyncio.Event()

    async def run(self) -> None:
        await self._closed.wait()

    async def send(self, payload: bytes) -> None:
        self.sent.append(m.decode_message(payload))

    async def next_event(self) -> LinkEvent:
        return await self._events.get()

    def close(self) -> None:
        self._closed.set()

    def deliver(self, payload: bytes) -> None:
        self._events.put_nowait(PayloadReceived(payload))

    def take(self) -> list[m.Message]:
        sent, self.sent = self.sent, []
        return sent


async def _nothing(request: RegisterRequest) -> Reply | None:
    return None


@pytest.fixture
async def running() -> AsyncIterator[tuple[RegisterSession, RecordingLink]]:
    session = RegisterSession(lane=1, language="en", handler=_nothing)
    link = RecordingLink()
    task = asyncio.create_task(session.run(link))
    await asyncio.sleep(0)  # let run() attach the link
    yield session, link
    session.stop()
    await asyncio.wait_for(task, WAIT)


EXPECTED_EXTRA: dict[SaleState, list[type]] = {
    SaleState.HELD: [m.Hold],
    SaleState.ESCALATED: [m.Hold],
    SaleState.BLOCKED: [m.Hold],
    SaleState.APPROVED: [m.Result],
    SaleState.OVERRIDDEN: [m.Release, m.Result],
    SaleState.DECLINED: [m.Result],
    SaleState.CANCELED: [m.Result],
    SaleState.FAILED: [m.Result],
    SaleState.ABANDONED: [m.Result],
}


@pytest.mark.parametrize("state", list(SaleState))
async def test_every_state_sends_its_prompt_and_what_it_implies(
    running: tuple[RegisterSession, RecordingLink], state: SaleState
) -> None:
    session, link = running
    await session.show_state("X-1", state, payment_id="P9", amount_cents=900, card_last4="1234")
    sent = link.take()
    display = sent[0]
    assert isinstance(display, m.Display)
    assert display.lines == prompt_for(state, "en").lines
    assert display.correlation_id == "X-1"
    assert [type(x) for x in sent[1:]] == EXPECTED_EXTRA.get(state, [])


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        (SaleState.APPROVED, m.Outcome.APPROVED),
        (SaleState.OVERRIDDEN, m.Outcome.APPROVED),
        (SaleState.DECLINED, m.Outcome.DECLINED),
        (SaleState.CANCELED, m.Outcome.CANCELED),
        (SaleState.FAILED, m.Outcome.ERROR),
        (SaleState.ABANDONED, m.Outcome.ABANDONED),
    ],
)
async def test_result_outcomes(
    running: tuple[RegisterSession, RecordingLink], state: SaleState, outcome: m.Outcome
) -> None:
    session, link = running
    await session.show_state("X-2", state, payment_id="P9", amount_cents=900, card_last4="1234")
    (result,) = [x for x in link.take() if isinstance(x, m.Result)]
    assert result.outcome is outcome
    assert result.amount_cents == 900


async def test_release_only_after_a_hold(running: tuple[RegisterSession, RecordingLink]) -> None:
    session, link = running
    await session.show_state("X-3", SaleState.APPROVED)
    assert not any(isinstance(x, m.Release) for x in link.take())
    await session.show_state("X-4", SaleState.HELD)
    await session.show_state("X-4", SaleState.APPROVED, payment_id="P1", amount_cents=100)
    sent = link.take()
    assert [type(x) for x in sent] == [m.Display, m.Hold, m.Display, m.Release, m.Result]
    assert sent[3] == m.Release("X-4", "approved")


async def test_overridden_release_says_override(
    running: tuple[RegisterSession, RecordingLink],
) -> None:
    session, link = running
    await session.show_state("X-5", SaleState.OVERRIDDEN)
    release, result = link.take()[1:]
    assert release == m.Release("X-5", "override")
    assert isinstance(result, m.Result)
    assert result.reason == "override"


@pytest.mark.parametrize("refusal", list(Refusal))
async def test_every_refusal(
    running: tuple[RegisterSession, RecordingLink], refusal: Refusal
) -> None:
    session, link = running
    await session.show_refusal("X-6", refusal)
    display, result = link.take()
    assert isinstance(display, m.Display)
    assert display.lines == prompt_for(refusal, "en").lines
    assert result == m.Result("X-6", m.Outcome.REFUSED, reason=refusal.value)


@pytest.mark.parametrize("condition", list(LaneCondition))
async def test_every_condition(
    running: tuple[RegisterSession, RecordingLink], condition: LaneCondition
) -> None:
    session, link = running
    await session.show_condition(condition)
    (display,) = link.take()
    assert isinstance(display, m.Display)
    assert display.lines == prompt_for(condition, "en").lines
    assert display.correlation_id is None


@pytest.mark.parametrize(
    ("state", "notice", "extra"),
    [
        (SaleState.ON_TERMINAL, Notice.CANCEL_ON_TERMINAL, []),
        (SaleState.HELD, Notice.CANCEL_TOO_LATE, [m.Hold]),
    ],
)
async def test_a_notice_replaces_the_screen_but_not_what_the_state_implies(
    running: tuple[RegisterSession, RecordingLink],
    state: SaleState,
    notice: Notice,
    extra: list[type],
) -> None:
    session, link = running
    await session.show_state("X-9", state, notice=notice)
    display, *rest = link.take()
    assert isinstance(display, m.Display)
    assert display.lines == prompt_for(notice, "en").lines
    assert display.lines != prompt_for(state, "en").lines
    assert [type(x) for x in rest] == extra


@pytest.mark.parametrize(("state", "then"), [
    (SaleState.BLOCKED, [m.Hold]),
    (SaleState.ESCALATED, [m.Hold]),
    (SaleState.DECLINED, [m.Result]),
])
async def test_a_withdrawn_approval_is_told_before_what_follows(
    running: tuple[RegisterSession, RecordingLink], state: SaleState, then: list[type]
) -> None:
    session, link = running
    await session.show_state("X-10", SaleState.APPROVED, payment_id="P1", amount_cents=100)
    link.take()
    await session.show_state("X-10", state, amount_cents=100, approval_withdrawn=True)
    display, withdraw, *rest = link.take()
    assert isinstance(display, m.Display)
    assert display.lines == prompt_for(state, "en").lines
    assert withdraw == m.Withdraw("X-10", state.value)
    assert [type(x) for x in rest] == then


@pytest.mark.parametrize("state", [SaleState.APPROVED, SaleState.OVERRIDDEN,
                                   SaleState.HANDED_OVER, SaleState.HANDOVER_UNCONFIRMED])
async def test_a_standing_approval_is_never_withdrawn(
    running: tuple[RegisterSession, RecordingLink], state: SaleState
) -> None:
    session, link = running
    await session.show_state("X-11", state, approval_withdrawn=True)
    assert not any(isinstance(x, m.Withdraw) for x in link.take())


async def test_an_unconfirmed_handover_closes_the_sale_without_a_second_result(
    running: tuple[RegisterSession, RecordingLink],
) -> None:
    session, link = running
    await session.show_state("X-12", SaleState.HANDOVER_UNCONFIRMED)
    (display,) = link.take()
    assert isinstance(display, m.Display)
    assert display.lines == ("SALE CLOSED", "HANDOVER UNCONFIRMED", "TELL THE TECHNICIAN")


@pytest.mark.parametrize("state", [SaleState.HANDED_OVER, SaleState.HANDOVER_UNCONFIRMED])
async def test_a_repeated_sale_whose_goods_left_gets_its_approved_result_again(
    running: tuple[RegisterSession, RecordingLink], state: SaleState
) -> None:
    session, link = running
    await session.show_state("X-13", state, payment_id="P9", amount_cents=900)
    assert [type(x) for x in link.take()] == [m.Display]  # told as it happens: no 2nd RESULT
    await session.show_state("X-13", state, payment_id="P9", amount_cents=900,
                             repeated_sale=True)
    display, result = link.take()
    assert isinstance(display, m.Display)
    assert result == m.Result("X-13", m.Outcome.APPROVED, 900, "P9")
