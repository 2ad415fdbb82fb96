"""A lane's health follows the cable: watch, identity and health wired as the daemon does."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from pointd.core.states import LaneCondition, Refusal
from pointd.sim.usb.bus import FakeUsbBus
from pointd.terminal.discovery import TerminalChange
from pointd.terminal.health import DeviceCatalog, check_lane, lane_condition
from pointd.terminal.identity import resolve_lane_terminal
from pointd.terminal.vendors import DEFAULT_VENDORS
from pointd.terminal.watch import TerminalWatch, UdevHotplugSource

EVENT_WAIT = 5.0


@dataclass(frozen=True)
class Device:
    id: str
    operating_mode: str | None
    store_id: str = "1"
    pos_id: int = 1


CLOUD = [
    Device("GERTEC_MP35P__8701016695109435", "PDV"),
    Device("PAX_A910__SMARTPOS1234345545", "STANDALONE"),
]


async def test_unplug_and_replug_move_the_lane_between_ready_and_not_connected(
    bus: FakeUsbBus,
) -> None:
    catalog = DeviceCatalog(lambda: 0.0)

    async def list_devices() -> list[Device]:
        return CLOUD

    assert await catalog.refresh(list_devices)
    conditions: asyncio.Queue[LaneCondition] = asyncio.Queue()

    def assess() -> tuple[LaneCondition, Refusal | None]:
        resolution = resolve_lane_terminal(
            None, "8701016695109435", watch.view.devices, catalog.devices
        )
        record = catalog.lookup(resolution.device_id)
        return (
            lane_condition(resolution, record, cloud_reachable=True),
            check_lane(resolution, record, cloud_reachable=True),
        )

    def on_change(_change: TerminalChange) -> None:
        conditions.put_nowait(assess()[0])

    source = bus.hotplug()
    watch = TerminalWatch(bus.backend, DEFAULT_VENDORS, on_change=on_change, hotplug=source)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0)
        assert assess() == (
            LaneCondition.TERMINAL_NOT_CONNECTED,
            Refusal.TERMINAL_NOT_CONNECTED,
        )
        gertec = bus.plug("gertec-mp35p")
        assert await asyncio.wait_for(conditions.get(), EVENT_WAIT) is LaneCondition.READY
        assert assess() == (LaneCondition.READY, None)
        bus.unplug(gertec)
        assert (
            await asyncio.wait_for(conditions.get(), EVENT_WAIT)
            is LaneCondition.TERMINAL_NOT_CONNECTED
        )
        bus.plug("gertec-mp35p", port=(4,))  # another port: same terminal, same lane
        assert await asyncio.wait_for(conditions.get(), EVENT_WAIT) is LaneCondition.READY
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        source.close()


async def test_a_standalone_terminal_alone_on_usb_is_identified_and_reported(
    bus: FakeUsbBus,
) -> None:
    catalog = DeviceCatalog(lambda: 0.0)

    async def list_devices() -> list[Device]:
        return CLOUD

    await catalog.refresh(list_devices)
    bus.plug("pax-a910")
    watch = TerminalWatch(bus.backend, DEFAULT_VENDORS)
    watch.rescan()
    resolution = resolve_lane_terminal(None, None, watch.view.devices, catalog.devices)
    assert resolution.device_id == "PAX_A910__SMARTPOS1234345545"
    record = catalog.lookup(resolution.device_id)
    assert check_lane(resolution, record, True) is Refusal.TERMINAL_NOT_PDV


class OverflowingMonitor:
    """A pyudev Monitor stand-in whose socket overflowed (ENOBUFS) after one event."""

    def __init__(self) -> None:
        self.polls = 0

    def fileno(self) -> int:
        return 0

    def poll(self, timeout: float) -> object:
        self.polls += 1
        if self.polls == 1:
            return object()
        raise OSError(105, "No buffer space available")


def test_a_udev_overflow_still_triggers_a_rescan() -> None:
    source = UdevHotplugSource(OverflowingMonitor())
    assert source.drain() == 2
    source.close()
    assert source.drain() == 0
    with pytest.raises(ValueError, match="closed"):
        source.fileno()
