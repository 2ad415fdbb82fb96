"""Scanning the bus: terminals only, strings read where allowed, failures reported."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import usb.core

from pointd.sim.usb.bus import FakeUsbBackend, FakeUsbBus, PluggedDevice
from pointd.terminal.discovery import TerminalView, diff_views, scan_usb
from pointd.terminal.errors import UsbUnavailable
from pointd.terminal.vendors import DEFAULT_VENDORS


def test_scan_lists_terminals_and_skips_serial_adapters(bus: FakeUsbBus) -> None:
    bus.plug("ftdi-ft232r")
    bus.plug("pax-a910")
    bus.plug("ch340")
    bus.plug("gertec-mp35p")
    view = scan_usb(bus.backend, DEFAULT_VENDORS)
    assert [(d.vendor_name, d.serial, d.bus_path) for d in view.devices] == [
        ("PAX Technology", "1234345545", "1-2"),
        ("Gertec", "8701016695109435", "1-4"),
    ]
    assert view.devices[0].usb_id == "2fb8:2201"
    assert view.devices[0].product == "A910"


def test_a_terminal_without_access_is_listed_without_strings(bus: FakeUsbBus) -> None:
    bus.plug("pax-a910", readable=False)
    (device,) = scan_usb(bus.backend, DEFAULT_VENDORS).devices
    assert (device.serial, device.product, device.manufacturer) == (None, None, None)
    assert device.vendor_name == "PAX Technology"


class VanishingBackend(FakeUsbBackend):  # type: ignore[misc]
    """Unplugs each device right after enumerating it, as a cable pulled mid-scan."""

    def enumerate_devices(self) -> Iterator[PluggedDevice]:
        for device in list(super().enumerate_devices()):
            yield device
            device.connected = False


def test_a_terminal_pulled_during_the_scan_is_still_reported(bus: FakeUsbBus) -> None:
    bus.plug("gertec-mp35p")
    (device,) = scan_usb(VanishingBackend(bus), DEFAULT_VENDORS).devices
    assert device.serial is None
    assert device.bus_path == "1-1"


class BrokenBackend(FakeUsbBackend):  # type: ignore[misc]
    def enumerate_devices(self) -> Iterator[Any]:
        raise usb.core.USBError("Input/output error", errno=5)


def test_enumeration_failure_raises_usb_unavailable(bus: FakeUsbBus) -> None:
    with pytest.raises(UsbUnavailable, match="enumeration failed"):
        scan_usb(BrokenBackend(bus), DEFAULT_VENDORS)


def test_view_lookup_by_serial_ignores_case(bus: FakeUsbBus) -> None:
    bus.plug("pax-a910", serial="smartpos77aa")
    view = scan_usb(bus.backend, DEFAULT_VENDORS)
    assert len(view.with_serial("SMARTPOS77AA")) == 1
    assert view.with_serial("other") == ()


def test_diff_reports_added_and_removed(bus: FakeUsbBus) -> None:
    empty = TerminalView()
    pax = bus.plug("pax-a910")
    one = scan_usb(bus.backend, DEFAULT_VENDORS)
    assert diff_views(one, one) is None
    change = diff_views(empty, one)
    assert change is not None
    assert (len(change.added), change.removed) == (1, ())
    bus.unplug(pax)
    bus.plug("gertec-mp35p")
    swapped = scan_usb(bus.backend, DEFAULT_VENDORS)
    change = diff_views(one, swapped)
    assert change is not None
    assert [d.serial for d in change.added] == ["8701016695109435"]
    assert [d.serial for d in change.removed] == ["1234345545"]


def test_the_real_libusb_backend_or_a_clear_error() -> None:
    import usb.backend.libusb1

    from pointd.terminal.discovery import default_usb_backend

    if usb.backend.libusb1.get_backend() is None:
        with pytest.raises(UsbUnavailable, match="libusb"):
            default_usb_backend()
        return
    try:
        view = scan_usb(default_usb_backend(), DEFAULT_VENDORS)
    except UsbUnavailable:
        pytest.skip("libusb is installed but this machine has no readable USB bus")
    assert isinstance(view, TerminalView)
