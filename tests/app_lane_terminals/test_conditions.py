"""Lane conditions follow the cable and the cloud, and are announced only when they change."""

from __future__ import annotations

import asyncio

import pytest

from pointd.app.lane_terminals import LaneSpec
from pointd.core.states import LaneCondition, Refusal
from pointd.sim.usb.bus import FakeUsbBus

from .conftest import GERTEC, GERTEC_SERIAL, PAX, Build, Device

EVENT_WAIT = 5.0

READY = LaneCondition.READY
NOT_CONNECTED = LaneCondition.TERMINAL_NOT_CONNECTED
UNAVAILABLE = LaneCondition.CARD_PAYMENTS_UNAVAILABLE


async def test_unplug_and_replug_mid_run_move_the_lane_and_are_announced(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(
        LaneSpec(1, terminal_serial=GERTEC_SERIAL),
        devices=[Device(GERTEC, "PDV"), Device(PAX, "PDV")],
        hotplug=True,
    )
    gertec = bus.plug("gertec-mp35p")
    assert h.watch is not None
    watch_task = asyncio.create_task(h.watch.run())
    run_task = asyncio.create_task(h.lanes.run())
    try:
        assert await asyncio.wait_for(h.changes.get(), EVENT_WAIT) == (1, READY)
        assert h.lanes.check(1) == (GERTEC, None)

        bus.unplug(gertec)
        assert await asyncio.wait_for(h.changes.get(), EVENT_WAIT) == (1, NOT_CONNECTED)
        assert h.lanes.check(1) == (GERTEC, Refusal.TERMINAL_NOT_CONNECTED)

        bus.plug("gertec-mp35p", port=(3,))  # another port: same terminal, same lane
        assert await asyncio.wait_for(h.changes.get(), EVENT_WAIT) == (1, READY)

        bus.plug("pax-a910")  # an unrelated terminal arriving changes nothing for lane 1
        h.sleep.release()  # and so does the next periodic refresh
        await asyncio.wait_for(h.cloud.fetched.get(), EVENT_WAIT)
        await asyncio.wait_for(h.cloud.fetched.get(), EVENT_WAIT)
        assert h.announced == [(1, READY), (1, NOT_CONNECTED), (1, READY)]
    finally:
        for task in (run_task, watch_task):
            task.cancel()
        for task in (run_task, watch_task):
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_nothing_is_announced_before_the_first_refresh_then_each_lane_once(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(
        LaneSpec(1, terminal_serial=GERTEC_SERIAL),
        LaneSpec(2, terminal=PAX),
        devices=[Device(GERTEC, "PDV"), Device(PAX, "PDV")],
    )
    assert h.watch is not None
    bus.plug("gertec-mp35p")
    h.watch.rescan()
    h.lanes.set_cloud_reachable(False)
    h.lanes.set_cloud_reachable(True)
    assert h.announced == []

    assert await h.lanes.refresh()
    assert sorted(h.announced) == [(1, READY), (2, READY)]
    assert await h.lanes.refresh()
    h.lanes.set_cloud_reachable(True)
    h.watch.rescan()
    assert len(h.announced) == 2


async def test_cloud_down_shows_card_payments_unavailable_and_recovers_on_its_own(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(LaneSpec(1), devices=[Device(GERTEC, "PDV")])
    bus.plug("gertec-mp35p")
    run_task = asyncio.create_task(h.lanes.run())
    try:
        await asyncio.wait_for(h.cloud.fetched.get(), EVENT_WAIT)
        assert await asyncio.wait_for(h.changes.get(), EVENT_WAIT) == (1, READY)

        h.cloud.devices_failing = True
        h.clock.now += 300
        h.sleep.release()
        assert await asyncio.wait_for(h.cloud.fetched.get(), EVENT_WAIT) is False
        assert await asyncio.wait_for(h.changes.get(), EVENT_WAIT) == (1, UNAVAILABLE)
        assert h.lanes.check(1) == (GERTEC, Refusal.CLOUD_UNAVAILABLE)
        row = h.lanes.snapshot()[0]
        assert row["catalog_stale"] is True
        assert row["catalog_age"] == 300.0
        assert row["terminal"] == GERTEC  # the last good list is still used
        assert row["catalog_error"] == "ConnectionError"

        h.cloud.devices_failing = False
        h.sleep.release()
        assert await asyncio.wait_for(h.cloud.fetched.get(), EVENT_WAIT) is True
        assert await asyncio.wait_for(h.changes.get(), EVENT_WAIT) == (1, READY)
        assert h.lanes.check(1) == (GERTEC, None)
        # A failed fetch is retried soon (REFRESH_RETRY_INITIAL), a good one waits the interval.
        assert h.sleep.delays == [300.0, 2.0, 300.0]
    finally:
        run_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run_task


async def test_the_engine_reports_reachability_and_the_lane_follows(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(LaneSpec(1), devices=[Device(GERTEC, "PDV")])
    bus.plug("gertec-mp35p")
    assert h.watch is not None
    h.watch.rescan()
    await h.lanes.refresh()
    h.lanes.set_cloud_reachable(False)
    assert h.lanes.condition(1) is UNAVAILABLE
    assert h.lanes.check(1) == (GERTEC, Refusal.CLOUD_UNAVAILABLE)
    h.lanes.set_cloud_reachable(False)
    h.lanes.set_cloud_reachable(True)
    assert h.announced == [(1, READY), (1, UNAVAILABLE), (1, READY)]


async def test_a_failed_first_refresh_announces_card_payments_unavailable(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(LaneSpec(1), devices=[Device(GERTEC, "PDV")])
    bus.plug("gertec-mp35p")
    h.cloud.devices_failing = True
    assert await h.lanes.refresh() is False
    assert h.announced == [(1, UNAVAILABLE)]
    assert h.lanes.check(1) == (None, Refusal.CLOUD_UNAVAILABLE)
    h.cloud.devices_failing = False
    assert await h.lanes.refresh() is True
    assert h.announced[-1] == (1, READY)


async def test_a_malformed_device_list_keeps_the_last_good_one(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(LaneSpec(1), devices=[Device(GERTEC, "PDV")])
    bus.plug("gertec-mp35p")
    assert await h.lanes.refresh()
    h.cloud.devices = [Device("", "PDV")]
    assert await h.lanes.refresh() is False
    assert h.lanes.snapshot()[0]["terminal"] == GERTEC
    assert h.lanes.snapshot()[0]["catalog_stale"] is True


async def test_a_refresh_scans_usb_before_the_first_announcement(
    build: Build, bus: FakeUsbBus
) -> None:
    # Nobody runs the watch here: without the pre-scan an empty view would be taken as
    # "USB cannot tell" and the lane would be announced READY although nothing is plugged.
    h = build(LaneSpec(1, terminal_serial=GERTEC_SERIAL), devices=[Device(GERTEC, "PDV")])
    run_task = asyncio.create_task(h.lanes.run())
    try:
        assert await asyncio.wait_for(h.changes.get(), EVENT_WAIT) == (1, NOT_CONNECTED)
        assert h.watch is not None
        assert h.watch.scanned_once
    finally:
        run_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run_task


async def test_a_failing_condition_callback_is_not_repeated_for_the_same_change(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(LaneSpec(1), devices=[Device(GERTEC, "PDV")])
    calls: list[LaneCondition] = []

    def broken(lane: int, condition: LaneCondition) -> None:
        calls.append(condition)
        raise RuntimeError("display gone")

    h.lanes._on_condition = broken
    with pytest.raises(RuntimeError):
        await h.lanes.refresh()
    await h.lanes.refresh()
    assert calls == [LaneCondition.TERMINAL_UNKNOWN]
