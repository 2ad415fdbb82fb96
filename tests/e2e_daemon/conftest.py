"""Fixtures for the daemon-process tests: a store around a real ``pointd run``, per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pointd.sim.cloud import CloudSimulator
from pointd.sim.register.emulator import RegisterEmulator
from tests.e2e_daemon.harness import NotifySocket, Store, daemon_toml, sim_config, write_token


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """Simulator, register emulator on a pty and notify socket; the test starts the daemon."""
    notify = NotifySocket(tmp_path / "notify.sock")
    notify.start()
    running: Store | None = None
    try:
        async with CloudSimulator(sim_config()) as sim:
            register = await RegisterEmulator.open_pty(tmp_path / "register")
            token = write_token(tmp_path / "mp_access_token")
            config = tmp_path / "pointd.toml"
            config.write_text(
                daemon_toml(
                    tmp=tmp_path,
                    base_url=sim.base_url,
                    register=register.device_path,
                    token_file=token,
                ),
                encoding="utf-8",
            )
            running = Store(tmp_path, sim, register, notify, config, tmp_path / "control.sock")
            try:
                yield running
            finally:
                await running.close()
    finally:
        await notify.close()
    if running is not None:
        failures = [(run.pid, entry) for run in running.runs for entry in run.failures()]
        assert failures == [], "the daemon logged errors"
