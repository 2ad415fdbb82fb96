"""Lane health: each refusal and idle condition, the device-list cache and the PDV switch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from structlog.testing import capture_logs

from pointd.core.states import LaneCondition, Refusal
from pointd.terminal.errors import ModeChangeRefused, PdvSwitchFailed
from pointd.terminal.health import (
    DeviceCatalog,
    DeviceRecord,
    check_lane,
    lane_condition,
    switch_to_pdv,
)
from pointd.terminal.identity import IdentityProblem, Resolution, UsbPresence
from tests.support.clock import ManualClock

DEVICE_ID = "PAX_A910__SMARTPOS1234345545"


@dataclass(frozen=True)
class Device:
    id: str
    operating_mode: str | None
    store_id: str | int = "47792478"
    pos_id: int = 1


ATTACHED = Resolution(DEVICE_ID, UsbPresence.ATTACHED)
NO_USB_INFO = Resolution(DEVICE_ID, UsbPresence.UNKNOWN, pinned=True)
DETACHED = Resolution(DEVICE_ID, UsbPresence.DETACHED, IdentityProblem.DETACHED)
UNKNOWN = Resolution(None, UsbPresence.ATTACHED, IdentityProblem.UNKNOWN)
AMBIGUOUS = Resolution(None, UsbPresence.ATTACHED, IdentityProblem.AMBIGUOUS, ("A__1", "B__1"))


def record(mode: str = "PDV", device_id: str = DEVICE_ID) -> DeviceRecord:
    return DeviceRecord(Device(device_id, mode), age=30.0, stale=False)


def test_a_healthy_lane_may_sell() -> None:
    assert check_lane(ATTACHED, record(), True) is None
    assert check_lane(NO_USB_INFO, record(), True) is None  # no USB info: no refusal
    assert lane_condition(ATTACHED, record(), True) is LaneCondition.READY


@pytest.mark.parametrize(
    ("resolution", "device", "reachable", "refusal", "condition"),
    [
        (UNKNOWN, None, True, Refusal.TERMINAL_UNKNOWN, LaneCondition.TERMINAL_UNKNOWN),
        (AMBIGUOUS, None, True, Refusal.TERMINAL_UNKNOWN, LaneCondition.TERMINAL_UNKNOWN),
        (ATTACHED, None, True, Refusal.TERMINAL_UNKNOWN, LaneCondition.TERMINAL_UNKNOWN),
        (
            ATTACHED,
            record(device_id="OTHER__1"),
            True,
            Refusal.TERMINAL_UNKNOWN,
            LaneCondition.TERMINAL_UNKNOWN,
        ),
        (
            DETACHED,
            record(),
            True,
            Refusal.TERMINAL_NOT_CONNECTED,
            LaneCondition.TERMINAL_NOT_CONNECTED,
        ),
        (
            ATTACHED,
            record("STANDALONE"),
            True,
            Refusal.TERMINAL_NOT_PDV,
            LaneCondition.TERMINAL_NOT_PDV,
        ),
        (
            ATTACHED,
            record(),
            False,
            Refusal.CLOUD_UNAVAILABLE,
            LaneCondition.CARD_PAYMENTS_UNAVAILABLE,
        ),
    ],
)
def test_each_refusal_and_condition(
    resolution: Resolution,
    device: DeviceRecord | None,
    reachable: bool,
    refusal: Refusal,
    condition: LaneCondition,
) -> None:
    assert check_lane(resolution, device, reachable) is refusal
    assert lane_condition(resolution, device, reachable) is condition


def test_pdv_mode_is_read_without_regard_to_case_or_spaces() -> None:
    assert check_lane(ATTACHED, record(" pdv "), True) is None


def test_an_unlisted_mode_is_not_refused() -> None:
    unknown_mode = DeviceRecord(Device(DEVICE_ID, None), age=5.0, stale=False)
    assert check_lane(ATTACHED, unknown_mode, True) is None


async def test_the_cloud_clients_device_model_is_accepted() -> None:
    from pointd.cloud.models import Device as CloudModelDevice

    listed = CloudModelDevice.from_json({"id": DEVICE_ID, "operating_mode": "pdv"})
    unlisted = CloudModelDevice.from_json({"id": "GERTEC_MP35P__8701016695109435"})

    async def list_devices() -> list[CloudModelDevice]:
        return [listed, unlisted]

    catalog = DeviceCatalog(ManualClock(1000.0))
    assert await catalog.refresh(list_devices)
    found = catalog.lookup(DEVICE_ID)
    assert found is not None
    assert check_lane(ATTACHED, found, True) is None


def test_order_puts_the_fixable_cause_first() -> None:
    # Unplugged and cloud down: the cashier can fix the cable, so that is what is shown.
    assert check_lane(DETACHED, None, False) is Refusal.TERMINAL_NOT_CONNECTED
    # Cloud down also empties the device list: "unavailable" beats "unknown terminal".
    assert check_lane(UNKNOWN, None, False) is Refusal.CLOUD_UNAVAILABLE
    # Cloud down beats a wrong mode read from the last good list.
    assert check_lane(ATTACHED, record("STANDALONE"), False) is Refusal.CLOUD_UNAVAILABLE


def test_condition_returns_to_ready_when_causes_clear() -> None:
    assert lane_condition(ATTACHED, record(), False) is LaneCondition.CARD_PAYMENTS_UNAVAILABLE
    assert lane_condition(DETACHED, record(), True) is LaneCondition.TERMINAL_NOT_CONNECTED
    assert lane_condition(ATTACHED, record(), True) is LaneCondition.READY


def test_every_condition_maps_from_a_refusal() -> None:
    seen = {
        lane_condition(resolution, device, reachable)
        for resolution in (ATTACHED, DETACHED, UNKNOWN)
        for device in (None, record(), record("STANDALONE"))
        for reachable in (True, False)
    }
    assert seen == set(LaneCondition)


def fetcher(*results: Sequence[Device] | Exception):  # type: ignore[no-untyped-def]
    queue = list(results)

    async def fetch() -> Sequence[Device]:
        result = queue.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    return fetch


async def test_catalog_keeps_the_last_good_list_and_flags_staleness() -> None:
    clock = ManualClock(1000.0)
    catalog = DeviceCatalog(clock)
    assert not catalog.loaded
    assert catalog.lookup(DEVICE_ID) is None
    assert catalog.age() is None
    fetch = fetcher(
        [Device(DEVICE_ID, "PDV")],
        ConnectionError("https://api.example/devices?access_token=SECRET-TOKEN"),
        [Device(DEVICE_ID, "STANDALONE")],
    )
    assert await catalog.refresh(fetch)
    clock.now += 90
    found = catalog.lookup(DEVICE_ID)
    assert found is not None
    assert (found.age, found.stale) == (90.0, False)
    with capture_logs() as logs:
        assert not await catalog.refresh(fetch)
    assert catalog.stale
    assert catalog.last_error == "ConnectionError"
    assert "SECRET-TOKEN" not in repr(logs)
    clock.now += 10
    kept = catalog.lookup(DEVICE_ID)
    assert kept is not None
    assert (kept.device.operating_mode, kept.age, kept.stale) == ("PDV", 100.0, True)
    assert await catalog.refresh(fetch)
    fresh = catalog.lookup(DEVICE_ID)
    assert fresh is not None
    assert (fresh.device.operating_mode, fresh.age, fresh.stale) == ("STANDALONE", 0.0, False)
    assert catalog.last_error is None


async def test_a_failure_before_any_success_is_not_stale_but_empty() -> None:
    catalog = DeviceCatalog(ManualClock(1000.0))
    assert not await catalog.refresh(fetcher(TimeoutError()))
    assert (catalog.loaded, catalog.stale, catalog.devices) == (False, False, ())
    assert catalog.last_error == "TimeoutError"


@dataclass
class Nameless:
    operating_mode: str = "PDV"


@pytest.mark.parametrize(
    "bad",
    [
        "not a list",
        [Nameless()],
        [Device("", "PDV")],
        [Device(DEVICE_ID, 7)],  # type: ignore[arg-type]
    ],
)
async def test_a_malformed_list_does_not_replace_the_good_one(bad: object) -> None:
    catalog = DeviceCatalog(ManualClock(1000.0))
    assert await catalog.refresh(fetcher([Device(DEVICE_ID, "PDV")]))
    assert not await catalog.refresh(fetcher(bad))  # type: ignore[arg-type]
    assert catalog.last_error == "MalformedDeviceList"
    assert [device.id for device in catalog.devices] == [DEVICE_ID]


async def test_switch_to_pdv_calls_and_says_restart() -> None:
    calls: list[tuple[str, str]] = []

    async def set_mode(device_id: str, mode: str) -> object:
        calls.append((device_id, mode))
        return {"operating_mode": mode}

    result = await switch_to_pdv(DEVICE_ID, set_mode, enabled=True)
    assert calls == [(DEVICE_ID, "PDV")]
    assert result.switched
    assert "restart" in result.message.lower()


async def test_switch_to_pdv_disabled_makes_no_call() -> None:
    async def set_mode(device_id: str, mode: str) -> object:
        raise AssertionError("must not be called")

    result = await switch_to_pdv(DEVICE_ID, set_mode, enabled=False)
    assert not result.switched
    assert "switch_to_pdv" in result.message


async def test_switch_to_pdv_failure_is_a_terminal_error_without_secrets() -> None:
    async def set_mode(device_id: str, mode: str) -> object:
        raise PermissionError("403 Bearer APP_USR-SECRET")

    with pytest.raises(PdvSwitchFailed) as error:
        await switch_to_pdv(DEVICE_ID, set_mode, enabled=True)
    assert "SECRET" not in str(error.value)
    assert "asks again at the next device refresh" in str(error.value)
    assert not error.value.refused


async def test_a_refused_switch_says_what_to_fix_not_that_retrying_helps() -> None:
    async def set_mode(device_id: str, mode: str) -> object:
        raise ModeChangeRefused("Store id not found: nobody is logged into the device")

    with pytest.raises(PdvSwitchFailed) as error:
        await switch_to_pdv(DEVICE_ID, set_mode, enabled=True)
    assert error.value.refused
    message = str(error.value)
    assert "refused" in message
    assert "nobody is logged into the device" in message
    assert "log in on the terminal" in message
    assert "safe to retry" not in message
