"""Fixtures for the end-to-end register tests: a whole store, started and torn down per test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import structlog

from pointd.relay.service import INTAKE_PATH
from pointd.sim.cloud import CloudSimulator, SimConfig
from pointd.sim.cloud.world import INTENT_API, ORDERS_API
from pointd.sim.register.emulator import RegisterEmulator
from pointd.sim.usb.bus import FakeUsbBus
from tests.e2e_register.harness import (
    BACKENDS,
    DEVICES,
    FAILURE_LEVELS,
    START_WALL,
    STORE_ID,
    USB_FIXTURES,
    USB_MODELS,
    ManualClock,
    Register,
    Store,
    daemon_config,
    serve_relay,
    sim_config,
)

# What the simulator records a job's API as, per daemon backend.
SIM_API = {"payment-intent": INTENT_API, "orders": ORDERS_API}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The daemon's ``cloud.backend``: every test that uses a store runs with each."""
    value: str = request.param
    return value


@pytest.fixture
async def store(tmp_path: Path, backend: str) -> AsyncIterator[Store]:
    """Two lanes, each a register emulator on a pty and a pinned, plugged-in terminal."""
    async with running_store(tmp_path, backend, sim_config()) as running:
        yield running


@pytest.fixture
async def relayed_store(tmp_path: Path, backend: str) -> AsyncIterator[Store]:
    """The same store, with the simulator's webhooks reaching the daemon through a relay."""
    sim_holder: list[CloudSimulator] = []

    def sim_wall() -> float:
        sim = sim_holder[0] if sim_holder else None
        return START_WALL if sim is None else sim.world.start_wall + sim.clock.now()

    async with serve_relay(tmp_path, sim_wall) as relay_url:
        config = sim_config(webhook_url=f"{relay_url}{INTAKE_PATH}")
        async with running_store(
            tmp_path, backend, config, relay_url=relay_url, on_sim=sim_holder.append
        ) as running:
            yield running


@contextlib.asynccontextmanager
async def running_store(
    tmp_path: Path,
    backend: str,
    simulated: SimConfig,
    *,
    relay_url: str | None = None,
    on_sim: Callable[[CloudSimulator], None] = lambda sim: None,
) -> AsyncIterator[Store]:
    """Start the simulator, the register emulators and the daemon; check them at the end."""
    bus = FakeUsbBus.from_directory(USB_FIXTURES)
    for lane in DEVICES:
        model, serial = USB_MODELS[lane]
        bus.plug(model, serial)
    registers: dict[int, Register] = {}
    running: Store | None = None
    with structlog.testing.capture_logs() as logs:
        async with CloudSimulator(simulated) as sim:
            on_sim(sim)
            try:
                for lane in DEVICES:
                    emulator = await RegisterEmulator.open_pty(tmp_path / f"register-{lane}")
                    registers[lane] = Register(lane, emulator)
                paths = {n: r.emulator.device_path for n, r in registers.items()}
                config = daemon_config(tmp_path, sim.base_url, paths, backend, relay_url)
                running = Store(tmp_path, sim, ManualClock(START_WALL), bus, registers, config)
                await running.start_daemon()
                yield running
                # Jobs some other program queued (tests of foreign intents) do not count.
                apis = {
                    intent.api
                    for intent in sim.world.intents.values()
                    if (intent.external_reference or "").startswith(f"pd1_{STORE_ID}_")
                }
                assert apis <= {SIM_API[backend]}, f"{backend} daemon created {apis} jobs"
            finally:
                if running is not None:
                    await running.close()
                else:
                    for register in registers.values():
                        await register.emulator.close()
    failures = [entry for entry in logs if entry.get("log_level") in FAILURE_LEVELS]
    assert failures == [], "the daemon logged errors"
