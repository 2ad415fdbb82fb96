"""Whether a lane's terminal can take a card payment now, and the device-list cache behind it.

Theory of operation: ``check_lane`` runs before every sale and ``lane_condition`` drives the
idle display; both are pure and read the same inputs, so the display never promises what
the sale check would refuse. Checks run cheapest-to-fix first, so the cashier sees the
problem they can act on:

1. USB says the lane's terminal is unplugged  -> TERMINAL_NOT_CONNECTED
2. Mercado Pago cannot be reached             -> CLOUD_UNAVAILABLE / CARD_PAYMENTS_UNAVAILABLE
3. no cloud device for the lane (or several)  -> TERMINAL_UNKNOWN
4. the device is known not to be in PDV mode   -> TERMINAL_NOT_PDV

A terminal that another sale holds (two lanes may find the same terminal on USB) is
refused by the core at admission (TERMINAL_BUSY), not here.

Cloud reachability comes before identity because an unreachable cloud also leaves the
device list empty, and "unknown terminal" would then send the technician the wrong way.

The device list comes from a DeviceCatalog, which keeps the last good list when a refresh
fails and says how old it is. Operating modes change rarely (a mode change needs a terminal
restart), so a stale list is still the best knowledge there is; Mercado Pago rejects an
intent for a STANDALONE terminal anyway, so a stale "PDV" never moves money. For the same
reason a device listed without an operating mode is not refused: the create will tell.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from pointd.core.states import LaneCondition, Refusal
from pointd.terminal.errors import ModeChangeRefused, PdvSwitchFailed
from pointd.terminal.identity import CloudDevice, Resolution, UsbPresence

log = structlog.get_logger(__name__)

PDV_MODE = "PDV"

DeviceFetcher = Callable[[], Awaitable[Sequence[CloudDevice]]]
SetOperatingMode = Callable[[str, str], Awaitable[object]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One cloud device as last fetched, with how old that knowledge is."""

    device: CloudDevice
    age: float  # seconds since the list holding it was fetched
    stale: bool  # the latest refresh failed; this comes from the last good list


class DeviceCatalog:
    """The last good copy of Mercado Pago's device list, with its fetch time."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._devices: dict[str, CloudDevice] = {}
        self._fetched_at: float | None = None
        self._stale = False
        self._last_error: str | None = None

    @property
    def devices(self) -> tuple[CloudDevice, ...]:
        """The devices of the last good list (empty before the first success)."""
        return tuple(self._devices.values())

    @property
    def loaded(self) -> bool:
        """Whether any refresh has ever succeeded."""
        return self._fetched_at is not None

    @property
    def stale(self) -> bool:
        """Whether the latest refresh failed (the list is the last good one)."""
        return self._stale

    @property
    def last_error(self) -> str | None:
        """Why the latest refresh failed, without secrets; None after a success."""
        return self._last_error

    def age(self) -> float | None:
        """Seconds since the last good list was fetched, or None if never."""
        if self._fetched_at is None:
            return None
        return max(0.0, self._clock() - self._fetched_at)

    def lookup(self, device_id: str | None) -> DeviceRecord | None:
        """The cached record of ``device_id``, or None if the last good list lacks it."""
        if device_id is None:
            return None
        device = self._devices.get(device_id)
        age = self.age()
        if device is None or age is None:
            return None
        return DeviceRecord(device, age, self._stale)

    async def refresh(self, fetch: DeviceFetcher) -> bool:
        """Fetch the list; on any failure keep the last good one and flag it stale."""
        started = self._clock()
        try:
            fetched = await fetch()
            devices = _validated(fetched)
        except Exception as exc:
            # Any failure (network, HTTP, a malformed answer) must leave the last good list
            # in place: the exception's type is logged, not its text, which may quote a URL.
            self._stale = self.loaded
            self._last_error = type(exc).__name__
            log.warning(
                "device_list_refresh_failed",
                error=type(exc).__name__,
                kept_devices=len(self._devices),
                age=self.age(),
            )
            return False
        self._devices = devices
        self._fetched_at = started
        self._stale = False
        self._last_error = None
        log.info("device_list_refreshed", devices=len(devices))
        return True


class MalformedDeviceList(ValueError):
    """The device list holds an entry without a usable id, or with a non-text mode."""


def _validated(fetched: object) -> dict[str, CloudDevice]:
    if isinstance(fetched, str | bytes) or not isinstance(fetched, Sequence):
        raise MalformedDeviceList("device list is not a sequence")
    devices: dict[str, CloudDevice] = {}
    for position, device in enumerate(fetched):
        device_id = getattr(device, "id", None)
        mode = getattr(device, "operating_mode", None)
        if not isinstance(device_id, str) or not device_id.strip():
            raise MalformedDeviceList(f"entry {position} has no device id")
        if mode is not None and not isinstance(mode, str):
            raise MalformedDeviceList(f"entry {position} ({device_id}) has a bad operating mode")
        devices[device_id] = device
    return devices


def _known_not_pdv(record: DeviceRecord) -> bool:
    mode = record.device.operating_mode
    return mode is not None and mode.strip().upper() != PDV_MODE


def check_lane(
    resolution: Resolution,
    cloud_device: DeviceRecord | None,
    cloud_reachable: bool,
) -> Refusal | None:
    """Why the lane's terminal cannot take a sale now, or None when it can (pure).

    Whether another sale holds the terminal is not judged here: the core decides that at
    admission (``Refusal.TERMINAL_BUSY``), on the state it commits the sale to.
    """
    if resolution.presence is UsbPresence.DETACHED:
        return Refusal.TERMINAL_NOT_CONNECTED
    if not cloud_reachable:
        return Refusal.CLOUD_UNAVAILABLE
    if resolution.device_id is None or cloud_device is None:
        return Refusal.TERMINAL_UNKNOWN
    if cloud_device.device.id != resolution.device_id:
        return Refusal.TERMINAL_UNKNOWN
    if _known_not_pdv(cloud_device):
        return Refusal.TERMINAL_NOT_PDV
    return None


def lane_condition(
    resolution: Resolution,
    cloud_device: DeviceRecord | None,
    cloud_reachable: bool,
) -> LaneCondition:
    """The lane's standing for the idle display; READY again as soon as causes clear (pure)."""
    refusal = check_lane(resolution, cloud_device, cloud_reachable)
    if refusal is None:
        return LaneCondition.READY
    return _CONDITION_FOR_REFUSAL[refusal]


_CONDITION_FOR_REFUSAL = {
    Refusal.TERMINAL_NOT_CONNECTED: LaneCondition.TERMINAL_NOT_CONNECTED,
    Refusal.CLOUD_UNAVAILABLE: LaneCondition.CARD_PAYMENTS_UNAVAILABLE,
    Refusal.TERMINAL_UNKNOWN: LaneCondition.TERMINAL_UNKNOWN,
    Refusal.TERMINAL_NOT_PDV: LaneCondition.TERMINAL_NOT_PDV,
}


@dataclass(frozen=True, slots=True)
class PdvSwitchResult:
    """What happened to a request to put a terminal in PDV mode."""

    switched: bool
    message: str


async def switch_to_pdv(
    device_id: str, set_operating_mode: SetOperatingMode, *, enabled: bool
) -> PdvSwitchResult:
    """Ask Mercado Pago to put ``device_id`` in PDV mode if the configuration allows it.

    Raises PdvSwitchFailed when the call fails: ``refused`` when Mercado Pago refused it
    (``set_operating_mode`` raised ModeChangeRefused; the message says what to fix), else
    the request may not have got through and asking again later is harmless.
    """
    if not enabled:
        return PdvSwitchResult(
            False,
            f"Terminal {device_id} is not in PDV mode and automatic switching is off "
            "(terminal.switch_to_pdv). Switch it in the Mercado Pago app or enable the option.",
        )
    try:
        await set_operating_mode(device_id, PDV_MODE)
    except ModeChangeRefused as exc:
        log.warning("pdv_switch_refused", device_id=device_id, reason=str(exc))
        raise PdvSwitchFailed(
            f"Mercado Pago refused to switch {device_id} to PDV: {exc}. Fix that first "
            "(log in on the terminal; check its store and POS in the Mercado Pago account); "
            "pointd asks again at the next device refresh.",
            refused=True,
        ) from exc
    except Exception as exc:
        log.warning("pdv_switch_failed", device_id=device_id, error=type(exc).__name__)
        raise PdvSwitchFailed(
            f"switching {device_id} to PDV did not get an answer ({type(exc).__name__}); "
            "pointd asks again at the next device refresh (asking twice is harmless)"
        ) from exc
    log.info("pdv_switch_requested", device_id=device_id)
    return PdvSwitchResult(
        True,
        f"Terminal {device_id} was switched to PDV mode. Restart the terminal: the change "
        "applies only after a restart.",
    )
