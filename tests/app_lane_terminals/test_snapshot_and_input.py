"""The per-lane view for ``pointctl terminals``, and bad configuration refused up front."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pointd.app.lane_terminals import LaneSpec, LaneTerminals
from pointd.sim.usb.bus import FakeUsbBus
from pointd.terminal import DeviceCatalog

from .conftest import GERTEC, GERTEC_SERIAL, PAX, Build, Device


async def test_the_snapshot_names_terminal_presence_mode_and_catalog_age(
    build: Build, bus: FakeUsbBus
) -> None:
    h = build(
        LaneSpec(2, terminal=PAX),
        LaneSpec(1, terminal_serial=GERTEC_SERIAL),
        devices=[Device(GERTEC, "PDV"), Device(PAX, "STANDALONE", store_id=None, pos_id=None)],
    )
    bus.plug("gertec-mp35p", port=(2,))
    await h.lanes.refresh()
    h.clock.now += 42.04
    rows = h.lanes.snapshot()
    assert json.loads(json.dumps(rows)) == rows
    assert rows[0] == {
        "lane": 1,
        "terminal": GERTEC,
        "pinned": False,
        "presence": "attached",
        "usb": {
            "bus_path": "1-2",
            "usb_id": rows[0]["usb"]["usb_id"],
            "vendor": rows[0]["usb"]["vendor"],
            "serial": GERTEC_SERIAL,
            "product": rows[0]["usb"]["product"],
        },
        "mode": "PDV",
        "store_id": "store-1",
        "pos_id": 7,
        "problem": None,
        "candidates": [GERTEC],
        "condition": "ready",
        "cloud_reachable": True,
        "catalog_loaded": True,
        "catalog_age": 42.0,
        "catalog_stale": False,
        "catalog_error": None,
        "pdv_switch": None,
        "changes": [],
    }
    pax = rows[1]
    assert (pax["lane"], pax["terminal"], pax["pinned"]) == (2, PAX, True)
    assert (pax["presence"], pax["usb"], pax["mode"]) == ("unknown", None, "STANDALONE")
    assert (pax["store_id"], pax["pos_id"]) == (None, None)
    assert pax["condition"] == "terminal_not_pdv"
    assert "automatic switching is off" in pax["pdv_switch"]


async def test_the_snapshot_before_any_refresh_says_the_list_was_never_loaded(
    build: Build,
) -> None:
    row = build(LaneSpec(1)).lanes.snapshot()[0]
    assert (row["catalog_loaded"], row["catalog_age"], row["terminal"]) == (False, None, None)
    assert row["condition"] == "terminal_unknown"


async def test_the_snapshot_never_quotes_the_failed_request(build: Build, bus: FakeUsbBus) -> None:
    h = build(LaneSpec(1), devices=[Device(GERTEC, "PDV")])
    h.cloud.devices_failing = True
    await h.lanes.refresh()
    assert "secret-path" not in json.dumps(h.lanes.snapshot())


async def test_odd_store_and_pos_values_are_made_json_able(build: Build, bus: FakeUsbBus) -> None:
    h = build(LaneSpec(1, terminal=GERTEC), devices=[Device(GERTEC, "PDV", store_id=b"x")])
    await h.lanes.refresh()
    row = json.loads(json.dumps(h.lanes.snapshot()))[0]
    assert row["store_id"] == "b'x'"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"number": 0}, "positive integer"),
        ({"number": True}, "positive integer"),
        ({"number": "1"}, "positive integer"),
        ({"number": 1, "terminal": "  "}, "terminal must be"),
        ({"number": 1, "terminal_serial": ""}, "terminal_serial must be"),
        ({"number": 1, "terminal": 5}, "terminal must be"),
    ],
)
def test_a_bad_lane_spec_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LaneSpec(**kwargs)


async def _no_devices() -> list[Any]:
    return []


def _lanes(specs: Any, **overrides: Any) -> LaneTerminals:
    arguments: dict[str, Any] = {
        "catalog": DeviceCatalog(lambda: 0.0),
        "fetch_devices": _no_devices,
        "on_condition": lambda _lane, _condition: None,
        "watch": None,
        "refresh_interval": 300.0,
    }
    arguments.update(overrides)
    return LaneTerminals(specs, **arguments)


@pytest.mark.parametrize(
    ("specs", "overrides", "error", "message"),
    [
        ([], {}, ValueError, "at least one lane"),
        ([LaneSpec(1), LaneSpec(1)], {}, ValueError, "configured twice"),
        ([LaneSpec(1, GERTEC), LaneSpec(2, f" {GERTEC}")], {}, ValueError, "more than one"),
        (
            [LaneSpec(1, terminal_serial="ABC123"), LaneSpec(2, terminal_serial="abc123")],
            {},
            ValueError,
            "more than one",
        ),
        ([(1, None, None)], {}, TypeError, "LaneSpec"),
        ([LaneSpec(1)], {"refresh_interval": 0}, ValueError, "refresh_interval"),
        ([LaneSpec(1)], {"refresh_interval": float("nan")}, ValueError, "refresh_interval"),
        ([LaneSpec(1)], {"refresh_interval": "300"}, ValueError, "refresh_interval"),
        ([LaneSpec(1)], {"switch_to_pdv": True}, ValueError, "set_operating_mode"),
    ],
)
def test_a_bad_configuration_is_refused_at_construction(
    specs: Any, overrides: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        _lanes(specs, **overrides)


def test_reachability_must_be_a_bool() -> None:
    lanes = _lanes([LaneSpec(1)])
    with pytest.raises(TypeError, match="bool"):
        lanes.set_cloud_reachable("no")  # type: ignore[arg-type]
    assert lanes.cloud_reachable is True
    assert lanes.lanes == (1,)
