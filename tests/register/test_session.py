"""RegisterSession and LinkDriver over a REAL pty pair, with the register emulator as peer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from pointd.core.states import LaneCondition, Refusal, SaleState
from pointd.link.arq import LinkTimers
from pointd.link.driver import LinkDriver
from pointd.link.errors import LinkConfigError
from pointd.register import messages as m
from pointd.register.session import (
    RegisterRequest,
    RegisterSession,
    Reply,
    SaleRequest,
    StatusQuery,
)
from pointd.sim.register import DaemonRejected, RegisterEmulator
from tests.replay.engine_stub import StubEngine

# Short ACK timer: a HELLO written before the daemon opened the pty is flushed by the open
# and only its retransmission arrives; the timer logic itself is pinned in tests/link.
FAST = LinkTimers(ack_timeout=0.1, max_send_attempts=3, keepalive_interval=30.0)
WAIT = 5.0
T = TypeVar("T")


@dataclass
class Lane:
    emulator: RegisterEmulator
    engine: StubEngine
    session: RegisterSession
    link: LinkDriver


async def open_lane(
    tmp_path: Path, versions: tuple[str, ...] = (m.PROTOCOL_VERSION,)
) -> tuple[Lane, asyncio.Task[None]]:
    emulator = await RegisterEmulator.open_pty(
        tmp_path / "register", timers=FAST, versions=versions
    )
    engine = StubEngine()
    session = RegisterSession(lane=3, language="es", handler=engine)
    engine.attach(session)
    link = LinkDriver(
        emulator.device_path, timers=FAST, reconnect_min_delay=0.01, reconnect_max_delay=0.05
    )
    task = asyncio.create_task(session.run(link))
    return Lane(emulator, engine, session, link), task


async def close_lane(lane: Lane, task: asyncio.Task[None]) -> None:
    lane.session.stop()
    await asyncio.wait_for(task, WAIT)
    await lane.engine.close()
    await lane.emulator.close()


@pytest.fixture
async def lane(tmp_path: Path) -> AsyncIterator[Lane]:
    opened, task = await open_lane(tmp_path)
    yield opened
    await close_lane(opened, task)


def of_type(lane: Lane, kind: type[T]) -> list[T]:
    return [message for message in lane.emulator.received if isinstance(message, kind)]


async def test_sale_reaches_the_handler_and_displays_come_back(lane: Lane) -> None:
    screens: list[tuple[str, ...]] = []
    lane.emulator.on_display(lambda display: screens.append(display.lines))
    assert not lane.session.register_connected
    outcome = await asyncio.wait_for(
        lane.emulator.sale(1500, correlation_id="S-1", terminal_id="PAX_1"), WAIT
    )
    assert lane.session.register_connected
    assert lane.emulator.lane == 3
    assert lane.engine.requests == [SaleRequest("S-1", 1500, "PAX_1")]
    assert outcome.outcome is m.Outcome.APPROVED
    assert (outcome.payment_id, outcome.card_last4) == ("P1500", "4242")
    assert screens == [
        ("PASE LA TARJETA", "EN LA TERMINAL"),
        ("PROCESANDO PAGO", "AGUARDE"),
        ("PAGO APROBADO", "ENTREGUE"),
    ]
    assert all(d.language == "es" and d.correlation_id == "S-1" for d in of_type(lane, m.Display))


async def test_declined_sale(lane: Lane) -> None:
    outcome = await asyncio.wait_for(lane.emulator.sale(1501, correlation_id="S-2"), WAIT)
    assert outcome.outcome is m.Outcome.DECLINED
    assert lane.emulator.display == ("PAGO RECHAZADO", "NO ENTREGUE")
    assert lane.emulator.severity is m.Severity.ERROR


async def test_held_sale_holds_then_releases(lane: Lane) -> None:
    sale = asyncio.create_task(lane.emulator.sale(1502, correlation_id="S-3"))
    for _ in range(100):
        if "S-3" in lane.emulator.held:
            break
        await asyncio.sleep(0.01)  # polling the emulator's view of received frames
    assert lane.emulator.held == {"S-3"}
    assert lane.emulator.display == ("VERIFICANDO PAGO", "NO ENTREGUE")
    check = await asyncio.wait_for(lane.emulator.handover_check("S-3"), WAIT)
    assert (check.allowed, check.reason) == (False, "held")
    await lane.engine.approve("S-3")
    outcome = await asyncio.wait_for(sale, WAIT)
    assert outcome.outcome is m.Outcome.APPROVED
    assert of_type(lane, m.Release) == [m.Release("S-3", "approved")]
    assert lane.emulator.held == set()


async def test_repeated_sale_is_the_same_sale(lane: Lane) -> None:
    await asyncio.wait_for(lane.emulator.sale(1500, correlation_id="S-4"), WAIT)
    results_before = len(of_type(lane, m.Result))
    outcome = await asyncio.wait_for(lane.emulator.sale(1500, correlation_id="S-4"), WAIT)
    assert outcome.outcome is m.Outcome.APPROVED
    assert len(of_type(lane, m.Result)) == results_before + 1  # latest state sent again
    # The session decides nothing: the repeat goes to the engine, which alone can tell a
    # retry from an id reused for a new purchase.
    assert [r for r in lane.engine.requests if isinstance(r, SaleRequest)] == [
        SaleRequest("S-4", 1500), SaleRequest("S-4", 1500)
    ]


async def test_repeating_the_open_sale_is_answered_by_the_engine_not_started_again(
        lane: Lane) -> None:
    first = asyncio.create_task(lane.emulator.sale(1503, correlation_id="S-4b"))
    await asyncio.wait_for(lane.engine.sale_requested.wait(), WAIT)
    await lane.emulator.send_message(m.Sale("S-4b", 1503))
    status = await asyncio.wait_for(lane.emulator.status("S-4b"), WAIT)  # completes it
    assert status.state == "approved"
    await asyncio.wait_for(first, WAIT)
    assert [r for r in lane.engine.requests if isinstance(r, SaleRequest)] == [
        SaleRequest("S-4b", 1503), SaleRequest("S-4b", 1503)
    ]
    assert list(lane.engine.states) == ["S-4b"]


async def test_same_id_other_amount_is_an_error(lane: Lane) -> None:
    await asyncio.wait_for(lane.emulator.sale(1500, correlation_id="S-5"), WAIT)
    with pytest.raises(DaemonRejected) as caught:
        await asyncio.wait_for(lane.emulator.sale(9900, correlation_id="S-5"), WAIT)
    assert caught.value.error.code is m.ErrorCode.ID_REUSED


async def test_one_sale_at_a_time_per_lane(lane: Lane) -> None:
    first = asyncio.create_task(lane.emulator.sale(1503, correlation_id="S-6"))
    await asyncio.wait_for(lane.engine.sale_requested.wait(), WAIT)
    second = await asyncio.wait_for(lane.emulator.sale(1500, correlation_id="S-7"), WAIT)
    assert second.outcome is m.Outcome.REFUSED
    assert second.reason == "lane_busy"
    assert [r.correlation_id for r in lane.engine.requests] == ["S-6", "S-7"]
    assert list(lane.engine.states) == ["S-6"]
    status = await asyncio.wait_for(lane.emulator.status("S-6"), WAIT)  # completes S-6
    assert status.state == "approved"
    await asyncio.wait_for(first, WAIT)


async def test_status_query_is_answered_by_the_handler(lane: Lane) -> None:
    await asyncio.wait_for(lane.emulator.sale(1500, correlation_id="S-8"), WAIT)
    reply = await asyncio.wait_for(lane.emulator.status("S-8"), WAIT)
    assert reply == m.StatusReply("S-8", "approved", True, 1500, "P1500", "4242")
    unknown = await asyncio.wait_for(lane.emulator.status("NOPE"), WAIT)
    assert unknown == m.StatusReply("NOPE", "unknown", False)
    assert StatusQuery("NOPE") in lane.engine.requests


async def test_handover_done_finishes_the_sale(lane: Lane) -> None:
    await asyncio.wait_for(lane.emulator.sale(1500, correlation_id="S-9"), WAIT)
    check = await asyncio.wait_for(lane.emulator.handover_check("S-9"), WAIT)
    assert check.allowed
    await lane.emulator.handover_done("S-9")
    for _ in range(100):
        if lane.emulator.display == ("VENTA FINALIZADA", "GRACIAS"):
            break
        await asyncio.sleep(0.01)
    assert lane.emulator.display == ("VENTA FINALIZADA", "GRACIAS")


async def test_cancel(lane: Lane) -> None:
    sale = asyncio.create_task(lane.emulator.sale(1503, correlation_id="S-10"))
    await asyncio.wait_for(lane.engine.sale_requested.wait(), WAIT)
    await lane.emulator.cancel("S-10")
    outcome = await asyncio.wait_for(sale, WAIT)
    assert outcome.outcome is m.Outcome.CANCELED


async def test_requests_before_hello_are_refused(lane: Lane) -> None:
    await asyncio.wait_for(lane.emulator.hello(), WAIT)
    # A reconnect (here: the cable) starts a new connection that needs a new HELLO.
    await lane.emulator.unplug()
    await lane.emulator.replug()
    await asyncio.wait_for(lane.emulator.send_message(m.Status("S-11")), WAIT)
    for _ in range(100):
        if lane.emulator.errors:
            break
        await asyncio.sleep(0.01)
    assert lane.emulator.errors[-1].code is m.ErrorCode.HELLO_REQUIRED
    # The emulator's own request path recovers by itself: HELLO, then ask again.
    reply = await asyncio.wait_for(lane.emulator.status("S-11"), WAIT)
    assert reply.state == "unknown"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"Sid=S-12\x1famount=abc", m.ErrorCode.MALFORMED),
        (b"Zid=S-12", m.ErrorCode.UNKNOWN_TYPE),
        (b"Rid=S-12\x1famount=100", m.ErrorCode.MALFORMED),  # REFUND without its sale
        (
            m.Display(("X",), m.Severity.INFO, "es", "S-12").to_payload(),
            m.ErrorCode.WRONG_DIRECTION,
        ),
    ],
)
async def test_bad_requests_get_an_error_and_lose_nothing(
    lane: Lane, payload: bytes, code: m.ErrorCode
) -> None:
    await asyncio.wait_for(lane.emulator.hello(), WAIT)
    await asyncio.wait_for(lane.emulator.send_payload(payload), WAIT)
    for _ in range(100):
        if lane.emulator.errors:
            break
        await asyncio.sleep(0.01)
    assert [(e.code, e.correlation_id) for e in lane.emulator.errors] == [(code, "S-12")]
    assert lane.engine.requests == []
    outcome = await asyncio.wait_for(lane.emulator.sale(1500, correlation_id="S-13"), WAIT)
    assert outcome.outcome is m.Outcome.APPROVED


async def test_unsupported_version_is_an_explicit_error(tmp_path: Path) -> None:
    lane, task = await open_lane(tmp_path, versions=("2.0",))
    try:
        with pytest.raises(DaemonRejected) as caught:
            await asyncio.wait_for(lane.emulator.hello(), WAIT)
        assert caught.value.error.code is m.ErrorCode.UNSUPPORTED_VERSION
    finally:
        await close_lane(lane, task)


async def test_lost_ack_from_daemon_means_retransmission_not_a_second_sale(lane: Lane) -> None:
    await asyncio.wait_for(lane.emulator.hello(), WAIT)
    lane.emulator.drop_next_ack_received()
    outcome = await asyncio.wait_for(lane.emulator.sale(1500, correlation_id="S-14"), WAIT)
    assert outcome.outcome is m.Outcome.APPROVED
    assert lane.engine.requests == [SaleRequest("S-14", 1500)]


async def test_lost_ack_from_register_means_display_retransmitted_and_shown_once(
    lane: Lane,
) -> None:
    await asyncio.wait_for(lane.emulator.hello(), WAIT)
    lane.emulator.drop_next_ack_sent()  # the ACK for the first DISPLAY never reaches us
    await asyncio.wait_for(lane.emulator.sale(1501, correlation_id="S-15"), WAIT)
    displays = [d.lines[0] for d in of_type(lane, m.Display)]
    assert displays == ["PASE LA TARJETA", "PAGO RECHAZADO"]


async def test_noise_and_a_corrupt_frame_are_survived(lane: Lane) -> None:
    await asyncio.wait_for(lane.emulator.hello(), WAIT)
    lane.emulator.inject_noise(b"\x00\xff\x03garbage\x10")
    lane.emulator.corrupt_next_frame()
    outcome = await asyncio.wait_for(lane.emulator.sale(1500, correlation_id="S-16"), WAIT)
    assert outcome.outcome is m.Outcome.APPROVED
    assert lane.engine.requests == [SaleRequest("S-16", 1500)]


async def test_unplug_mid_sale_then_status_is_answered_after_reconnect(lane: Lane) -> None:
    sale = asyncio.create_task(lane.emulator.sale(1503, correlation_id="S-17"))
    await asyncio.wait_for(lane.engine.sale_requested.wait(), WAIT)
    await lane.emulator.unplug()
    for _ in range(200):
        if not lane.link.is_up:
            break
        await asyncio.sleep(0.01)
    assert not lane.link.is_up
    await lane.emulator.replug()
    outcome = await asyncio.wait_for(sale, WAIT)
    assert outcome.from_status
    assert outcome.outcome is m.Outcome.APPROVED
    assert StatusQuery("S-17") in lane.engine.requests
    # A SALE repeated across the reconnect reaches the engine, which answers it as the same
    # purchase: one sale only.
    assert {r for r in lane.engine.requests if isinstance(r, SaleRequest)} == {
        SaleRequest("S-17", 1503)
    }
    assert list(lane.engine.states) == ["S-17"]


async def test_condition_is_shown_and_sent_again_after_a_new_hello(lane: Lane) -> None:
    await asyncio.wait_for(lane.emulator.hello(), WAIT)
    await lane.session.show_condition(LaneCondition.CARD_PAYMENTS_UNAVAILABLE)
    assert lane.emulator.display == ("PAGO CON TARJETA", "NO DISPONIBLE")
    await lane.emulator.unplug()
    await lane.emulator.replug()
    await asyncio.wait_for(lane.emulator.hello(), WAIT)
    for _ in range(100):
        if len(of_type(lane, m.Display)) == 2:
            break
        await asyncio.sleep(0.01)
    displays = of_type(lane, m.Display)
    assert displays[-1].lines == ("PAGO CON TARJETA", "NO DISPONIBLE")
    assert len(displays) == 2


async def test_a_hold_told_while_the_link_was_down_is_sent_after_the_next_hello(
    lane: Lane,
) -> None:
    await asyncio.wait_for(lane.emulator.hello(), WAIT)
    await lane.emulator.unplug()
    for _ in range(200):
        if not lane.link.is_up:
            break
        await asyncio.sleep(0.01)
    # The daemon restarted and recovered a held sale before the register came back.
    await lane.session.show_state("S-20", SaleState.HELD)
    await lane.session.show_state("S-21", SaleState.ESCALATED)
    await lane.session.show_state("S-21", SaleState.DECLINED)
    assert of_type(lane, m.Hold) == []
    await lane.emulator.replug()
    await asyncio.wait_for(lane.emulator.hello(), WAIT)
    for _ in range(100):
        if of_type(lane, m.Hold):
            break
        await asyncio.sleep(0.01)
    assert of_type(lane, m.Hold) == [m.Hold("S-20", "held")]
    assert lane.emulator.held == {"S-20"}


async def test_a_result_decided_while_the_link_was_down_arrives_without_a_new_hello(
    lane: Lane,
) -> None:
    # A register on a serial line may never notice that the daemon restarted, so it does
    # not say HELLO again: what provably never left must be pushed when the link is back.
    await asyncio.wait_for(lane.emulator.hello(), WAIT)
    await lane.emulator.unplug()
    for _ in range(200):
        if not lane.link.is_up:
            break
        await asyncio.sleep(0.01)
    await lane.session.show_state("S-30", SaleState.APPROVED, payment_id="P1", amount_cents=1500)
    assert not [r for r in of_type(lane, m.Result) if r.correlation_id == "S-30"]
    await lane.emulator.replug()
    for _ in range(300):
        if [r for r in of_type(lane, m.Result) if r.correlation_id == "S-30"]:
            break
        await asyncio.sleep(0.01)  # waiting for frames over the real pty
    results = [r for r in of_type(lane, m.Result) if r.correlation_id == "S-30"]
    assert [(r.outcome, r.payment_id) for r in results] == [(m.Outcome.APPROVED, "P1")]


async def test_show_state_with_the_link_down_does_not_raise(tmp_path: Path) -> None:
    async def handler(request: RegisterRequest) -> Reply | None:
        return None

    session = RegisterSession(lane=1, language="en", handler=handler)
    await session.show_state("S-18", SaleState.HELD)  # not running yet
    link = LinkDriver(str(tmp_path / "absent"), reconnect_min_delay=0.01, reconnect_max_delay=0.01)
    task = asyncio.create_task(session.run(link))
    await asyncio.sleep(0.02)  # let run() start; the port does not exist
    await session.show_refusal("S-18", Refusal.TERMINAL_BUSY)
    session.stop()
    await asyncio.wait_for(task, WAIT)


async def test_handler_failure_becomes_an_internal_error(tmp_path: Path) -> None:
    emulator = await RegisterEmulator.open_pty(tmp_path / "register", timers=FAST)

    async def broken(request: RegisterRequest) -> Reply | None:
        raise RuntimeError("journal unavailable")

    session = RegisterSession(lane=1, language="pt", handler=broken)
    link = LinkDriver(emulator.device_path, timers=FAST)
    task = asyncio.create_task(session.run(link))
    try:
        with pytest.raises(DaemonRejected) as caught:
            await asyncio.wait_for(emulator.status("S-19"), WAIT)
        assert caught.value.error.code is m.ErrorCode.INTERNAL
        assert "journal" not in caught.value.error.text
    finally:
        session.stop()
        await asyncio.wait_for(task, WAIT)
        await emulator.close()


def test_unknown_language_is_refused() -> None:
    async def handler(request: RegisterRequest) -> Reply | None:
        return None

    with pytest.raises(ValueError, match="language"):
        RegisterSession(lane=1, language="de", handler=handler)


async def test_a_hopeless_port_stops_the_session_with_a_config_error() -> None:
    async def handler(request: RegisterRequest) -> Reply | None:
        return None

    session = RegisterSession(lane=1, language="en", handler=handler)
    with pytest.raises(LinkConfigError):
        await asyncio.wait_for(session.run(LinkDriver("nosuchscheme://x")), WAIT)
