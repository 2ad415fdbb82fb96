"""Which Mercado Pago device is the terminal at this lane: matching USB serials to cloud ids.

Theory of operation: the cloud's device list names each terminal ``<MODEL>__<SERIAL>``
(``PAX_A910__SMARTPOS1234345545``), where the part after the last ``__`` ends with the serial
on the terminal's label. A terminal's USB serial string, when it exposes one, is that label
serial or its tail. So a USB device matches a cloud id when one serial ends with the other,
ignoring case, and the shorter one is at least MIN_SERIAL_MATCH_LENGTH characters (so a
short or empty serial cannot match everything). Ids without ``__`` stay opaque: they can
be pinned but never matched.

Rules, in order:

1. A lane pin (an explicit cloud device id in the configuration) always wins. USB then only
   says whether that terminal is attached: by the lane's configured USB serial if there is
   one, else by a USB device whose serial matches the pin; if neither can be told,
   presence is UNKNOWN, never "detached".
2. A lane USB serial (the serial of the terminal that belongs to this lane) is matched
   against the cloud list. Its presence on USB is checked whether or not a cloud device
   matches, so an unplugged terminal is reported as DETACHED.
3. With neither, every terminal on USB is matched against the cloud list: exactly one
   match resolves the lane (a single-lane PC needs no configuration).

Zero candidates is UNKNOWN, two or more is AMBIGUOUS: both are reported with the
candidates, never guessed. Multi-lane PCs must configure a pin or a serial per lane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pointd.terminal.discovery import UsbDevice

# Shortest serial tail accepted as a match; the label serials seen are 10-18 characters.
MIN_SERIAL_MATCH_LENGTH = 6

DEVICE_ID_SEPARATOR = "__"


class CloudDevice(Protocol):
    """What identity and health need from an entry of Mercado Pago's device list."""

    @property
    def id(self) -> str:
        """The cloud device id, ``<MODEL>__<SERIAL>`` by convention but opaque."""
        ...

    @property
    def operating_mode(self) -> str | None:
        """``PDV`` (integrated), ``STANDALONE``, or None when the list omits it."""
        ...


class UsbPresence(StrEnum):
    """What USB says about the lane's terminal."""

    ATTACHED = "attached"
    DETACHED = "detached"  # the lane has USB identity info and the device is not on the bus
    UNKNOWN = "unknown"  # the lane has no USB identity info: USB cannot tell


class IdentityProblem(StrEnum):
    """Why a lane's terminal is not cleanly identified."""

    UNKNOWN = "unknown"  # no cloud device matches
    AMBIGUOUS = "ambiguous"  # several cloud devices match; pin one in the configuration
    DETACHED = "detached"  # the lane's terminal is not on USB
    NO_SERIAL_ON_USB = "no_serial_on_usb"  # a terminal on USB gives no serial to match


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of identifying a lane's terminal."""

    device_id: str | None
    presence: UsbPresence
    problem: IdentityProblem | None = None
    candidates: tuple[str, ...] = ()  # the cloud ids considered when ambiguous
    usb_device: UsbDevice | None = None  # the matching device on USB, when attached
    pinned: bool = False


def serial_part(device_id: str) -> str | None:
    """The serial part of a ``<MODEL>__<SERIAL>`` id, or None for an opaque id."""
    _model, separator, serial = device_id.rpartition(DEVICE_ID_SEPARATOR)
    if not separator or not serial:
        return None
    return serial


def serials_match(usb_serial: str, device_id: str) -> bool:
    """Whether a USB serial identifies the cloud device ``device_id`` (see module rules)."""
    cloud_serial = serial_part(device_id)
    if cloud_serial is None:
        return False
    usb_text = usb_serial.strip().casefold()
    cloud_text = cloud_serial.strip().casefold()
    shorter = min(len(usb_text), len(cloud_text))
    if shorter < MIN_SERIAL_MATCH_LENGTH:
        return usb_text == cloud_text and shorter > 0
    return usb_text.endswith(cloud_text) or cloud_text.endswith(usb_text)


def _matching_ids(usb_serial: str, cloud_devices: Sequence[CloudDevice]) -> tuple[str, ...]:
    return tuple(
        sorted({device.id for device in cloud_devices if serials_match(usb_serial, device.id)})
    )


def _resolve_pinned(
    lane_pin: str, lane_serial: str | None, usb_devices: Sequence[UsbDevice]
) -> Resolution:
    if lane_serial is not None:
        on_bus = [d for d in usb_devices if d.serial and d.serial.casefold() == lane_serial]
        if on_bus:
            return Resolution(lane_pin, UsbPresence.ATTACHED, usb_device=on_bus[0], pinned=True)
        return Resolution(lane_pin, UsbPresence.DETACHED, IdentityProblem.DETACHED, pinned=True)
    by_pin = [d for d in usb_devices if d.serial and serials_match(d.serial, lane_pin)]
    if by_pin:
        return Resolution(lane_pin, UsbPresence.ATTACHED, usb_device=by_pin[0], pinned=True)
    return Resolution(lane_pin, UsbPresence.UNKNOWN, pinned=True)


def _resolve_by_serial(
    lane_serial: str, usb_devices: Sequence[UsbDevice], cloud_devices: Sequence[CloudDevice]
) -> Resolution:
    on_bus = [d for d in usb_devices if d.serial and d.serial.casefold() == lane_serial]
    presence = UsbPresence.ATTACHED if on_bus else UsbPresence.DETACHED
    usb_device = on_bus[0] if on_bus else None
    candidates = _matching_ids(lane_serial, cloud_devices)
    if len(candidates) > 1:
        return Resolution(None, presence, IdentityProblem.AMBIGUOUS, candidates, usb_device)
    if not candidates:
        return Resolution(None, presence, IdentityProblem.UNKNOWN, (), usb_device)
    problem = None if on_bus else IdentityProblem.DETACHED
    return Resolution(candidates[0], presence, problem, candidates, usb_device)


def _resolve_automatically(
    usb_devices: Sequence[UsbDevice], cloud_devices: Sequence[CloudDevice]
) -> Resolution:
    matches: dict[str, UsbDevice] = {}
    for device in usb_devices:
        if device.serial:
            for device_id in _matching_ids(device.serial, cloud_devices):
                matches.setdefault(device_id, device)
    if len(matches) == 1:
        ((device_id, usb_device),) = matches.items()
        return Resolution(device_id, UsbPresence.ATTACHED, None, (device_id,), usb_device)
    if matches:
        return Resolution(
            None, UsbPresence.ATTACHED, IdentityProblem.AMBIGUOUS, tuple(sorted(matches))
        )
    if any(not device.serial for device in usb_devices):
        return Resolution(None, UsbPresence.ATTACHED, IdentityProblem.NO_SERIAL_ON_USB)
    presence = UsbPresence.ATTACHED if usb_devices else UsbPresence.UNKNOWN
    return Resolution(None, presence, IdentityProblem.UNKNOWN)


def resolve_lane_terminal(
    lane_pin: str | None,
    lane_serial: str | None,
    usb_devices: Sequence[UsbDevice],
    cloud_devices: Sequence[CloudDevice],
) -> Resolution:
    """Identify the lane's cloud device from its pin, its USB serial or the bus (pure)."""
    pin = lane_pin.strip() if lane_pin else None
    serial = lane_serial.strip().casefold() if lane_serial and lane_serial.strip() else None
    if pin:
        return _resolve_pinned(pin, serial, usb_devices)
    if serial is not None:
        return _resolve_by_serial(serial, usb_devices, cloud_devices)
    return _resolve_automatically(usb_devices, cloud_devices)
