"""Test harness for the relay: settings, an in-process server on loopback, signed requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from pointd.cloud.signature import sign
from pointd.config import RelayConfig, RelaySecrets, Secret
from pointd.relay.client import RelayEvent
from pointd.relay.service import INTAKE_PATH, RelayService
from pointd.relay.storage import Storage
from pointd.rig.relay import relay_config, relay_document
from tests.support.clock import ManualClock

SEEDS = Path(__file__).resolve().parent.parent / "fixtures" / "relay" / "seeds"
SECRET = "test-webhook-secret-1234"
ADMIN_TOKEN = "admin-token-xyz"
TOKENS = {"store-a": "token-for-a", "store-b": "token-for-b"}
REF_A = "pd1_store-a_1_SALE1_1"
REF_B = "pd1_store-b_2_SALE2_1"
# Server start-up and real I/O on a loaded 2-core machine; generous, never a timing check.
IO_TIMEOUT = 10.0
# The relay tests' wall clock starts here.
RELAY_EPOCH = 1_763_000_000.0


def relay_clock() -> ManualClock:
    """A wall clock the relay tests move by hand."""
    return ManualClock(RELAY_EPOCH)


@dataclass(frozen=True)
class RelaySetup:
    """A relay's validated configuration and the secrets it would have read."""

    config: RelayConfig
    secrets: RelaySecrets


# make_settings' keyword overrides, by the relay.toml table each key lives in.
_TABLE_OF = {
    "body_limit": "intake", "signature_required": "intake", "ts_window": "intake",
    "batch_max": "storage", "batch_wait": "storage",
    "retention_days": "delivery", "long_poll_timeout": "delivery", "canary_window": "delivery",
}


def make_settings(tmp_path: Path, backend: str, dsn: str | None, **overrides: Any) -> RelaySetup:
    """A relay for two stores and an admin, on the given backend.

    ``overrides`` name relay.toml keys (``body_limit=4096``) and are validated exactly as
    the file would be; ``admin_token=None`` turns the admin API off.
    """
    admin_token = overrides.pop("admin_token", ADMIN_TOKEN)
    changes: dict[str, Any] = {"storage": {"backend": backend, "batch_wait": 0.0}}
    for key, value in overrides.items():
        changes.setdefault(_TABLE_OF[key], {})[key] = value
    document = relay_document(
        sqlite_path=tmp_path / "relay.sqlite3", stores=TOKENS, changes=changes
    )
    return RelaySetup(
        relay_config(document),
        RelaySecrets(
            webhook_secret=Secret(SECRET),
            postgres_dsn=Secret(dsn) if dsn else None,
            admin_token=Secret(admin_token) if admin_token is not None else None,
        ),
    )


def open_storage(setup: RelaySetup) -> Storage:
    """A fresh backend instance for the setup."""
    from pointd.relay.cli import open_storage as build

    return build(setup.config, setup.secrets)


@dataclass
class RunningRelay:
    """A relay served by uvicorn in this event loop."""

    service: RelayService
    url: str
    port: int
    client: httpx.AsyncClient
    clock: ManualClock
    secret: str = SECRET
    extra: dict[str, Any] = field(default_factory=dict)

    async def post_signed(
        self,
        body: bytes,
        *,
        query: dict[str, str] | None = None,
        request_id: str | None = "req-1",
        signed_id: str | None = "auto",
        ts: str | None = None,
        secret: str | None = None,
        signature: str | None = "auto",
    ) -> httpx.Response:
        """POST a notification signed as Mercado Pago would sign it."""
        query = query or {}
        if signed_id == "auto":
            signed_id = query.get("data.id")
            if signed_id is None:
                with contextlib.suppress(ValueError):
                    from pointd.relay.notification import read_body

                    document = read_body(body)[1]
                    if isinstance(document, dict) and isinstance(document.get("id"), str):
                        signed_id = document["id"]
        ts = ts or str(int(self.clock.now))
        headers = {"content-type": "application/json"}
        if request_id is not None:
            headers["x-request-id"] = request_id
        if signature == "auto":
            signature = sign(secret or self.secret, data_id=signed_id, request_id=request_id, ts=ts)
        if signature is not None:
            headers["x-signature"] = signature
        return await self.client.post(INTAKE_PATH, params=query, content=body, headers=headers)

    async def events(self, store: str, after: int = 0, wait: float = 0.0) -> list[dict[str, Any]]:
        """Read a store's stream with its own token."""
        response = await self.client.get(
            f"/stores/{store}/events",
            params={"after": after, "wait": wait, "limit": 500},
            headers={"authorization": f"Bearer {TOKENS[store]}"},
        )
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    async def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call the admin API with the admin token."""
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        return await self.client.request(method, path, headers=headers, **kwargs)


@contextlib.asynccontextmanager
async def serve_app(app: Any, port: int = 0) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """Serve an ASGI app on 127.0.0.1 in this loop; yield the server and its port."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", log_level="error", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + IO_TIMEOUT
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield server, bound
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, IO_TIMEOUT)


@contextlib.asynccontextmanager
async def running_relay(
    setup: RelaySetup,
    *,
    clock: ManualClock | None = None,
    port: int = 0,
    storage_factory: Callable[[RelaySetup], Storage] = open_storage,
) -> AsyncIterator[RunningRelay]:
    """Start a relay for the setup and stop it afterwards."""
    clock = clock or relay_clock()
    service = RelayService(setup.config, setup.secrets, storage_factory(setup), clock=clock)
    async with serve_app(service.app, port) as (_server, bound):
        url = f"http://127.0.0.1:{bound}"
        try:
            async with httpx.AsyncClient(base_url=url, timeout=IO_TIMEOUT) as client:
                yield RunningRelay(
                    service=service, url=url, port=bound, client=client, clock=clock
                )
        finally:
            service.begin_shutdown()  # as `pointd relay` does: open streams end first


class Journal:
    """A RelayConsumer handler and cursor store standing in for the daemon's journal (events
    and cursor kept together, as its one transaction does), optionally failing first."""

    def __init__(self, failures: int = 0) -> None:
        self.events: list[RelayEvent] = []
        self.cursor = 0
        self.failures = failures
        self.changed = asyncio.Event()

    async def __call__(self, events: Sequence[RelayEvent], cursor: int) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("journal disk full")
        self.events.extend(events)
        self.cursor = cursor
        self.changed.set()

    def get(self) -> int:
        return self.cursor

    async def wait_for(self, count: int) -> None:
        while len(self.events) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), IO_TIMEOUT)


def seed(name: str) -> bytes:
    """A seed example body, byte for byte."""
    return (SEEDS / name).read_bytes()


def with_reference(body: bytes, reference: str) -> bytes:
    """A seed intent body with our external_reference in place of the example's."""
    replaced = body.replace(
        b'"external_reference": "information"', f'"external_reference": "{reference}"'.encode()
    )
    assert replaced != body
    return replaced


def webhook(topic: str, data: dict[str, Any], notification_id: int = 1) -> bytes:
    """A generic webhook body."""
    return json.dumps(
        {
            "action": f"{topic}.updated",
            "api_version": "v1",
            "data": data,
            "id": notification_id,
            "live_mode": True,
            "type": topic,
            "user_id": 44444,
        }
    ).encode()
