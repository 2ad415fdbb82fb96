"""The daemon's terminal service: which terminal serves each lane and whether a sale may start.

Theory of operation: three inputs decide a lane's standing. They are the USB view (owned
by a TerminalWatch), Mercado Pago's device list (cached in a DeviceCatalog) and whether
Mercado Pago can be reached. Whether another sale holds the terminal is not one of them:
the core judges that when it admits the sale. Nothing here is cached between decisions.
``check`` and ``condition`` resolve the lane again from the current inputs with the pure
functions of pointd.terminal, so a sale is never judged on an old view.

What is kept is the last condition announced per lane, so ``on_condition`` fires only
when something changed. Recomputation runs on every trigger that can change a condition:
a refresh of the device list, a USB change (``usb_changed``, wired as the watch's
on_change) and a reachability report from the engine (``set_cloud_reachable``). Nothing
is announced before the first refresh has run. Until then there is no device list, and
every lane would flash "terminal unknown" at start-up.

When USB cannot tell anything, presence is UNKNOWN, never "detached". That is the case
with no watch (no pyusb backend, or a PC where the terminals are not on USB) and before
the watch's first successful scan. A lane's configured serial is then still matched
against the device list. It identifies the terminal just as a pin does, and presence only
ever blocks a sale, it never moves money.

A refresh that fails keeps the last good list (the catalog's rule) and marks Mercado Pago
unreachable, and the lanes show "card payments unavailable". A later success marks it
reachable again, so the display returns to READY without anyone acting. When the option
is on, a lane's terminal that the list shows in STANDALONE mode is switched to PDV once
per device per run. The switch applies only after the terminal restarts, and the list
keeps saying STANDALONE until then, so asking again on every refresh would achieve
nothing. A failed switch is retried at the next refresh, because repeating it is
harmless; one Mercado Pago refused (nobody logged in on the terminal) says what a person
must fix instead (``refusing_mode_setter`` turns the cloud's refusal into
ModeChangeRefused).

Each refresh is compared with the one before it, per lane: a terminal whose mode changed
(PDV <-> STANDALONE), one gone from (or back in) the account's list, and a switch to PDV
requested or refused are kept as the lane's ``last_change`` with its time, logged, and
reported to ``on_change`` so that ``pointctl terminals`` and the ``terminal`` events show
what happened and when (the newest CHANGES_KEPT per lane).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog

from pointd.cloud.errors import Rejected
from pointd.core.states import LaneCondition, Refusal
from pointd.terminal import (
    DeviceCatalog,
    DeviceRecord,
    ModeChangeRefused,
    PdvSwitchFailed,
    Resolution,
    TerminalChange,
    TerminalWatch,
    UsbDevice,
    UsbPresence,
    check_lane,
    lane_condition,
    resolve_lane_terminal,
    switch_to_pdv,
)
from pointd.terminal.identity import IdentityProblem

log = structlog.get_logger(__name__)

STANDALONE_MODE = "STANDALONE"
# Changes a device refresh saw, kept per lane for pointctl terminals.
CHANGES_KEPT = 5
# First retry after a failed device-list fetch; doubles up to the refresh interval.
REFRESH_RETRY_INITIAL = 2.0

DeviceListFetcher = Callable[[], Awaitable[Sequence[Any]]]
ConditionCallback = Callable[[int, LaneCondition], None]
OperatingModeSetter = Callable[[str, str], Awaitable[Any]]
Sleep = Callable[[float], Awaitable[None]]


class UnknownLane(LookupError):
    """A lane number that is not in the configuration."""


@dataclass(frozen=True, slots=True)
class LaneSpec:
    """One lane's terminal configuration: an optional pin and an optional USB serial."""

    number: int
    terminal: str | None = None
    terminal_serial: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.number, bool) or not isinstance(self.number, int) or self.number < 1:
            raise ValueError(f"lane number must be a positive integer, got {self.number!r}")
        for name in ("terminal", "terminal_serial"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"lane {self.number}: {name} must be non-empty text or unset")


def _validated_lanes(lanes: Sequence[LaneSpec]) -> dict[int, LaneSpec]:
    if not lanes:
        raise ValueError("at least one lane is required")
    by_number: dict[int, LaneSpec] = {}
    pins: set[str] = set()
    serials: set[str] = set()
    for spec in lanes:
        if not isinstance(spec, LaneSpec):
            raise TypeError(f"lanes must be LaneSpec, got {type(spec).__name__}")
        if spec.number in by_number:
            raise ValueError(f"lane {spec.number} is configured twice")
        by_number[spec.number] = spec
        if spec.terminal is not None:
            pin = spec.terminal.strip()
            if pin in pins:
                raise ValueError(f"terminal {pin} is pinned to more than one lane")
            pins.add(pin)
        if spec.terminal_serial is not None:
            serial = spec.terminal_serial.strip().casefold()
            if serial in serials:
                raise ValueError(f"terminal serial {serial} is given to more than one lane")
            serials.add(serial)
    return by_number


def _json_scalar(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _usb_summary(device: UsbDevice | None) -> dict[str, Any] | None:
    if device is None:
        return None
    return {
        "bus_path": device.bus_path,
        "usb_id": device.usb_id,
        "vendor": device.vendor_name,
        "serial": device.serial,
        "product": device.product,
    }


class LaneTerminals:
    """Which terminal serves each lane, and whether a sale may start there now."""

    def __init__(
        self,
        lanes: Sequence[LaneSpec],
        *,
        catalog: DeviceCatalog,
        fetch_devices: DeviceListFetcher,
        on_condition: ConditionCallback,
        watch: TerminalWatch | None,
        refresh_interval: float,
        sleep: Sleep = asyncio.sleep,
        switch_to_pdv: bool = False,
        set_operating_mode: OperatingModeSetter | None = None,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if (
            isinstance(refresh_interval, bool)
            or not isinstance(refresh_interval, int | float)
            or not math.isfinite(refresh_interval)
            or refresh_interval <= 0
        ):
            raise ValueError("refresh_interval must be a positive number of seconds")
        if switch_to_pdv and set_operating_mode is None:
            raise ValueError("switch_to_pdv needs set_operating_mode")
        self._lanes = _validated_lanes(lanes)
        self._catalog = catalog
        self._fetch_devices = fetch_devices
        self._on_condition = on_condition
        self._watch = watch
        self._refresh_interval = float(refresh_interval)
        self._sleep = sleep
        self._switch_to_pdv = switch_to_pdv
        self._set_operating_mode = set_operating_mode
        self._cloud_reachable = True
        self._refreshed_once = False
        self._announced: dict[int, LaneCondition] = {}
        self._pdv_switched: set[str] = set()
        self._pdv_messages: dict[str, str] = {}
        self._wall_clock = wall_clock
        self._on_change = on_change
        # Per lane, newest first: when a device refresh saw its terminal change, and what.
        self._changes: dict[int, deque[tuple[float, str]]] = {}

    @property
    def lanes(self) -> tuple[int, ...]:
        """The configured lane numbers, ascending."""
        return tuple(sorted(self._lanes))

    @property
    def cloud_reachable(self) -> bool:
        """Whether Mercado Pago was reachable at the latest report or refresh."""
        return self._cloud_reachable

    def check(self, lane: int) -> tuple[str | None, Refusal | None]:
        """The terminal id to use for a sale on ``lane`` now, and why its terminal cannot take
        one (or None). Whether another sale holds that terminal is the core's to judge."""
        resolution, record = self._assess(self._spec(lane))
        return resolution.device_id, check_lane(resolution, record, self._cloud_reachable)

    def condition(self, lane: int) -> LaneCondition:
        """The lane's standing for the idle display, from the current inputs."""
        resolution, record = self._assess(self._spec(lane))
        return lane_condition(resolution, record, self._cloud_reachable)

    def set_cloud_reachable(self, reachable: bool) -> None:
        """Record whether Mercado Pago answers (reported by the engine) and update the lanes."""
        if not isinstance(reachable, bool):
            raise TypeError("reachable must be a bool")
        if reachable != self._cloud_reachable:
            log.info("cloud_reachability_changed", reachable=reachable)
        self._cloud_reachable = reachable
        self._recompute()

    def usb_changed(self, change: TerminalChange) -> None:
        """The watch's on_change: terminals were plugged or pulled, so update the lanes."""
        self._recompute()

    async def refresh(self) -> bool:
        """Fetch the device list once; a failure keeps the last good list. Update the lanes."""
        if self._watch is not None and not self._watch.scanned_once:
            # Until the watch has scanned, USB "cannot tell". Its first scan reports no
            # change when the bus is empty, so without scanning here the lanes could be
            # announced from that guess and never corrected until the next refresh.
            self._watch.rescan()
        loaded = self._catalog.loaded
        before = self._lane_devices()
        fetched = await self._catalog.refresh(self._fetch_devices)
        self._cloud_reachable = fetched
        self._refreshed_once = True
        if fetched and loaded:
            self._note_list_changes(before, self._lane_devices())
        self._recompute()
        if fetched:
            await self._offer_pdv_switches()
        return fetched

    def _lane_devices(self) -> dict[int, tuple[str | None, str | None, bool]]:
        """Per lane: its terminal id, that terminal's mode, and whether the list has it."""
        devices: dict[int, tuple[str | None, str | None, bool]] = {}
        for number in self.lanes:
            resolution, record = self._assess(self._lanes[number])
            mode = record.device.operating_mode if record is not None else None
            devices[number] = (resolution.device_id, mode, record is not None)
        return devices

    def _note_list_changes(
        self,
        before: dict[int, tuple[str | None, str | None, bool]],
        after: dict[int, tuple[str | None, str | None, bool]],
    ) -> None:
        for number, (device_id, mode, listed) in after.items():
            old_id, old_mode, old_listed = before.get(number, (None, None, False))
            name = device_id or old_id
            if old_listed and not listed:
                self._note(number, f"terminal {name} gone from the account's device list")
            elif listed and not old_listed and old_id is not None:
                self._note(number, f"terminal {name} back in the account's device list")
            elif listed and old_listed and device_id == old_id and mode != old_mode:
                self._note(number, f"terminal {name} mode {old_mode or '?'} -> {mode or '?'}")

    def _note(self, lane: int, what: str) -> None:
        changes = self._changes.setdefault(lane, deque(maxlen=CHANGES_KEPT))
        if changes and changes[0][1] == what:
            return  # the same refusal at every refresh is one change, not many
        changes.appendleft((self._wall_clock(), what))
        log.warning("terminal_changed", lane=lane, change=what)
        if self._on_change is not None:
            self._on_change()

    async def run(self, *, refreshed: bool | None = None) -> None:
        """Refresh now (unless ``refreshed`` says how the caller's refresh went), then again.

        After a good refresh the next one is ``refresh_interval`` away; after a failure it
        comes sooner, doubling from REFRESH_RETRY_INITIAL, so that a start-up during a
        Mercado Pago hiccup does not leave the lanes without their terminals for minutes.
        The watch is not run here: run it as its own task with ``on_change`` wired to
        ``usb_changed``.
        """
        failures = 0
        while True:
            fetched = await self.refresh() if refreshed is None else refreshed
            refreshed = None
            failures = 0 if fetched else failures + 1
            retry = REFRESH_RETRY_INITIAL * 2.0 ** min(failures - 1, 16)
            await self._sleep(
                self._refresh_interval if fetched else min(self._refresh_interval, retry)
            )

    def snapshot(self) -> list[dict[str, Any]]:
        """Each lane's terminal, presence, mode, problem and condition, JSON-able."""
        age = self._catalog.age()
        rows: list[dict[str, Any]] = []
        for number in self.lanes:
            resolution, record = self._assess(self._lanes[number])
            device = record.device if record is not None else None
            rows.append(
                {
                    "lane": number,
                    "terminal": resolution.device_id,
                    "pinned": resolution.pinned,
                    "presence": resolution.presence.value,
                    "usb": _usb_summary(resolution.usb_device),
                    "mode": device.operating_mode if device is not None else None,
                    "store_id": _json_scalar(getattr(device, "store_id", None)),
                    "pos_id": _json_scalar(getattr(device, "pos_id", None)),
                    "problem": resolution.problem.value if resolution.problem else None,
                    "candidates": list(resolution.candidates),
                    "condition": lane_condition(resolution, record, self._cloud_reachable).value,
                    "cloud_reachable": self._cloud_reachable,
                    "catalog_loaded": self._catalog.loaded,
                    "catalog_age": round(age, 1) if age is not None else None,
                    "catalog_stale": self._catalog.stale,
                    "catalog_error": self._catalog.last_error,
                    "pdv_switch": self._pdv_messages.get(resolution.device_id or ""),
                    "changes": [
                        {"at": at, "change": what} for at, what in self._changes.get(number, ())
                    ],
                }
            )
        return rows

    def _spec(self, lane: int) -> LaneSpec:
        try:
            return self._lanes[lane]
        except (KeyError, TypeError):
            known = ", ".join(str(number) for number in self.lanes)
            raise UnknownLane(f"lane {lane!r} is not configured (lanes: {known})") from None

    def _usb_devices(self) -> tuple[UsbDevice, ...] | None:
        if self._watch is None or not self._watch.scanned_once:
            return None
        return self._watch.view.devices

    def _resolve(self, spec: LaneSpec) -> Resolution:
        cloud = self._catalog.devices
        usb = self._usb_devices()
        if usb is not None:
            return resolve_lane_terminal(spec.terminal, spec.terminal_serial, usb, cloud)
        if spec.terminal is not None:
            return resolve_lane_terminal(spec.terminal, None, (), cloud)
        resolution = resolve_lane_terminal(None, spec.terminal_serial, (), cloud)
        problem = None if resolution.problem is IdentityProblem.DETACHED else resolution.problem
        return replace(resolution, presence=UsbPresence.UNKNOWN, problem=problem)

    def _assess(self, spec: LaneSpec) -> tuple[Resolution, DeviceRecord | None]:
        resolution = self._resolve(spec)
        return resolution, self._catalog.lookup(resolution.device_id)

    def _recompute(self) -> None:
        if not self._refreshed_once:
            return
        for number in self.lanes:
            condition = self.condition(number)
            previous = self._announced.get(number)
            if condition is previous:
                continue
            # Recorded before the callback so a failing callback is not called again for
            # the same change by the next trigger.
            self._announced[number] = condition
            log.info(
                "lane_condition_changed",
                lane=number,
                condition=condition.value,
                previous=previous.value if previous is not None else None,
            )
            self._on_condition(number, condition)

    async def _offer_pdv_switches(self) -> None:
        standalone: dict[str, int] = {}
        for number in self.lanes:
            _resolution, record = self._assess(self._lanes[number])
            mode = record.device.operating_mode if record is not None else None
            if record is not None and mode is not None and mode.strip().upper() == STANDALONE_MODE:
                standalone.setdefault(record.device.id, number)
        for device_id, lane in standalone.items():
            if device_id in self._pdv_switched:
                continue
            await self._switch_one(device_id, lane)

    async def _switch_one(self, device_id: str, lane: int) -> None:
        setter = self._set_operating_mode or _switching_off
        if not self._switch_to_pdv:
            if device_id not in self._pdv_messages:
                result = await switch_to_pdv(device_id, setter, enabled=False)
                self._pdv_messages[device_id] = result.message
                log.warning("terminal_not_pdv", lane=lane, device_id=device_id)
            return
        try:
            result = await switch_to_pdv(device_id, setter, enabled=True)
        except PdvSwitchFailed as exc:
            self._pdv_messages[device_id] = str(exc)
            if exc.refused:
                self._note(lane, str(exc))
            return
        self._pdv_switched.add(device_id)
        self._pdv_messages[device_id] = result.message
        self._note(lane, result.message)
        log.warning(
            "terminal_restart_needed", lane=lane, device_id=device_id, detail=result.message
        )


def refusing_mode_setter(set_operating_mode: OperatingModeSetter) -> OperatingModeSetter:
    """``set_operating_mode`` with Mercado Pago's refusals raised as ModeChangeRefused.

    A refusal (403 nobody logged in on the terminal, 412 only one PDV terminal per store
    and POS, …) needs a person before asking again helps; the terminal layer says so
    instead of "try again".
    """

    async def set_mode(device_id: str, mode: str) -> Any:
        try:
            return await set_operating_mode(device_id, mode)
        except Rejected as exc:
            raise ModeChangeRefused(f"HTTP {exc.status} {exc.error}: {exc.message}") from exc

    return set_mode


async def _switching_off(device_id: str, mode: str) -> None:
    """Stands in for the mode setter when switching is off; switch_to_pdv never calls it."""
    raise PdvSwitchFailed(f"switching {device_id} to {mode} is turned off")
