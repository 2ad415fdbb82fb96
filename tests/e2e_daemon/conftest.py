"""Fixtures for the daemon-process tests: a store around a real ``pointd run``, per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pointd.cloud.sites import Site
from pointd.rig import RigLane, RigSecrets, StoreRig, StoreSpec
from tests.e2e_daemon.harness import (
    COLLECTOR_ID,
    DEVICE,
    LANE,
    STORE_ID,
    TOKEN,
    WEBHOOK_SECRET,
    Store,
    daemon_toml,
    write_token,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """Simulator, register emulator on a pty and notify socket; the test starts the daemon."""
    spec = StoreSpec(
        store_id=STORE_ID,
        site=Site.MLA,
        collector_id=COLLECTOR_ID,
        lanes=(RigLane(LANE, DEVICE),),
        relay="none",
        daemon="process",
        start_daemon=False,
        sim={"time_scale": 0.0},
        secrets=RigSecrets(TOKEN, WEBHOOK_SECRET, "unused-relay-token"),
    )
    running: Store | None = None
    async with StoreRig(tmp_path, spec) as rig:
        register = rig.registers[LANE]
        config = tmp_path / "pointd.toml"
        config.write_text(
            daemon_toml(tmp=tmp_path, base_url=rig.sim.base_url, register=register.device_path,
                        token_file=write_token(tmp_path / "mp_access_token")),
            encoding="utf-8",
        )
        running = Store(tmp_path, rig.sim, register, rig.notify, config, tmp_path / "control.sock")
        try:
            yield running
        finally:
            await running.close()
    failures = [(run.pid, entry) for run in running.runs for entry in run.failures()]
    assert failures == [], "the daemon logged errors"
