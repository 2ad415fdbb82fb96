"""Loading USB descriptor dumps (hardware-fixtures/usb/*.json) into checked, typed records.

A dump describes one device model: its device descriptor, one configuration with its
interfaces and endpoints, and its manufacturer/product/serial strings. The format is
``pointd-usb-descriptor/1`` and is documented in hardware-fixtures/README.md. Numbers may be
JSON integers or ``"0x..."`` strings so that ids read as they do in ``lsusb``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DUMP_FORMAT = "pointd-usb-descriptor/1"

# pyusb's speed codes (usb.util.SPEED_*), keyed by the words the dumps use.
SPEEDS = {"low": 1, "full": 2, "high": 3, "super": 4}

_DEVICE_FIELDS = (
    "bcdUSB",
    "bDeviceClass",
    "bDeviceSubClass",
    "bDeviceProtocol",
    "bMaxPacketSize0",
    "idVendor",
    "idProduct",
    "bcdDevice",
)
_INTERFACE_FIELDS = (
    "bInterfaceNumber",
    "bAlternateSetting",
    "bInterfaceClass",
    "bInterfaceSubClass",
    "bInterfaceProtocol",
)
_ENDPOINT_FIELDS = ("bEndpointAddress", "bmAttributes", "wMaxPacketSize", "bInterval")
_CONFIGURATION_FIELDS = ("bConfigurationValue", "bmAttributes", "bMaxPower")


class UsbFixtureError(ValueError):
    """A descriptor dump is unreadable or malformed; the message names the file and field."""


@dataclass(frozen=True, slots=True)
class EndpointDump:
    """One endpoint descriptor."""

    fields: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class InterfaceDump:
    """One interface descriptor, its name string and its endpoints."""

    fields: Mapping[str, int]
    name: str | None
    endpoints: tuple[EndpointDump, ...]


@dataclass(frozen=True, slots=True)
class DescriptorDump:
    """One device model as read from a dump file."""

    model: str
    description: str
    provenance: str
    device: Mapping[str, int]
    speed: int
    manufacturer: str | None
    product: str | None
    default_serial: str | None  # None: the model has no serial string at all
    configuration: Mapping[str, int]
    interfaces: tuple[InterfaceDump, ...]

    @property
    def usb_id(self) -> str:
        """The ``vvvv:pppp`` id lsusb shows."""
        return f"{self.device['idVendor']:04x}:{self.device['idProduct']:04x}"


def _number(raw: Mapping[str, Any], name: str, where: str, maximum: int = 0xFFFF) -> int:
    if name not in raw:
        raise UsbFixtureError(f"{where}.{name}: missing")
    value = raw[name]
    if isinstance(value, bool):
        raise UsbFixtureError(f"{where}.{name}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise UsbFixtureError(f"{where}.{name}: {value!r} is not a number") from None
    if not isinstance(value, int) or not 0 <= value <= maximum:
        raise UsbFixtureError(f"{where}.{name}: {value!r} is not a number in 0..{maximum:#x}")
    return value


def _optional_text(raw: Mapping[str, Any], name: str, where: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UsbFixtureError(f"{where}.{name}: expected a non-empty string or null")
    return value


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise UsbFixtureError(f"{where}: expected an object")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise UsbFixtureError(f"{where}: expected a list")
    return value


def parse_dump(document: object, where: str) -> DescriptorDump:
    """Check and convert one parsed JSON dump; ``where`` names it in error messages."""
    root = _mapping(document, where)
    if root.get("format") != DUMP_FORMAT:
        raise UsbFixtureError(f"{where}.format: expected {DUMP_FORMAT!r}")
    model = root.get("model")
    if not isinstance(model, str) or not model:
        raise UsbFixtureError(f"{where}.model: expected a non-empty string")
    device_raw = _mapping(root.get("device"), f"{where}.device")
    device = {name: _number(device_raw, name, f"{where}.device") for name in _DEVICE_FIELDS}
    speed_word = device_raw.get("speed", "full")
    if speed_word not in SPEEDS:
        raise UsbFixtureError(f"{where}.device.speed: expected one of {sorted(SPEEDS)}")
    strings = _mapping(root.get("strings"), f"{where}.strings")
    config_raw = _mapping(root.get("configuration"), f"{where}.configuration")
    configuration = {
        name: _number(config_raw, name, f"{where}.configuration", 0xFF)
        for name in _CONFIGURATION_FIELDS
    }
    interfaces: list[InterfaceDump] = []
    for index, interface_raw in enumerate(
        _list(config_raw.get("interfaces"), f"{where}.configuration.interfaces")
    ):
        at = f"{where}.configuration.interfaces[{index}]"
        interface_map = _mapping(interface_raw, at)
        endpoints: list[EndpointDump] = []
        for n, endpoint in enumerate(_list(interface_map.get("endpoints"), f"{at}.endpoints")):
            endpoint_at = f"{at}.endpoints[{n}]"
            endpoint_map = _mapping(endpoint, endpoint_at)
            endpoints.append(
                EndpointDump(
                    {name: _number(endpoint_map, name, endpoint_at) for name in _ENDPOINT_FIELDS}
                )
            )
        interfaces.append(
            InterfaceDump(
                {name: _number(interface_map, name, at, 0xFF) for name in _INTERFACE_FIELDS},
                _optional_text(interface_map, "interface", at),
                tuple(endpoints),
            )
        )
    if not interfaces:
        raise UsbFixtureError(f"{where}.configuration.interfaces: a device has at least one")
    return DescriptorDump(
        model=model,
        description=str(root.get("description", "")),
        provenance=str(root.get("provenance", "")),
        device=device,
        speed=SPEEDS[speed_word],
        manufacturer=_optional_text(strings, "manufacturer", f"{where}.strings"),
        product=_optional_text(strings, "product", f"{where}.strings"),
        default_serial=_optional_text(strings, "serial", f"{where}.strings"),
        configuration=configuration,
        interfaces=tuple(interfaces),
    )


def load_dump(path: Path) -> DescriptorDump:
    """Read one dump file; raise UsbFixtureError naming the file on any problem."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsbFixtureError(f"{path}: cannot read: {exc}") from exc
    dump = parse_dump(document, path.name)
    if dump.model != path.stem:
        raise UsbFixtureError(f"{path.name}.model: {dump.model!r} must equal the file name")
    return dump


def load_dumps(directory: Path) -> dict[str, DescriptorDump]:
    """Read every ``*.json`` dump of a directory, keyed by model."""
    if not directory.is_dir():
        raise UsbFixtureError(f"{directory}: no such directory of USB descriptor dumps")
    dumps = {path.stem: load_dump(path) for path in sorted(directory.glob("*.json"))}
    if not dumps:
        raise UsbFixtureError(f"{directory}: holds no *.json descriptor dumps")
    return dumps


def default_dump_directory() -> Path:
    """The dumps shipped inside the package if built in, else the checkout's fixtures."""
    here = Path(__file__).resolve().parent
    packaged = here / "dumps"
    if packaged.is_dir():
        return packaged
    return here.parents[2] / "hardware-fixtures" / "usb"
