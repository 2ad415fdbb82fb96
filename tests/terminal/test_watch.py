"""The watch follows plug and unplug mid-run, by hot-plug events and by rescanning."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import usb.core

from pointd.sim.usb.bus import FakeUsbBackend, FakeUsbBus
from pointd.terminal.discovery import TerminalChange
from pointd.terminal.errors import HotplugUnavailable
from pointd.terminal.vendors import DEFAULT_VENDORS
from pointd.terminal.watch import USB_RESCAN_INTERVAL, TerminalWatch, open_udev_hotplug

EVENT_WAIT = 5.0  # generous bound for a real pipe wake-up on a loaded CI machine


class ChangeRecorder:
    """Collects changes and lets a test await the next one."""

    def __init__(self) -> None:
        self.changes: asyncio.Queue[TerminalChange] = asyncio.Queue()

    def __call__(self, change: TerminalChange) -> None:
        self.changes.put_nowait(change)

    async def next(self) -> TerminalChange:
        return await asyncio.wait_for(self.changes.get(), EVENT_WAIT)


class SteppedSleep:
    """An injected sleep that returns only when the test says a period has passed."""

    def __init__(self) -> None:
        self.requested: list[float] = []
        self._ticks: asyncio.Queue[None] = asyncio.Queue()
        self.waiting = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.requested.append(seconds)
        self.waiting.set()
        await self._ticks.get()

    async def tick(self) -> None:
        """End the current period and return once the watch is sleeping again."""
        await asyncio.wait_for(self.waiting.wait(), EVENT_WAIT)
        self.waiting.clear()
        self._ticks.put_nowait(None)
        await asyncio.wait_for(self.waiting.wait(), EVENT_WAIT)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_event_path_follows_plug_and_unplug(bus: FakeUsbBus) -> None:
    recorder = ChangeRecorder()
    source = bus.hotplug()
    bus.plug("ftdi-ft232r")
    watch = TerminalWatch(bus.backend, DEFAULT_VENDORS, on_change=recorder, hotplug=source)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0)
        assert watch.scanned_once
        assert watch.view.devices == ()
        pax = bus.plug("pax-a910")
        change = await recorder.next()
        assert [d.serial for d in change.added] == ["1234345545"]
        assert watch.view is change.view
        bus.plug("gertec-mp35p")
        await recorder.next()
        assert len(watch.view.devices) == 2
        bus.unplug(pax)
        change = await recorder.next()
        assert [d.serial for d in change.removed] == ["1234345545"]
        assert [d.serial for d in watch.view.devices] == ["8701016695109435"]
    finally:
        await _stop(task)
        source.close()


async def test_events_for_non_terminals_do_not_report_changes(bus: FakeUsbBus) -> None:
    recorder = ChangeRecorder()
    source = bus.hotplug()
    watch = TerminalWatch(bus.backend, DEFAULT_VENDORS, on_change=recorder, hotplug=source)
    task = asyncio.create_task(watch.run())
    try:
        bus.plug("ch340")
        bus.plug("pax-a910")
        change = await recorder.next()
        assert [d.vendor_name for d in change.added] == ["PAX Technology"]
        assert recorder.changes.empty()
    finally:
        await _stop(task)
        source.close()


async def test_rescan_path_follows_the_bus_with_injected_sleep(bus: FakeUsbBus) -> None:
    recorder = ChangeRecorder()
    sleep = SteppedSleep()
    watch = TerminalWatch(
        bus.backend, DEFAULT_VENDORS, on_change=recorder, rescan_interval=7.5, sleep=sleep
    )
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(sleep.waiting.wait(), EVENT_WAIT)
        assert watch.view.devices == ()
        bus.plug("ingenico-move2500")
        assert watch.view.devices == ()  # nothing notices before the period ends
        await sleep.tick()
        change = recorder.changes.get_nowait()
        assert [d.serial for d in change.added] == ["1123345670"]
        await sleep.tick()
        assert recorder.changes.empty()  # nothing changed, nothing reported
        bus.unplug("1123345670")
        await sleep.tick()
        assert recorder.changes.get_nowait().removed
        assert watch.view.devices == ()
        assert set(sleep.requested) == {7.5}
    finally:
        await _stop(task)


class FlakyBackend(FakeUsbBackend):  # type: ignore[misc]
    def __init__(self, bus: FakeUsbBus) -> None:
        super().__init__(bus)
        self.broken = False

    def enumerate_devices(self) -> Iterator[Any]:
        if self.broken:
            raise usb.core.USBError("Input/output error", errno=5)
        return super().enumerate_devices()


def test_a_failed_rescan_keeps_the_last_view(bus: FakeUsbBus) -> None:
    backend = FlakyBackend(bus)
    watch = TerminalWatch(backend, DEFAULT_VENDORS)
    bus.plug("pax-a910")
    assert watch.rescan() is not None
    backend.broken = True
    bus.unplug("1234345545")
    assert watch.rescan() is None
    assert len(watch.view.devices) == 1
    backend.broken = False
    change = watch.rescan()
    assert change is not None
    assert change.removed


async def test_a_failing_callback_ends_run_on_the_event_path(bus: FakeUsbBus) -> None:
    def explode(change: TerminalChange) -> None:
        raise RuntimeError("callback bug")

    source = bus.hotplug()
    watch = TerminalWatch(bus.backend, DEFAULT_VENDORS, on_change=explode, hotplug=source)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0)
        bus.plug("pax-a910")
        with pytest.raises(RuntimeError, match="callback bug"):
            await asyncio.wait_for(task, EVENT_WAIT)
    finally:
        source.close()


def test_rescan_interval_must_be_positive(bus: FakeUsbBus) -> None:
    assert USB_RESCAN_INTERVAL > 0
    with pytest.raises(ValueError, match="positive"):
        TerminalWatch(bus.backend, DEFAULT_VENDORS, rescan_interval=0)


async def test_real_udev_monitor_is_a_hotplug_source(bus: FakeUsbBus) -> None:
    try:
        source = open_udev_hotplug()
    except HotplugUnavailable as exc:
        pytest.skip(f"no udev netlink monitor in this environment: {exc}")
    try:
        assert source.fileno() >= 0
        assert source.drain() >= 0  # never blocks, whatever the host is doing
        watch = TerminalWatch(bus.backend, DEFAULT_VENDORS, hotplug=source)
        task = asyncio.create_task(watch.run())
        await asyncio.sleep(0)
        assert watch.scanned_once
        await _stop(task)
    finally:
        source.close()
