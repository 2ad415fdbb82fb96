"""Fixtures for the cloud client tests: a simulator on loopback and a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pointd.cloud.client import PointApiClient
from pointd.cloud.sites import Site
from pointd.sim.cloud import CloudSimulator, SimConfig, SimDevice
from tests.support.clock import ManualClock as FakeClock

TOKEN = "TEST-cloud-tests-token-7f3a"
SECRET = "cloud-tests-webhook-secret"
DEVICE = "PAX_A910__SMARTPOS0001"
OTHER_DEVICE = "GERTEC_MP35P__8701016695109435"


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(1000.0)


def sim_config(**overrides: object) -> SimConfig:
    values: dict[str, object] = {
        "access_token": TOKEN,
        "webhook_secret": SECRET,
        "time_scale": 0.0,
        "devices": (
            SimDevice(id=DEVICE, store_id="1000001", pos_id=1),
            SimDevice(id=OTHER_DEVICE, store_id="store-b", pos_id=2, external_pos_id="LANE2"),
        ),
    }
    values.update(overrides)
    return SimConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def sim() -> AsyncIterator[CloudSimulator]:
    async with CloudSimulator(sim_config()) as running:
        yield running


@pytest.fixture
async def client(sim: CloudSimulator, fake_clock: FakeClock) -> AsyncIterator[PointApiClient]:
    async with PointApiClient(
        sim.base_url,
        TOKEN,
        site=Site.MLA,
        clock=fake_clock,
        sleep=fake_clock.sleep,
        random=lambda: 0.5,
    ) as api:
        yield api
