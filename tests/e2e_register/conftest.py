"""Fixtures for the end-to-end register tests: a whole store, started and torn down per test."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from pointd.rig import StoreRig
from pointd.sim.cloud.world import INTENT_API, ORDERS_API
from tests.e2e_register.harness import (
    BACKENDS,
    FAILURE_LEVELS,
    START_WALL,
    STORE_ID,
    Register,
    Store,
    hand_driven,
    store_spec,
)
from tests.support.clock import ManualClock

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
    async with running_store(tmp_path, backend, relayed=False) as running:
        yield running


@pytest.fixture
async def relayed_store(tmp_path: Path, backend: str) -> AsyncIterator[Store]:
    """The same store, with the simulator's webhooks reaching the daemon through a relay."""
    async with running_store(tmp_path, backend, relayed=True) as running:
        yield running


@contextlib.asynccontextmanager
async def running_store(tmp_path: Path, backend: str, *, relayed: bool) -> AsyncIterator[Store]:
    """Start the store on the rig with the daemon on a hand-driven clock; check it at the end."""
    clock = ManualClock(START_WALL)
    spec = store_spec(backend, relayed=relayed)
    with structlog.testing.capture_logs() as logs:
        rig = StoreRig(tmp_path, dataclasses.replace(spec, start_daemon=False),
                       ports=hand_driven(clock))
        async with rig:
            running = Store(rig, clock, {n: Register(n, e) for n, e in rig.registers.items()})
            try:
                await running.start_daemon()
                yield running
                # Jobs some other program queued (tests of foreign intents) do not count.
                apis = {
                    intent.api
                    for intent in rig.sim.world.intents.values()
                    if (intent.external_reference or "").startswith(f"pd1_{STORE_ID}_")
                }
                assert apis <= {SIM_API[backend]}, f"{backend} daemon created {apis} jobs"
            finally:
                await running.close()
    failures = [entry for entry in logs if entry.get("log_level") in FAILURE_LEVELS]
    assert failures == [], "the daemon logged errors"
