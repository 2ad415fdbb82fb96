"""The table of USB vendor ids that mark a device as a payment terminal.

USB is only how pointd learns which terminal sits at a checkout and whether it is plugged
in; payments go through the cloud. So the table errs on the side of listing a vendor: a
wrong entry costs one string-descriptor read, a missing one hides a terminal. Each default
says whether its id was verified against usb.ids (2025.07.26) and where it came from;
docs/terminals.md carries the same table for people.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pointd.terminal.errors import VendorTableError

USB_ID_MAX = 0xFFFF


@dataclass(frozen=True, slots=True)
class VendorEntry:
    """One terminal vendor: its USB vendor id and, optionally, the only product ids to accept."""

    name: str
    vendor_id: int
    product_ids: frozenset[int] | None = None  # None: every product of this vendor
    verified: bool = False
    source: str = ""

    def matches(self, vendor_id: int, product_id: int) -> bool:
        """Whether a device with these ids belongs to this entry."""
        if vendor_id != self.vendor_id:
            return False
        return self.product_ids is None or product_id in self.product_ids


@dataclass(frozen=True, slots=True)
class VendorTable:
    """The vendors whose USB devices pointd treats as terminals."""

    entries: tuple[VendorEntry, ...]

    def lookup(self, vendor_id: int, product_id: int) -> VendorEntry | None:
        """The entry a device belongs to, or None when it is not a terminal."""
        for entry in self.entries:
            if entry.matches(vendor_id, product_id):
                return entry
        return None

    def vendor_ids(self) -> frozenset[int]:
        """Every vendor id in the table."""
        return frozenset(entry.vendor_id for entry in self.entries)


_USB_IDS = "usb.ids 2025.07.26"

DEFAULT_VENDORS = VendorTable(
    (
        VendorEntry("Ingenico", 0x0B00, None, True, f"{_USB_IDS} (no products listed)"),
        VendorEntry("Ingenico", 0x0F14, None, True, _USB_IDS),
        VendorEntry("Sagem Monetel", 0x079B, None, True, f"{_USB_IDS}; iPP320 per community rules"),
        VendorEntry("Gertec", 0x1753, None, True, f"{_USB_IDS} (c901 PPC900)"),
        VendorEntry(
            "PAX Technology", 0x2FB8, None, False, "absent from usb.ids; community pyusb code"
        ),
        VendorEntry("VeriFone", 0x11CA, None, True, _USB_IDS),
        VendorEntry("Castles", 0x0CA6, None, True, _USB_IDS),
        VendorEntry("Newland", 0x1EAB, None, True, f"{_USB_IDS} (barcode engines listed)"),
        VendorEntry(
            "Android Open Accessory",
            0x18D1,
            frozenset(range(0x2D00, 0x2D06)),
            True,
            f"{_USB_IDS}: Google accessory-mode PIDs 2d00-2d05 only",
        ),
    )
)
# Sunmi is missing on purpose: no USB vendor id for it is published in usb.ids or anywhere we
# looked. Add it through the configuration ([[usb_vendors]]) once a unit has been
# seen with lsusb.


def _parse_usb_id(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise VendorTableError(f"{where}: expected a 4-digit hex string such as '1753'")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip().lower().removeprefix("0x")
        if not text or len(text) > 4 or any(c not in "0123456789abcdef" for c in text):
            raise VendorTableError(f"{where}: {value!r} is not a hex USB id such as '1753'")
        number = int(text, 16)
    else:
        raise VendorTableError(f"{where}: expected a 4-digit hex string such as '1753'")
    if not 0 <= number <= USB_ID_MAX:
        raise VendorTableError(f"{where}: {value!r} is outside 0000-ffff")
    return number


_ENTRY_KEYS = frozenset({"name", "vendor_id", "product_ids", "verified", "source"})


def vendor_table_from_config(raw_entries: Iterable[Mapping[str, Any]]) -> VendorTable:
    """Build a table from configuration entries; raise VendorTableError naming the bad key.

    Each entry is ``{name = "Gertec", vendor_id = "1753", product_ids = ["c901"]}``;
    ``product_ids`` is optional and ``verified``/``source`` are free documentation.
    """
    entries: list[VendorEntry] = []
    for index, raw in enumerate(raw_entries):
        where = f"usb_vendors[{index}]"
        if not isinstance(raw, Mapping):
            raise VendorTableError(f"{where}: expected a table with name and vendor_id")
        unknown = sorted(set(raw) - _ENTRY_KEYS)
        if unknown:
            raise VendorTableError(f"{where}: unknown key {unknown[0]!r}")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise VendorTableError(f"{where}.name: expected a non-empty string")
        if "vendor_id" not in raw:
            raise VendorTableError(f"{where}.vendor_id: missing")
        vendor_id = _parse_usb_id(raw["vendor_id"], f"{where}.vendor_id")
        product_ids: frozenset[int] | None = None
        if "product_ids" in raw:
            raw_products = raw["product_ids"]
            if isinstance(raw_products, str | bytes) or not isinstance(raw_products, Iterable):
                raise VendorTableError(f"{where}.product_ids: expected a list of hex ids")
            product_ids = frozenset(
                _parse_usb_id(product, f"{where}.product_ids[{position}]")
                for position, product in enumerate(raw_products)
            )
            if not product_ids:
                raise VendorTableError(
                    f"{where}.product_ids: empty list matches nothing; omit it to match all"
                )
        verified = raw.get("verified", False)
        if not isinstance(verified, bool):
            raise VendorTableError(f"{where}.verified: expected true or false")
        source = raw.get("source", "")
        if not isinstance(source, str):
            raise VendorTableError(f"{where}.source: expected a string")
        entries.append(VendorEntry(name.strip(), vendor_id, product_ids, verified, source))
    if not entries:
        raise VendorTableError("usb_vendors: empty table would hide every terminal")
    return VendorTable(tuple(entries))
