"""The relay for a rig: its configuration, in this event loop or as a ``pointd relay`` process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pointd.config import RelayConfig, RelaySecrets, Secret, config_from_mapping
from pointd.relay.cli import open_storage
from pointd.relay.service import INTAKE_PATH, RelayService
from pointd.rig.process import Child
from pointd.rig.toml import merged, toml_text
from pointd.sim.cloud.server import LoopbackServer

RELAY_LISTENING = re.compile(r"pointd relay listening on http://127\.0\.0\.1:(\d+)/")
# A cold `pointd relay` imports its stack and opens SQLite in about a second; this only
# bounds a broken start.
RELAY_START_TIMEOUT = 30.0
# `pointd relay` answers its stores' waiting long-polls before it exits on SIGTERM.
RELAY_STOP_TIMEOUT = 5.0
LOOK_INTERVAL = 0.05


def relay_document(
    *, sqlite_path: Path, stores: Mapping[str, str], changes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A relay.toml as a mapping: loopback, SQLite, the stores by id with their tokens."""
    document: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 8080},
        "storage": {"backend": "sqlite", "sqlite_path": str(sqlite_path)},
        "stores": [
            {"id": store, "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
            for store, token in stores.items()
        ],
    }
    return merged(document, changes or {})


def relay_config(document: Mapping[str, Any]) -> RelayConfig:
    """Validate a relay.toml mapping exactly as ``pointd relay`` validates the file."""
    return config_from_mapping(dict(document), RelayConfig, source="rig")


class _LoopbackRelay:
    """Where a relay on loopback listens: the same port across its restarts."""

    port: int

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port`` of the relay."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def intake_url(self) -> str:
        """The URL Mercado Pago's webhooks are sent to."""
        return f"{self.url}{INTAKE_PATH}"


class InProcessRelay(_LoopbackRelay):
    """``RelayService`` on loopback in this event loop; stop and start it again at will."""

    def __init__(
        self,
        config: RelayConfig,
        webhook_secret: str,
        *,
        clock: Callable[[], float],
        admin_token: str | None = None,
    ) -> None:
        self.config = config
        self.secrets = RelaySecrets(
            webhook_secret=Secret(webhook_secret),
            admin_token=Secret(admin_token) if admin_token is not None else None,
        )
        self._clock = clock
        # Any free port at the first start; the same one at every restart after it.
        self.port = 0
        self.service: RelayService | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def start(self) -> None:
        """Open the storage and listen (on the port of the previous run, if any)."""
        service = RelayService(
            self.config, self.secrets, open_storage(self.config, self.secrets), clock=self._clock
        )
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(service.running())
            server = await stack.enter_async_context(LoopbackServer(service.app, port=self.port))
        except BaseException:
            await stack.aclose()
            raise
        self.port = server.port
        self.service, self._stack = service, stack

    async def stop(self) -> None:
        """Stop as if the relay's host went away (waiting long-polls are answered first)."""
        stack, self._stack = self._stack, None
        service, self.service = self.service, None
        if service is not None:
            service.begin_shutdown()
        if stack is not None:
            await stack.aclose()


class RelayProcess(_LoopbackRelay):
    """``pointd relay`` as a subprocess, as deployed; restartable on the same port."""

    def __init__(
        self, document: Mapping[str, Any], webhook_secret_file: Path, state_dir: Path,
        *, environment: Mapping[str, str], log_level: str = "warning",
    ) -> None:
        self.config_path = state_dir / "relay.toml"
        table = merged(document, {"intake": {"webhook_secret_file": str(webhook_secret_file)}})
        relay_config(table)  # refuse a bad document here, not in the child's log
        self.config_path.write_text(toml_text(table), encoding="utf-8")
        self.child = Child("relay", state_dir / "relay.log", environment)
        self.port = 0
        self._log_level = log_level

    async def start(self) -> None:
        """Start it (again) and wait until it says where it listens."""
        before = self.child.log_size()
        await self.child.start(
            ["relay", "--config", str(self.config_path), "--port", str(self.port),
             "--log-level", self._log_level]
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RELAY_START_TIMEOUT
        while True:
            found = RELAY_LISTENING.search(self.child.log_text(since=before))
            if found:
                self.port = int(found.group(1))
                return
            if not self.child.running or loop.time() > deadline:
                raise RuntimeError(f"pointd relay did not start:\n{self.child.log_tail()}")
            await asyncio.sleep(LOOK_INTERVAL)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it will not go."""
        await self.child.stop(RELAY_STOP_TIMEOUT)

    async def kill(self) -> None:
        """SIGKILL: the relay dies wherever it is."""
        await self.child.sigkill()
