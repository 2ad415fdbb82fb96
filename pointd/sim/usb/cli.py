"""``pointd sim usb``: list the simulated USB devices, or show them as lsusb would."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import usb.core

from pointd.sim.usb.bus import FakeUsbBus
from pointd.sim.usb.dumps import UsbFixtureError, default_dump_directory

FIXTURE_ERROR_EXIT = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pointd sim usb",
        description="List the USB devices the simulator can plug, from descriptor dumps.",
    )
    parser.add_argument(
        "--fixtures",
        type=Path,
        default=None,
        help="directory of descriptor dumps (default: hardware-fixtures/usb of this checkout)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--lsusb",
        action="store_true",
        help="plug one of each model and print lsusb-like lines read back through pyusb",
    )
    output.add_argument("--json", action="store_true", help="print the models as JSON")
    return parser


def _lsusb_lines(bus: FakeUsbBus) -> list[str]:
    for model in bus.models:
        bus.plug(model)
    lines = []
    for device in usb.core.find(find_all=True, backend=bus.backend):
        name = " ".join(part for part in (device.manufacturer, device.product) if part)
        serial = device.serial_number
        suffix = f" serial={serial}" if serial else " (no serial)"
        lines.append(
            f"Bus {device.bus:03d} Device {device.address:03d}: "
            f"ID {device.idVendor:04x}:{device.idProduct:04x} {name}{suffix}"
        )
    return lines


def main(argv: Sequence[str]) -> int:
    """Run ``pointd sim usb``; return the exit code."""
    args = _parser().parse_args(list(argv))
    directory = args.fixtures if args.fixtures is not None else default_dump_directory()
    try:
        bus = FakeUsbBus.from_directory(directory)
    except UsbFixtureError as exc:
        print(f"pointd sim usb: {exc}", file=sys.stderr)
        return FIXTURE_ERROR_EXIT
    if args.lsusb:
        print("\n".join(_lsusb_lines(bus)))
        return 0
    dumps = [bus.dump(model) for model in bus.models]
    if args.json:
        listing = [
            {
                "model": dump.model,
                "usb_id": dump.usb_id,
                "manufacturer": dump.manufacturer,
                "product": dump.product,
                "default_serial": dump.default_serial,
                "description": dump.description,
            }
            for dump in dumps
        ]
        print(json.dumps(listing, indent=2))
        return 0
    width = max(len(dump.model) for dump in dumps)
    for dump in dumps:
        serial = dump.default_serial or "-"
        print(f"{dump.model:<{width}}  {dump.usb_id}  serial {serial:<18}  {dump.description}")
    return 0
