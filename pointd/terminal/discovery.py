"""Reading the USB bus through pyusb into a snapshot of the terminals that are plugged in.

Theory of operation: pyusb enumerates every device through whatever backend it is given
(libusb in production, the simulator's fake in tests and demos). Devices whose vendor is
in the VendorTable are terminals; for those we read the manufacturer, product and serial
string descriptors, which needs the device node to be readable by pointd (the udev rules
grant group ``pointd`` access to terminal vendors). A device can vanish between enumeration
and the string read, or refuse the read (permissions): it is still listed, with the
strings it would not give set to None, so the view reports what is physically there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import structlog
import usb.backend
import usb.backend.libusb1
import usb.core
import usb.util

from pointd.terminal.errors import UsbUnavailable
from pointd.terminal.vendors import VendorTable

log = structlog.get_logger(__name__)

# pyusb's backend interface: libusb-1.0's in production, the simulated bus's in the rig.
UsbBackend: TypeAlias = usb.backend.IBackend


@dataclass(frozen=True, slots=True)
class UsbDevice:
    """One terminal seen on the USB bus."""

    vendor_id: int
    product_id: int
    vendor_name: str  # from the vendor table, not from the device
    bus_path: str  # sysfs-style "bus-port.port", stable while the cable stays in the port
    serial: str | None
    product: str | None
    manufacturer: str | None

    @property
    def usb_id(self) -> str:
        """The ``vvvv:pppp`` id lsusb shows."""
        return f"{self.vendor_id:04x}:{self.product_id:04x}"


@dataclass(frozen=True, slots=True)
class TerminalView:
    """The terminals present on USB at one moment, ordered by bus path."""

    devices: tuple[UsbDevice, ...] = ()

    def with_serial(self, serial: str) -> tuple[UsbDevice, ...]:
        """Devices whose USB serial equals ``serial``, ignoring case."""
        wanted = serial.casefold()
        return tuple(
            device
            for device in self.devices
            if device.serial is not None and device.serial.casefold() == wanted
        )


@dataclass(frozen=True, slots=True)
class TerminalChange:
    """What a rescan found different from the previous view."""

    view: TerminalView
    added: tuple[UsbDevice, ...]
    removed: tuple[UsbDevice, ...]


def diff_views(before: TerminalView, after: TerminalView) -> TerminalChange | None:
    """The change from ``before`` to ``after``, or None when they hold the same devices."""
    old = set(before.devices)
    new = set(after.devices)
    if old == new:
        return None
    return TerminalChange(
        view=after,
        added=tuple(device for device in after.devices if device not in old),
        removed=tuple(device for device in before.devices if device not in new),
    )


def default_usb_backend() -> UsbBackend:
    """The libusb-1.0 backend for pyusb; raise UsbUnavailable when libusb is missing."""
    backend = usb.backend.libusb1.get_backend()
    if backend is None:
        raise UsbUnavailable("libusb-1.0 was not found: install libusb-1.0-0")
    return backend


def _bus_path(device: Any) -> str:
    ports: Iterable[int] | None = getattr(device, "port_numbers", None)
    bus = device.bus if device.bus is not None else 0
    if ports:
        return f"{bus}-{'.'.join(str(port) for port in ports)}"
    # Without port numbers the address is the best we have; it changes on every replug.
    return f"{bus}-addr{device.address}"


def _read_string(device: Any, attribute: str, bus_path: str) -> str | None:
    try:
        value = getattr(device, attribute)
    except (usb.core.USBError, ValueError) as exc:
        # ValueError is pyusb's "no langid" (permission or a device without strings).
        log.info(
            "usb_string_unreadable",
            bus_path=bus_path,
            descriptor=attribute,
            error=type(exc).__name__,
            detail=str(exc),
        )
        return None
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def scan_usb(backend: UsbBackend, vendors: VendorTable) -> TerminalView:
    """Enumerate the bus and return the terminals on it; raise UsbUnavailable on failure."""
    try:
        found = list(usb.core.find(find_all=True, backend=backend))
    except (usb.core.USBError, usb.core.NoBackendError, OSError) as exc:
        raise UsbUnavailable(f"USB enumeration failed: {type(exc).__name__}: {exc}") from exc
    devices: list[UsbDevice] = []
    for device in found:
        entry = vendors.lookup(device.idVendor, device.idProduct)
        if entry is None:
            continue
        bus_path = _bus_path(device)
        devices.append(
            UsbDevice(
                vendor_id=device.idVendor,
                product_id=device.idProduct,
                vendor_name=entry.name,
                bus_path=bus_path,
                serial=_read_string(device, "serial_number", bus_path),
                product=_read_string(device, "product", bus_path),
                manufacturer=_read_string(device, "manufacturer", bus_path),
            )
        )
        usb.util.dispose_resources(device)
    devices.sort(key=lambda d: (d.bus_path, d.usb_id))
    return TerminalView(tuple(devices))
