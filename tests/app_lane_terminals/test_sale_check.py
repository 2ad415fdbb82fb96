"""The verdict for a sale request: which terminal, and why it must be refused if it must."""

from __future__ import annotations

import pytest

from pointd.app.lane_terminals import LaneSpec, UnknownLane
from pointd.core.events import SaleRequested
from pointd.core.machine import step, telling
from pointd.core.policy import Policy
from pointd.core.records import CoreState
from pointd.core.states import Admission, LaneCondition, Refusal
from pointd.sim.usb.bus import FakeUsbBus

from .conftest import GERTEC, GERTEC_SERIAL, INGENICO, PAX, PAX_SERIAL, Build, Device

BOTH_PDV = [Device(GERTEC, "PDV"), Device(PAX, "PDV")]


async def test_two_lanes_that_find_one_terminal_are_both_clear_and_the_core_refuses_the_second(
    build: Build, bus: FakeUsbBus
) -> None:
    # Neither lane is pinned and one terminal is on USB: both lanes find it. Whether a sale
    # holds it is the core's to judge at admission, on the state it commits the sale to.
    h = build(LaneSpec(1), LaneSpec(2), devices=BOTH_PDV)
    bus.plug("gertec-mp35p")
    await h.lanes.refresh()
    assert h.lanes.check(1) == h.lanes.check(2) == (GERTEC, None)
    terminal = GERTEC
    policy = Policy(currency="ARS", collector_id="1", min_amount_cents=100,
                    max_amount_cents=100_000)
    first = step(CoreState.empty("shop"), SaleRequested("S1", 1, "a", 1500, terminal, None),
                 now=1000.0, policy=policy)
    assert first.admission is Admission.ADMITTED
    second = step(first.state, SaleRequested("S2", 2, "a", 1500, terminal, None),
                  now=1000.0, policy=policy)
    assert second.admission is Admission.REFUSED
    assert second.state.sales["S2"].refusal is Refusal.TERMINAL_BUSY
    assert second.effects == (telling(second.state.sales["S2"]),)
    assert h.lanes.condition(2) is LaneCondition.READY


async def test_an_unplugged_terminal_is_refused(build: Build, bus: FakeUsbBus) -> None:
    h = build(LaneSpec(1, terminal_serial=GERTEC_SERIAL), devices=BOTH_PDV)
    await h.lanes.refresh()
    assert h.lanes.check(1) == (GERTEC, Refusal.TERMINAL_NOT_CONNECTED)


async def test_the_pin_wins_over_the_terminal_found_on_usb(build: Build, bus: FakeUsbBus) -> None:
    h = build(LaneSpec(1, terminal=PAX), devices=BOTH_PDV)
    bus.plug("gertec-mp35p")  # the only terminal on USB, and it matches the list
    await h.lanes.refresh()
    assert h.lanes.check(1) == (PAX, None)
    row = h.lanes.snapshot()[0]
    assert (row["terminal"], row["pinned"], row["presence"]) == (PAX, True, "unknown")


async def test_a_pinned_lane_with_a_serial_is_not_connected_when_that_serial_is_gone(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(LaneSpec(1, terminal=PAX, terminal_serial=PAX_SERIAL), devices=BOTH_PDV)
    bus.plug("gertec-mp35p")
    await h.lanes.refresh()
    assert h.lanes.check(1) == (PAX, Refusal.TERMINAL_NOT_CONNECTED)
    bus.plug("pax-a910")
    assert h.watch is not None
    h.watch.rescan()
    assert h.lanes.check(1) == (PAX, None)
    assert h.announced == [(1, LaneCondition.TERMINAL_NOT_CONNECTED), (1, LaneCondition.READY)]


async def test_a_pin_missing_from_the_device_list_is_unknown(build: Build, bus: FakeUsbBus) -> None:
    h = build(LaneSpec(1, terminal=INGENICO), devices=BOTH_PDV)
    await h.lanes.refresh()
    assert h.lanes.check(1) == (INGENICO, Refusal.TERMINAL_UNKNOWN)
    assert h.announced == [(1, LaneCondition.TERMINAL_UNKNOWN)]


async def test_two_matching_terminals_on_usb_are_reported_as_ambiguous_never_guessed(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(LaneSpec(1), devices=BOTH_PDV)
    bus.plug("gertec-mp35p")
    bus.plug("pax-a910")
    await h.lanes.refresh()
    assert h.lanes.check(1) == (None, Refusal.TERMINAL_UNKNOWN)
    row = h.lanes.snapshot()[0]
    assert row["problem"] == "ambiguous"
    assert row["candidates"] == sorted([GERTEC, PAX])
    assert row["condition"] == "terminal_unknown"


async def test_a_serial_matching_two_listed_devices_is_ambiguous(
    build: Build, bus: FakeUsbBus
) -> None:
    twin = "OTHER_MODEL__SMARTPOS1234345545"
    h = build(
        LaneSpec(1, terminal_serial=PAX_SERIAL),
        devices=[Device(PAX, "PDV"), Device(twin, "PDV")],
    )
    bus.plug("pax-a910")
    await h.lanes.refresh()
    assert h.lanes.check(1) == (None, Refusal.TERMINAL_UNKNOWN)
    assert h.lanes.snapshot()[0]["candidates"] == sorted([PAX, twin])


async def test_two_lanes_each_get_their_own_terminal(build: Build, bus: FakeUsbBus) -> None:
    h = build(
        LaneSpec(1, terminal_serial=GERTEC_SERIAL),
        LaneSpec(2, terminal_serial=PAX_SERIAL),
        devices=BOTH_PDV,
    )
    bus.plug("gertec-mp35p")
    bus.plug("pax-a910")
    await h.lanes.refresh()
    assert h.lanes.check(1) == (GERTEC, None)
    assert h.lanes.check(2) == (PAX, None)


async def test_a_standalone_terminal_is_refused_as_not_pdv(build: Build, bus: FakeUsbBus) -> None:
    h = build(LaneSpec(1), devices=[Device(GERTEC, "STANDALONE")])
    bus.plug("gertec-mp35p")
    await h.lanes.refresh()
    assert h.lanes.check(1) == (GERTEC, Refusal.TERMINAL_NOT_PDV)
    assert h.announced == [(1, LaneCondition.TERMINAL_NOT_PDV)]


async def test_without_usb_a_pin_or_a_serial_still_identifies_the_terminal(
    build: Build,
) -> None:
    h = build(
        LaneSpec(1, terminal=GERTEC, terminal_serial=GERTEC_SERIAL),
        LaneSpec(2, terminal_serial=PAX_SERIAL),
        LaneSpec(3),
        devices=BOTH_PDV,
        usb=False,
    )
    await h.lanes.refresh()
    assert h.lanes.check(1) == (GERTEC, None)
    assert h.lanes.check(2) == (PAX, None)
    assert h.lanes.check(3) == (None, Refusal.TERMINAL_UNKNOWN)
    presence = {row["lane"]: (row["presence"], row["problem"]) for row in h.lanes.snapshot()}
    assert presence == {1: ("unknown", None), 2: ("unknown", None), 3: ("unknown", "unknown")}


async def test_usb_that_cannot_be_read_says_unknown_rather_than_not_connected(
    build: Build, bus: FakeUsbBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = build(LaneSpec(1, terminal_serial=GERTEC_SERIAL), devices=BOTH_PDV)

    def no_bus(*_args: object, **_kwargs: object) -> object:
        raise OSError("libusb gone")

    monkeypatch.setattr("usb.core.find", no_bus)
    await h.lanes.refresh()
    assert h.watch is not None
    assert not h.watch.scanned_once
    assert h.lanes.check(1) == (GERTEC, None)
    assert h.lanes.snapshot()[0]["presence"] == "unknown"


async def test_before_any_refresh_every_lane_is_refused_as_unknown(build: Build) -> None:
    h = build(LaneSpec(1, terminal=GERTEC), devices=BOTH_PDV)
    assert h.lanes.check(1) == (GERTEC, Refusal.TERMINAL_UNKNOWN)
    assert h.announced == []


@pytest.mark.parametrize("lane", [0, 2, -1, "1", None, 1.5])
async def test_an_unknown_lane_is_a_clear_error(build: Build, lane: object) -> None:
    h = build(LaneSpec(1))
    with pytest.raises(UnknownLane, match="not configured"):
        h.lanes.check(lane)  # type: ignore[arg-type]
    with pytest.raises(UnknownLane):
        h.lanes.condition(lane)  # type: ignore[arg-type]
