"""The USB simulator: dumps, the pyusb backend contract, plug/unplug and hot-plug pipes."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import usb.core
import usb.util

from pointd.sim.usb.bus import FakeUsbBus, FakeUsbError
from pointd.sim.usb.dumps import UsbFixtureError, load_dump, load_dumps

EXPECTED_MODELS = {"pax-a910", "gertec-mp35p", "ingenico-move2500", "ftdi-ft232r", "ch340"}


def test_every_shipped_dump_loads(usb_fixtures: Path) -> None:
    dumps = load_dumps(usb_fixtures)
    assert set(dumps) == EXPECTED_MODELS
    assert all(dump.provenance for dump in dumps.values())


def test_pyusb_reads_descriptors_and_strings_through_the_fake(bus: FakeUsbBus) -> None:
    bus.plug("gertec-mp35p")
    bus.plug("ch340")
    devices = {d.idVendor: d for d in usb.core.find(find_all=True, backend=bus.backend)}
    gertec = devices[0x1753]
    assert (gertec.idProduct, gertec.serial_number) == (0xC902, "8701016695109435")
    assert (gertec.manufacturer, gertec.product) == ("GERTEC", "MP35P")
    assert gertec.port_numbers == (1,)
    config = gertec.get_active_configuration()
    interface = config[(0, 0)]
    assert interface.bInterfaceClass == 2
    assert usb.util.get_string(gertec, interface.iInterface) == "CDC Abstract Control Model"
    ch340 = devices[0x1A86]
    assert ch340.iSerialNumber == 0
    assert ch340.serial_number is None


def test_serial_can_be_overridden_per_plug(bus: FakeUsbBus) -> None:
    bus.plug("pax-a910", serial="SMARTPOS0000000001")
    (device,) = usb.core.find(find_all=True, backend=bus.backend)
    assert device.serial_number == "SMARTPOS0000000001"


def test_a_device_unplugged_under_pyusb_fails_like_the_kernel(bus: FakeUsbBus) -> None:
    bus.plug("pax-a910")
    (device,) = usb.core.find(find_all=True, backend=bus.backend)
    bus.unplug("1234345545")
    with pytest.raises(usb.core.USBError) as error:
        usb.util.get_string(device, device.iSerialNumber, langid=0x0409)
    assert error.value.errno == errno.ENODEV
    with pytest.raises(ValueError, match="langid"):  # pyusb's wording for the same failure
        _ = device.serial_number
    assert list(usb.core.find(find_all=True, backend=bus.backend)) == []


def test_a_device_without_access_refuses_to_open(bus: FakeUsbBus) -> None:
    bus.plug("pax-a910", readable=False)
    (device,) = usb.core.find(find_all=True, backend=bus.backend)
    with pytest.raises(ValueError, match="langid"):
        _ = device.serial_number


def test_ports_and_addresses_follow_the_kernel(bus: FakeUsbBus) -> None:
    first = bus.plug("pax-a910")
    second = bus.plug("gertec-mp35p")
    bus.unplug(first)
    again = bus.plug("pax-a910")
    assert (first.bus_path, second.bus_path, again.bus_path) == ("1-1", "1-2", "1-1")
    assert again.address not in {first.address, second.address}
    hub = bus.plug("ch340", port=(3, 2))
    assert hub.bus_path == "1-3.2"


def test_bad_plug_and_unplug_requests_are_refused(bus: FakeUsbBus) -> None:
    with pytest.raises(FakeUsbError, match="unknown USB model 'nokia'"):
        bus.plug("nokia")
    bus.plug("pax-a910", port=(1,))
    with pytest.raises(FakeUsbError, match="taken"):
        bus.plug("gertec-mp35p", port=(1,))
    with pytest.raises(FakeUsbError, match="no plugged device"):
        bus.unplug("NOPE")


def test_hotplug_sources_see_each_change(bus: FakeUsbBus) -> None:
    source = bus.hotplug()
    try:
        assert source.drain() == 0
        device = bus.plug("pax-a910")
        bus.unplug(device)
        assert source.drain() == 2
        assert source.drain() == 0
    finally:
        source.close()
    bus.plug("pax-a910")  # a closed source is no longer notified
    source.close()


def _write(tmp_path: Path, name: str, document: object) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(format="other/2"), "format"),
        (lambda d: d["device"].pop("idVendor"), "device.idVendor: missing"),
        (lambda d: d["device"].update(idVendor="0xzz"), "not a number"),
        (lambda d: d["device"].update(idVendor=70000), "not a number in"),
        (lambda d: d["device"].update(idVendor=True), "expected a number"),
        (lambda d: d["device"].update(speed="warp"), "speed"),
        (lambda d: d["strings"].update(serial=""), "strings.serial"),
        (lambda d: d["configuration"].update(interfaces=[]), "at least one"),
        (lambda d: d["configuration"].update(interfaces={}), "expected a list"),
        (lambda d: d.update(strings=[]), "expected an object"),
        (lambda d: d.update(model="other"), "must equal the file name"),
    ],
)
def test_malformed_dumps_are_refused_naming_the_field(
    usb_fixtures: Path, tmp_path: Path, mutate: object, fragment: str
) -> None:
    document = json.loads((usb_fixtures / "pax-a910.json").read_text(encoding="utf-8"))
    mutate(document)  # type: ignore[operator]
    path = _write(tmp_path, "pax-a910", document)
    with pytest.raises(UsbFixtureError) as error:
        load_dump(path)
    assert fragment in str(error.value)
    assert "pax-a910" in str(error.value)


def test_unreadable_dump_files_and_empty_directories(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UsbFixtureError, match=r"broken\.json"):
        load_dumps(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsbFixtureError, match=r"no \*\.json"):
        load_dumps(empty)
    with pytest.raises(UsbFixtureError, match="no such directory"):
        load_dumps(tmp_path / "missing")
