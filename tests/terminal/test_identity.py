"""Identity: serial matching, pins, ambiguity and detachment are reported, never guessed."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from pointd.terminal.discovery import UsbDevice
from pointd.terminal.identity import (
    MIN_SERIAL_MATCH_LENGTH,
    IdentityProblem,
    UsbPresence,
    resolve_lane_terminal,
    serial_part,
    serials_match,
)


@dataclass(frozen=True)
class Device:
    id: str
    operating_mode: str = "PDV"
    store_id: str = "47792478"
    pos_id: int = 1


PAX = Device("PAX_A910__SMARTPOS1234345545")
GERTEC = Device("GERTEC_MP35P__8701016695109435")
INGENICO = Device("INGENICO_MOVE2500__ING-ARG-1123345670")
CLOUD = [PAX, GERTEC, INGENICO]


def usb(serial: str | None, path: str = "1-1") -> UsbDevice:
    return UsbDevice(0x2FB8, 0x2201, "PAX Technology", path, serial, "A910", "PAX")


def test_serial_part_of_ids() -> None:
    assert serial_part(PAX.id) == "SMARTPOS1234345545"
    assert serial_part("88731317_INGENICO_MOVE2500_X") is None  # opaque form: no "__"
    assert serial_part("MODEL__") is None
    assert serial_part("A__B__C123456") == "C123456"


def test_suffix_matching_rules() -> None:
    assert serials_match("1234345545", PAX.id)  # label tail
    assert serials_match("smartpos1234345545", PAX.id)  # case-insensitive
    assert serials_match("XX-SMARTPOS1234345545", PAX.id)  # cloud serial is the tail
    assert not serials_match("45545", PAX.id)  # too short to be a tail
    assert not serials_match("1234345546", PAX.id)
    assert not serials_match("", PAX.id)
    assert not serials_match("1234345545", "opaque-id-1234345545")
    assert serials_match("ab12", "M__AB12")  # short serials match only exactly


@given(st.text(alphabet="0123456789ABCDEFabcdef-", min_size=MIN_SERIAL_MATCH_LENGTH, max_size=24))
def test_any_label_serial_matches_its_own_id_in_any_case(serial: str) -> None:
    device_id = f"MODEL_X__{serial}"
    assert serials_match(serial.lower(), device_id)
    assert serials_match(serial.upper(), device_id)
    assert serials_match(f"PREFIX{serial}", device_id)


@given(st.text(min_size=0, max_size=MIN_SERIAL_MATCH_LENGTH - 1), st.text(min_size=1))
def test_a_short_serial_never_matches_a_different_one(short: str, other: str) -> None:
    if short.strip().casefold() != other.strip().casefold():
        assert not serials_match(short, f"M__{other}")


def test_pin_wins_over_usb_and_cloud() -> None:
    result = resolve_lane_terminal("SOME_OTHER__DEVICE99", None, [usb("1234345545")], CLOUD)
    assert result.device_id == "SOME_OTHER__DEVICE99"
    assert result.pinned
    assert result.presence is UsbPresence.UNKNOWN  # USB cannot tell about that device
    assert result.problem is None


def test_pin_presence_by_matching_usb_serial() -> None:
    attached = resolve_lane_terminal(PAX.id, None, [usb("1234345545")], CLOUD)
    assert (attached.device_id, attached.presence) == (PAX.id, UsbPresence.ATTACHED)
    assert attached.usb_device is not None


def test_pin_with_lane_serial_reports_detached() -> None:
    detached = resolve_lane_terminal(PAX.id, "1234345545", [], CLOUD)
    assert detached.device_id == PAX.id
    assert (detached.presence, detached.problem) == (UsbPresence.DETACHED, IdentityProblem.DETACHED)
    attached = resolve_lane_terminal(PAX.id, "1234345545", [usb("1234345545")], CLOUD)
    assert attached.presence is UsbPresence.ATTACHED


def test_lane_serial_resolves_one_candidate() -> None:
    result = resolve_lane_terminal(None, " 8701016695109435 ", [usb("8701016695109435")], CLOUD)
    assert (result.device_id, result.problem) == (GERTEC.id, None)
    assert result.presence is UsbPresence.ATTACHED


def test_lane_serial_detached_still_names_the_device() -> None:
    result = resolve_lane_terminal(None, "8701016695109435", [usb("1234345545")], CLOUD)
    assert result.device_id == GERTEC.id
    assert (result.presence, result.problem) == (UsbPresence.DETACHED, IdentityProblem.DETACHED)


def test_lane_serial_with_two_cloud_candidates_is_ambiguous() -> None:
    twin = Device("PAX_A920__XX1234345545")
    result = resolve_lane_terminal(None, "1234345545", [usb("1234345545")], [*CLOUD, twin])
    assert result.device_id is None
    assert result.problem is IdentityProblem.AMBIGUOUS
    assert result.candidates == tuple(sorted([PAX.id, twin.id]))


def test_lane_serial_unknown_to_the_cloud() -> None:
    result = resolve_lane_terminal(None, "99999999", [usb("99999999")], CLOUD)
    assert (result.device_id, result.problem) == (None, IdentityProblem.UNKNOWN)
    assert result.presence is UsbPresence.ATTACHED


def test_automatic_single_terminal() -> None:
    result = resolve_lane_terminal(None, None, [usb("1123345670")], CLOUD)
    assert (result.device_id, result.problem) == (INGENICO.id, None)


def test_automatic_two_terminals_is_ambiguous_not_a_guess() -> None:
    devices = [usb("1123345670", "1-1"), usb("8701016695109435", "1-2")]
    result = resolve_lane_terminal(None, None, devices, CLOUD)
    assert result.device_id is None
    assert result.problem is IdentityProblem.AMBIGUOUS
    assert set(result.candidates) == {INGENICO.id, GERTEC.id}


def test_automatic_with_nothing_plugged_is_unknown() -> None:
    result = resolve_lane_terminal(None, None, [], CLOUD)
    assert (result.device_id, result.problem) == (None, IdentityProblem.UNKNOWN)
    assert result.presence is UsbPresence.UNKNOWN


def test_automatic_with_a_terminal_that_hides_its_serial() -> None:
    result = resolve_lane_terminal(None, None, [usb(None)], CLOUD)
    assert (result.device_id, result.problem) == (None, IdentityProblem.NO_SERIAL_ON_USB)


def test_blank_configuration_counts_as_absent() -> None:
    result = resolve_lane_terminal("  ", "  ", [usb("1123345670")], CLOUD)
    assert result.device_id == INGENICO.id
    assert not result.pinned


@given(
    pin=st.one_of(st.none(), st.sampled_from([PAX.id, "OPAQUE-1"])),
    lane_serial=st.one_of(st.none(), st.sampled_from(["1234345545", "8701016695109435", "0"])),
    plugged=st.lists(st.sampled_from(["1234345545", "8701016695109435", "1123345670", None])),
    twin=st.booleans(),
)
def test_resolution_invariants(
    pin: str | None, lane_serial: str | None, plugged: list[str | None], twin: bool
) -> None:
    cloud = [*CLOUD, Device("PAX_A920__ZZ1234345545")] if twin else CLOUD
    devices = [usb(serial, f"1-{n}") for n, serial in enumerate(plugged, start=1)]
    result = resolve_lane_terminal(pin, lane_serial, devices, cloud)
    if pin:
        assert result.device_id == pin
    if result.problem is IdentityProblem.AMBIGUOUS:
        assert result.device_id is None
        assert len(result.candidates) >= 2
    if result.device_id is not None and not pin:
        assert result.device_id in {device.id for device in cloud}
    if result.presence is UsbPresence.DETACHED:
        assert lane_serial is not None
        assert all(device.serial != lane_serial for device in devices)
