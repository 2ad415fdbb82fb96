"""The USB simulator: descriptor dumps, a fake pyusb backend with hot-plug, and its command."""

from pointd.sim.usb.bus import FakeHotplugSource, FakeUsbBackend, FakeUsbBus, PluggedDevice
from pointd.sim.usb.cli import main
from pointd.sim.usb.dumps import DescriptorDump, UsbFixtureError, load_dumps

__all__ = [
    "DescriptorDump",
    "FakeHotplugSource",
    "FakeUsbBackend",
    "FakeUsbBus",
    "PluggedDevice",
    "UsbFixtureError",
    "load_dumps",
    "main",
]
