"""A simulated USB bus: a pyusb backend built from descriptor dumps, with plug and unplug.

Theory of operation: ``FakeUsbBackend`` implements pyusb's backend interface
(``usb.backend.IBackend``) over the devices currently plugged into a ``FakeUsbBus``, so
``usb.core.find(backend=...)`` and pyusb's string-descriptor reads work unchanged: string
descriptors are answered from the dump through a GET_DESCRIPTOR control transfer, exactly
the request libusb would send. A device that is unplugged while a pyusb ``Device`` still
points at it answers with the kernel's ENODEV, and a device plugged with
``readable=False`` refuses to open with EACCES, as a node without the udev rules would.

Every plug and unplug writes one byte to each subscriber's pipe (``FakeUsbBus.hotplug()``),
which is a HotplugSource: the terminal watch waits on it with ``loop.add_reader`` just as it
waits on udev's netlink socket. Production code never learns it is simulated.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import usb.backend
import usb.core

from pointd.sim.usb.dumps import DescriptorDump, load_dumps

BUS_NUMBER = 1
FIRST_DEVICE_ADDRESS = 2  # address 1 is the root hub
MAX_DEVICE_ADDRESS = 127
LANGID_EN_US = 0x0409
GET_DESCRIPTOR = 0x06
STRING_DESCRIPTOR = 0x03
MANUFACTURER_INDEX, PRODUCT_INDEX, SERIAL_INDEX = 1, 2, 3
FIRST_INTERFACE_STRING_INDEX = 4


class FakeUsbError(Exception):
    """A plug or unplug request the simulated bus cannot honour."""


@dataclass(slots=True)
class PluggedDevice:
    """One simulated device on the bus."""

    dump: DescriptorDump
    serial: str | None
    address: int
    port_numbers: tuple[int, ...]
    readable: bool = True
    connected: bool = True

    @property
    def bus_path(self) -> str:
        """The sysfs-style path, e.g. ``1-3``."""
        return f"{BUS_NUMBER}-{'.'.join(str(port) for port in self.port_numbers)}"

    def string(self, index: int) -> str | None:
        """The string descriptor at ``index`` (1 manufacturer, 2 product, 3 serial, 4+ ifaces)."""
        fixed = {
            MANUFACTURER_INDEX: self.dump.manufacturer,
            PRODUCT_INDEX: self.dump.product,
            SERIAL_INDEX: self.serial,
        }
        if index in fixed:
            return fixed[index]
        position = index - FIRST_INTERFACE_STRING_INDEX
        if 0 <= position < len(self.dump.interfaces):
            return self.dump.interfaces[position].name
        return None


@dataclass(slots=True)
class _Handle:
    device: PluggedDevice


class FakeHotplugSource:
    """A pipe that becomes readable whenever the simulated bus changes."""

    def __init__(self, bus: FakeUsbBus) -> None:
        self._bus = bus
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._closed = False

    def fileno(self) -> int:
        """The read end of the pipe."""
        return self._read_fd

    def notify(self) -> None:
        """Signal one change."""
        if self._closed:
            return
        # A full pipe already holds unread notifications, so it is readable anyway.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_fd, b"\x01")

    def drain(self) -> int:
        """Read every pending notification without blocking."""
        count = 0
        while True:
            try:
                chunk = os.read(self._read_fd, 4096)
            except BlockingIOError:
                return count
            if not chunk:
                return count
            count += len(chunk)

    def close(self) -> None:
        """Stop notifications and close both ends."""
        if self._closed:
            return
        self._closed = True
        self._bus._unsubscribe(self)
        os.close(self._read_fd)
        os.close(self._write_fd)


class FakeUsbBus:
    """Simulated devices that tests and demos plug and unplug at run time."""

    def __init__(self, dumps: Mapping[str, DescriptorDump]) -> None:
        self._dumps = dict(dumps)
        self._devices: list[PluggedDevice] = []
        self._next_address = FIRST_DEVICE_ADDRESS
        self._subscribers: list[FakeHotplugSource] = []
        self.backend = FakeUsbBackend(self)

    @classmethod
    def from_directory(cls, directory: Path) -> FakeUsbBus:
        """A bus whose models are the dumps of ``directory``."""
        return cls(load_dumps(directory))

    @property
    def models(self) -> tuple[str, ...]:
        """The model names that can be plugged."""
        return tuple(sorted(self._dumps))

    def dump(self, model: str) -> DescriptorDump:
        """The descriptor dump of ``model``."""
        try:
            return self._dumps[model]
        except KeyError:
            known = ", ".join(self.models)
            raise FakeUsbError(f"unknown USB model {model!r}; known: {known}") from None

    @property
    def plugged(self) -> tuple[PluggedDevice, ...]:
        """The devices currently on the bus, in plug order."""
        return tuple(self._devices)

    def plug(
        self,
        model: str,
        serial: str | None = None,
        *,
        port: tuple[int, ...] | None = None,
        readable: bool = True,
    ) -> PluggedDevice:
        """Connect a device of ``model``; ``serial`` overrides the dump's default serial."""
        dump = self.dump(model)
        used = {device.port_numbers for device in self._devices}
        if port is None:
            port = next((n,) for n in range(1, len(used) + 2) if (n,) not in used)
        elif port in used or not port or any(number < 1 for number in port):
            raise FakeUsbError(f"port {port} is taken or invalid")
        device = PluggedDevice(
            dump=dump,
            serial=serial if serial is not None else dump.default_serial,
            address=self._allocate_address(),
            port_numbers=port,
            readable=readable,
        )
        self._devices.append(device)
        self._notify()
        return device

    def unplug(self, target: PluggedDevice | str) -> PluggedDevice:
        """Disconnect a device given itself, its serial or its bus path."""
        for device in self._devices:
            if device is target or (
                isinstance(target, str) and target in {device.serial, device.bus_path}
            ):
                self._devices.remove(device)
                device.connected = False
                self._notify()
                return device
        raise FakeUsbError(f"no plugged device matches {target!r}")

    def hotplug(self) -> FakeHotplugSource:
        """A new HotplugSource that is notified of every later plug and unplug."""
        source = FakeHotplugSource(self)
        self._subscribers.append(source)
        return source

    def _unsubscribe(self, source: FakeHotplugSource) -> None:
        if source in self._subscribers:
            self._subscribers.remove(source)

    def _notify(self) -> None:
        for source in self._subscribers:
            source.notify()

    def _allocate_address(self) -> int:
        # Like the kernel, addresses grow with each plug and wrap; a replug gets a new one.
        in_use = {device.address for device in self._devices}
        span = MAX_DEVICE_ADDRESS - FIRST_DEVICE_ADDRESS + 1
        for _ in range(span):
            address = self._next_address
            self._next_address = (
                FIRST_DEVICE_ADDRESS if address >= MAX_DEVICE_ADDRESS else address + 1
            )
            if address not in in_use:
                return address
        raise FakeUsbError("every USB address on the bus is in use")


def _usb_error(code: int) -> usb.core.USBError:
    return usb.core.USBError(os.strerror(code), errno=code)


class FakeUsbBackend(usb.backend.IBackend):  # type: ignore[misc]
    """pyusb's backend interface answered from a FakeUsbBus."""

    def __init__(self, bus: FakeUsbBus) -> None:
        super().__init__()
        self._bus = bus

    def enumerate_devices(self) -> Iterator[PluggedDevice]:
        """Yield the devices plugged now."""
        yield from self._bus.plugged

    def get_parent(self, dev: PluggedDevice) -> None:
        """Devices hang off the root hub, which is not simulated."""

    def get_device_descriptor(self, dev: PluggedDevice) -> SimpleNamespace:
        """The device descriptor with bus topology, as libusb reports it."""
        dump = dev.dump
        has = {
            "iManufacturer": MANUFACTURER_INDEX if dump.manufacturer else 0,
            "iProduct": PRODUCT_INDEX if dump.product else 0,
            "iSerialNumber": SERIAL_INDEX if dev.serial else 0,
        }
        return SimpleNamespace(
            bLength=18,
            bDescriptorType=0x01,
            **dump.device,
            **has,
            bNumConfigurations=1,
            bus=BUS_NUMBER,
            address=dev.address,
            port_number=dev.port_numbers[-1],
            port_numbers=dev.port_numbers,
            speed=dump.speed,
        )

    def get_configuration_descriptor(self, dev: PluggedDevice, config: int) -> SimpleNamespace:
        """The one configuration of the dump."""
        if config != 0:
            raise IndexError("the simulated device has one configuration")
        interfaces = dev.dump.interfaces
        total = 9 + sum(9 + 7 * len(interface.endpoints) for interface in interfaces)
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=0x02,
            wTotalLength=total,
            bNumInterfaces=len({i.fields["bInterfaceNumber"] for i in interfaces}),
            iConfiguration=0,
            extra_descriptors=[],
            **dev.dump.configuration,
        )

    def get_interface_descriptor(
        self, dev: PluggedDevice, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        """Interface ``intf`` (alternate settings are listed as separate interfaces)."""
        matching = [
            (position, interface)
            for position, interface in enumerate(dev.dump.interfaces)
            if interface.fields["bInterfaceNumber"] == intf
        ]
        if config != 0 or alt >= len(matching):
            raise IndexError("no such interface")
        position, interface = matching[alt]
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=0x04,
            bNumEndpoints=len(interface.endpoints),
            iInterface=FIRST_INTERFACE_STRING_INDEX + position if interface.name else 0,
            extra_descriptors=[],
            **interface.fields,
        )

    def get_endpoint_descriptor(
        self, dev: PluggedDevice, ep: int, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        """Endpoint ``ep`` of an interface."""
        matching = [i for i in dev.dump.interfaces if i.fields["bInterfaceNumber"] == intf]
        if config != 0 or alt >= len(matching) or ep >= len(matching[alt].endpoints):
            raise IndexError("no such endpoint")
        return SimpleNamespace(
            bLength=7,
            bDescriptorType=0x05,
            bRefresh=0,
            bSynchAddress=0,
            extra_descriptors=[],
            **matching[alt].endpoints[ep].fields,
        )

    def open_device(self, dev: PluggedDevice) -> _Handle:
        """Open the device, failing like Linux when it is gone or not readable."""
        if not dev.connected:
            raise _usb_error(errno.ENODEV)
        if not dev.readable:
            raise _usb_error(errno.EACCES)
        return _Handle(dev)

    def close_device(self, dev_handle: _Handle) -> None:
        """Nothing to release."""

    def get_configuration(self, dev_handle: _Handle) -> int:
        """The active configuration value."""
        return int(dev_handle.device.dump.configuration["bConfigurationValue"])

    def ctrl_transfer(  # noqa: PLR0917  pyusb's IBackend fixes this signature
        self,
        dev_handle: _Handle,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array[int],
        timeout: int,
    ) -> int:
        """Answer GET_DESCRIPTOR(STRING); stall every other request, as many devices do."""
        device = dev_handle.device
        if not device.connected:
            raise _usb_error(errno.ENODEV)
        if bRequest != GET_DESCRIPTOR or (wValue >> 8) != STRING_DESCRIPTOR:
            raise _usb_error(errno.EPIPE)
        index = wValue & 0xFF
        if index == 0:
            payload = LANGID_EN_US.to_bytes(2, "little")
        else:
            text = device.string(index)
            if text is None or wIndex != LANGID_EN_US:
                raise _usb_error(errno.EPIPE)
            payload = text.encode("utf-16-le")
        descriptor = bytes([2 + len(payload), STRING_DESCRIPTOR]) + payload
        count = min(len(descriptor), len(data))
        data[:count] = array.array("B", descriptor[:count])
        return count
