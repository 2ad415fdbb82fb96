"""Fixtures for the end-to-end register tests: a whole store, started and torn down per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from pointd.sim.cloud import CloudSimulator
from pointd.sim.register.emulator import RegisterEmulator
from pointd.sim.usb.bus import FakeUsbBus
from tests.e2e_register.harness import (
    DEVICES,
    FAILURE_LEVELS,
    START_WALL,
    USB_FIXTURES,
    USB_MODELS,
    ManualClock,
    Register,
    Store,
    daemon_config,
    sim_config,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """Two lanes, each a register emulator on a pty and a pinned, plugged-in terminal."""
    bus = FakeUsbBus.from_directory(USB_FIXTURES)
    for lane in DEVICES:
        model, serial = USB_MODELS[lane]
        bus.plug(model, serial)
    registers: dict[int, Register] = {}
    running: Store | None = None
    with structlog.testing.capture_logs() as logs:
        async with CloudSimulator(sim_config()) as sim:
            try:
                for lane in DEVICES:
                    emulator = await RegisterEmulator.open_pty(tmp_path / f"register-{lane}")
                    registers[lane] = Register(lane, emulator)
                paths = {n: r.emulator.device_path for n, r in registers.items()}
                config = daemon_config(tmp_path, sim.base_url, paths)
                running = Store(tmp_path, sim, ManualClock(START_WALL), bus, registers, config)
                await running.start_daemon()
                yield running
            finally:
                if running is not None:
                    await running.close()
                else:
                    for register in registers.values():
                        await register.emulator.close()
    failures = [entry for entry in logs if entry.get("log_level") in FAILURE_LEVELS]
    assert failures == [], "the daemon logged errors"
