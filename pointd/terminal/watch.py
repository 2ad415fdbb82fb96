"""Keeping the TerminalView current as terminals are plugged in and pulled out.

Theory of operation: the USB bus itself is the truth, so every change is handled the same
way: rescan with pyusb and diff against the last view. What varies is what triggers the
rescan. With a HotplugSource (udev's netlink monitor in production, the USB simulator's
notifier in tests and demos) the loop watches the source's file descriptor with
``loop.add_reader`` and rescans when it becomes readable: no polling, no threads. Without
one (no netlink in a container, or not Linux) the watch rescans every
``rescan_interval`` seconds through an injected sleep. Either way the on_change callback
receives the new view plus what was added and removed.

A rescan that fails (libusb gone, bus error) keeps the last view and is logged; the next
trigger tries again. Presence is advisory (payments run through the cloud), so a stale view
only delays a "not connected" message, it never moves money.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from pointd.terminal.discovery import (
    TerminalChange,
    TerminalView,
    UsbBackend,
    diff_views,
    scan_usb,
)
from pointd.terminal.errors import HotplugUnavailable, UsbUnavailable
from pointd.terminal.vendors import VendorTable

log = structlog.get_logger(__name__)

# A cable change is noticed within this many seconds when no hot-plug events exist. A
# rescan is a sysfs walk plus a few string reads for terminals only, cheap enough for 2 s
# on a store PC, and a cashier rarely tries a sale sooner than that after plugging in.
USB_RESCAN_INTERVAL = 2.0


class HotplugSource(Protocol):
    """Something with a file descriptor that becomes readable when the USB bus changes."""

    def fileno(self) -> int:
        """The descriptor to watch for readability."""
        ...

    def drain(self) -> int:
        """Consume pending notifications without blocking; return how many there were."""
        ...

    def close(self) -> None:
        """Stop producing notifications and release the descriptor."""
        ...


ChangeCallback = Callable[[TerminalChange], None]
Sleep = Callable[[float], Awaitable[None]]


class UdevHotplugSource:
    """udev's netlink monitor for USB devices, as a HotplugSource."""

    def __init__(self, monitor: Any) -> None:
        self._monitor: Any | None = monitor

    def fileno(self) -> int:
        """The netlink socket's descriptor."""
        if self._monitor is None:
            raise ValueError("the udev monitor is closed")
        return int(self._monitor.fileno())

    def drain(self) -> int:
        """Read every queued uevent without blocking."""
        count = 0
        try:
            while self._monitor is not None and self._monitor.poll(timeout=0) is not None:
                count += 1
        except OSError:
            # ENOBUFS: the kernel dropped events because we read too slowly. Something
            # changed, so report one event and let the rescan find out what.
            count += 1
        return count

    def close(self) -> None:
        """Close the netlink socket."""
        # pyudev has no close(): the socket goes with the last reference to the Monitor
        # (its __del__ calls udev_monitor_unref).
        self._monitor = None


def open_udev_hotplug() -> UdevHotplugSource:
    """Subscribe to udev's USB device events; raise HotplugUnavailable where that fails."""
    try:
        import pyudev  # noqa: PLC0415  Linux-only dependency (see pyproject markers)
    except ImportError as exc:
        raise HotplugUnavailable("pyudev is not installed") from exc
    try:
        context = pyudev.Context()
        # Source "udev" (not "kernel"): events arrive after the rules ran, so the device
        # node already carries the pointd group and the string read will be allowed.
        monitor = pyudev.Monitor.from_netlink(context, source="udev")
        monitor.filter_by("usb", device_type="usb_device")
        monitor.start()
    except (OSError, pyudev.DeviceNotFoundError) as exc:
        raise HotplugUnavailable(f"udev monitor unavailable: {exc}") from exc
    return UdevHotplugSource(monitor)


class TerminalWatch:
    """Owns the current TerminalView and refreshes it on hot-plug events or by rescanning."""

    def __init__(
        self,
        backend: UsbBackend,
        vendors: VendorTable,
        *,
        on_change: ChangeCallback | None = None,
        hotplug: HotplugSource | None = None,
        rescan_interval: float = USB_RESCAN_INTERVAL,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rescan_interval <= 0:
            raise ValueError("rescan_interval must be a positive number of seconds")
        self._backend = backend
        self._vendors = vendors
        self._on_change = on_change
        self._hotplug = hotplug
        self._rescan_interval = rescan_interval
        self._sleep = sleep
        self._view = TerminalView()
        self._scanned_once = False

    @property
    def view(self) -> TerminalView:
        """The latest snapshot; empty until the first scan."""
        return self._view

    @property
    def scanned_once(self) -> bool:
        """Whether the view reflects at least one successful scan."""
        return self._scanned_once

    def rescan(self) -> TerminalChange | None:
        """Scan the bus now, update the view and report the change, if any."""
        try:
            view = scan_usb(self._backend, self._vendors)
        except UsbUnavailable as exc:
            log.warning("usb_scan_failed", error=str(exc))
            return None
        self._scanned_once = True
        change = diff_views(self._view, view)
        self._view = view
        if change is None:
            return None
        log.info(
            "usb_terminals_changed",
            added=[device.bus_path for device in change.added],
            removed=[device.bus_path for device in change.removed],
            present=len(view.devices),
        )
        if self._on_change is not None:
            self._on_change(change)
        return change

    async def run(self) -> None:
        """Scan once, then follow the bus until cancelled."""
        self.rescan()
        if self._hotplug is None:
            await self._rescan_forever()
        else:
            await self._follow_events(self._hotplug)

    async def _rescan_forever(self) -> None:
        while True:
            await self._sleep(self._rescan_interval)
            self.rescan()

    async def _follow_events(self, source: HotplugSource) -> None:
        loop = asyncio.get_running_loop()
        fd = source.fileno()
        stopped: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            # An error here (a failing on_change callback) must end run() as it would on
            # the rescan path, not vanish into the loop's exception handler.
            try:
                if source.drain():
                    self.rescan()
            except Exception as exc:
                loop.remove_reader(fd)
                if not stopped.done():
                    stopped.set_exception(exc)

        loop.add_reader(fd, on_readable)
        try:
            await stopped
        finally:
            loop.remove_reader(fd)
