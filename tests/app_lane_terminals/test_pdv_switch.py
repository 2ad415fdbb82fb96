"""Switching a lane's STANDALONE terminal to PDV: once per device, and only when allowed."""

from __future__ import annotations

from pointd.app.lane_terminals import LaneSpec
from pointd.core.states import Refusal
from pointd.sim.usb.bus import FakeUsbBus

from .conftest import GERTEC, GERTEC_SERIAL, PAX, PAX_SERIAL, Build, Device


async def test_a_standalone_terminal_is_switched_once_across_refreshes(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(LaneSpec(1), devices=[Device(GERTEC, "STANDALONE")], switch=True)
    bus.plug("gertec-mp35p")
    for _ in range(3):
        assert await h.lanes.refresh()
    assert h.cloud.mode_changes == [(GERTEC, "PDV")]
    row = h.lanes.snapshot()[0]
    assert "Restart the terminal" in row["pdv_switch"]
    # The list keeps saying STANDALONE until the restart, so the sale is still refused.
    assert h.lanes.check(1) == (GERTEC, Refusal.TERMINAL_NOT_PDV)


async def test_a_failed_switch_is_retried_at_the_next_refresh_only(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(LaneSpec(1), devices=[Device(GERTEC, "STANDALONE")], switch=True)
    bus.plug("gertec-mp35p")
    h.cloud.mode_change_fails = True
    await h.lanes.refresh()
    assert len(h.cloud.mode_changes) == 1
    assert "asks again at the next device refresh" in h.lanes.snapshot()[0]["pdv_switch"]
    h.cloud.mode_change_fails = False
    await h.lanes.refresh()
    await h.lanes.refresh()
    assert h.cloud.mode_changes == [(GERTEC, "PDV")] * 2
    assert "Restart the terminal" in h.lanes.snapshot()[0]["pdv_switch"]


async def test_with_switching_off_nothing_is_changed_and_the_advice_is_shown(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(LaneSpec(1), devices=[Device(GERTEC, "standalone")], switch=False)
    bus.plug("gertec-mp35p")
    await h.lanes.refresh()
    await h.lanes.refresh()
    assert h.cloud.mode_changes == []
    assert "automatic switching is off" in h.lanes.snapshot()[0]["pdv_switch"]


async def test_only_lane_terminals_in_standalone_are_switched(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(
        LaneSpec(1, terminal_serial=GERTEC_SERIAL),
        LaneSpec(2, terminal_serial=PAX_SERIAL),
        devices=[
            Device(GERTEC, "PDV"),
            Device(PAX, None),
            Device("INGENICO_MOVE2500__1123345670", "STANDALONE"),  # on no lane
        ],
        switch=True,
    )
    bus.plug("gertec-mp35p")
    bus.plug("pax-a910")
    await h.lanes.refresh()
    assert h.cloud.mode_changes == []
    assert [row["pdv_switch"] for row in h.lanes.snapshot()] == [None, None]


async def test_no_switch_is_attempted_from_a_stale_list(build: Build, bus: FakeUsbBus) -> None:
    h = build(LaneSpec(1), devices=[Device(GERTEC, "PDV")], switch=True)
    bus.plug("gertec-mp35p")
    await h.lanes.refresh()
    h.cloud.devices = [Device(GERTEC, "STANDALONE")]
    h.cloud.devices_failing = True
    await h.lanes.refresh()
    assert h.cloud.mode_changes == []


async def test_an_unplugged_standalone_terminal_is_still_switched(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(
        LaneSpec(1, terminal_serial=GERTEC_SERIAL),
        devices=[Device(GERTEC, "STANDALONE")],
        switch=True,
    )
    await h.lanes.refresh()
    assert h.lanes.check(1) == (GERTEC, Refusal.TERMINAL_NOT_CONNECTED)
    assert h.cloud.mode_changes == [(GERTEC, "PDV")]


async def test_each_refresh_keeps_what_changed_with_its_time(build: Build) -> None:
    h = build(LaneSpec(1, terminal=GERTEC), devices=[Device(GERTEC, "PDV")], usb=False)
    await h.lanes.refresh()
    assert h.lanes.snapshot()[0]["changes"] == []  # the first list is no change

    h.clock.advance(60)
    h.cloud.devices = [Device(GERTEC, "STANDALONE")]
    await h.lanes.refresh()
    h.clock.advance(60)
    h.cloud.devices = []
    await h.lanes.refresh()
    await h.lanes.refresh()  # nothing new: nothing noted
    h.clock.advance(60)
    h.cloud.devices = [Device(GERTEC, "STANDALONE")]
    await h.lanes.refresh()

    assert h.lanes.snapshot()[0]["changes"] == [
        {"at": 1180.0, "change": f"terminal {GERTEC} back in the account's device list"},
        {"at": 1120.0, "change": f"terminal {GERTEC} gone from the account's device list"},
        {"at": 1060.0, "change": f"terminal {GERTEC} mode PDV -> STANDALONE"},
    ]
