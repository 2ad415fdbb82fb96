"""The terminal vendor table: defaults and the configuration parser's refusals."""

from __future__ import annotations

import pytest

from pointd.terminal.errors import VendorTableError
from pointd.terminal.vendors import DEFAULT_VENDORS, vendor_table_from_config


def test_defaults_cover_the_brief_vendors() -> None:
    ids = DEFAULT_VENDORS.vendor_ids()
    assert {0x0B00, 0x0F14, 0x079B, 0x1753, 0x2FB8, 0x11CA, 0x0CA6, 0x1EAB, 0x18D1} <= ids


def test_pax_is_marked_unverified_and_usb_ids_vendors_verified() -> None:
    by_id = {entry.vendor_id: entry for entry in DEFAULT_VENDORS.entries}
    assert not by_id[0x2FB8].verified
    assert by_id[0x1753].verified
    assert all(entry.source for entry in DEFAULT_VENDORS.entries)


def test_google_counts_only_in_accessory_mode() -> None:
    assert DEFAULT_VENDORS.lookup(0x18D1, 0x2D00) is not None
    assert DEFAULT_VENDORS.lookup(0x18D1, 0x2D05) is not None
    assert DEFAULT_VENDORS.lookup(0x18D1, 0x2D06) is None
    assert DEFAULT_VENDORS.lookup(0x18D1, 0x4EE7) is None  # an ordinary Android phone


def test_serial_adapters_are_not_terminals() -> None:
    assert DEFAULT_VENDORS.lookup(0x0403, 0x6001) is None
    assert DEFAULT_VENDORS.lookup(0x1A86, 0x7523) is None


def test_config_table_parses_hex_strings_and_products() -> None:
    table = vendor_table_from_config(
        [
            {"name": "Sunmi", "vendor_id": "0x3151", "verified": False, "source": "lsusb"},
            {"name": "Gertec", "vendor_id": "1753", "product_ids": ["c901", 0xC902]},
        ]
    )
    assert table.lookup(0x3151, 0x1234) is not None
    assert table.lookup(0x1753, 0xC902) is not None
    assert table.lookup(0x1753, 0xC903) is None


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ([], "empty table"),
        (["1753"], "expected a table"),
        ([{"name": "X", "vendor_id": "1753", "colour": "red"}], "unknown key 'colour'"),
        ([{"vendor_id": "1753"}], "usb_vendors[0].name"),
        ([{"name": "X"}], "vendor_id: missing"),
        ([{"name": "X", "vendor_id": "17g3"}], "not a hex USB id"),
        ([{"name": "X", "vendor_id": "12345"}], "not a hex USB id"),
        ([{"name": "X", "vendor_id": 0x10000}], "outside 0000-ffff"),
        ([{"name": "X", "vendor_id": True}], "expected a 4-digit hex"),
        ([{"name": "X", "vendor_id": 1.5}], "expected a 4-digit hex"),
        ([{"name": "X", "vendor_id": "1753", "product_ids": "c901"}], "list of hex ids"),
        ([{"name": "X", "vendor_id": "1753", "product_ids": []}], "empty list"),
        ([{"name": "X", "vendor_id": "1753", "product_ids": ["zz"]}], "product_ids[0]"),
        ([{"name": "X", "vendor_id": "1753", "verified": "yes"}], "verified"),
        ([{"name": "X", "vendor_id": "1753", "source": 3}], "source"),
    ],
)
def test_bad_config_entries_are_refused_with_the_key_named(
    entries: list[object], fragment: str
) -> None:
    with pytest.raises(VendorTableError) as error:
        vendor_table_from_config(entries)  # type: ignore[arg-type]
    assert fragment in str(error.value)
