"""Fixtures for the lane terminal service: a simulated USB bus, a fake device list, a clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pointd.app.lane_terminals import LaneSpec, LaneTerminals
from pointd.core.states import LaneCondition
from pointd.sim.usb.bus import FakeUsbBus
from pointd.terminal import DEFAULT_VENDORS, DeviceCatalog, TerminalChange, TerminalWatch
from tests.support.clock import ManualClock
from tests.support.cloud import FakeCloud

USB_FIXTURES = Path(__file__).resolve().parents[2] / "hardware-fixtures" / "usb"

GERTEC = "GERTEC_MP35P__8701016695109435"
GERTEC_SERIAL = "8701016695109435"
PAX = "PAX_A910__SMARTPOS1234345545"
PAX_SERIAL = "1234345545"
INGENICO = "INGENICO_MOVE2500__1123345670"


@dataclass(frozen=True)
class Device:
    """An entry of the cloud's device list, shaped like pointd.cloud.port.TerminalView."""

    id: str
    operating_mode: str | None
    store_id: object = "store-1"
    pos_id: object = 7


class GatedSleep:
    """An injected sleep that records its delays and returns only when released."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._gate: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await self._gate.get()

    def release(self) -> None:
        self._gate.put_nowait(None)


@dataclass
class Harness:
    """A LaneTerminals with its collaborators exposed to the test."""

    lanes: LaneTerminals
    cloud: FakeCloud
    clock: ManualClock
    watch: TerminalWatch | None
    sleep: GatedSleep
    announced: list[tuple[int, LaneCondition]]
    changes: asyncio.Queue[tuple[int, LaneCondition]]


Build = Callable[..., Harness]


@pytest.fixture
def bus() -> FakeUsbBus:
    """An empty simulated bus that knows every shipped model."""
    return FakeUsbBus.from_directory(USB_FIXTURES)


@pytest.fixture
def build(bus: FakeUsbBus) -> Build:
    """Make a LaneTerminals wired as the composition root does, over the simulated bus."""

    def make(
        *specs: LaneSpec,
        devices: list[Any] | None = None,
        usb: bool = True,
        hotplug: bool = False,
        switch: bool = False,
        refresh_interval: float = 300.0,
    ) -> Harness:
        cloud = FakeCloud(devices=list(devices or []))
        clock = ManualClock(1000.0)
        sleep = GatedSleep()
        announced: list[tuple[int, LaneCondition]] = []
        changes: asyncio.Queue[tuple[int, LaneCondition]] = asyncio.Queue()
        holder: list[LaneTerminals] = []

        def on_usb(change: TerminalChange) -> None:
            holder[0].usb_changed(change)

        def on_condition(lane: int, condition: LaneCondition) -> None:
            announced.append((lane, condition))
            changes.put_nowait((lane, condition))

        watch = (
            TerminalWatch(
                bus.backend,
                DEFAULT_VENDORS,
                on_change=on_usb,
                hotplug=bus.hotplug() if hotplug else None,
            )
            if usb
            else None
        )
        lanes = LaneTerminals(
            specs or (LaneSpec(1),),
            catalog=DeviceCatalog(clock),
            fetch_devices=cloud.list_terminals,
            on_condition=on_condition,
            watch=watch,
            refresh_interval=refresh_interval,
            sleep=sleep,
            switch_to_pdv=switch,
            set_operating_mode=cloud.set_operating_mode,
            wall_clock=clock,
        )
        holder.append(lanes)
        return Harness(lanes, cloud, clock, watch, sleep, announced, changes)

    return make
