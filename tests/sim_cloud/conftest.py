"""Fixtures for the cloud simulator tests: a webhook receiver on loopback, and the simulator."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pointd.cloud.client import PointApiClient
from pointd.sim.cloud import CloudSimulator, LoopbackServer, SimConfig, SimDevice
from tests.support.clock import ManualClock

TOKEN = "TEST-sim-tests-token-51c2"
SECRET = "sim-tests-webhook-secret"
DEVICE = "PAX_A910__SMARTPOS0001"
OTHER_DEVICE = "INGENICO_MOVE2500__ING-ARG-1123345670"
# Bound for waiting on a real loopback event (a webhook arriving); never a timing rule.
EVENT_WAIT = 10.0


@dataclass
class Received:
    """One webhook POST as the receiver saw it."""

    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    """A webhook endpoint that records every POST and answers from a script."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    url: str = ""

    async def endpoint(self, request: Request) -> Response:
        self.received.append(
            Received(
                dict(request.query_params), dict(request.headers), json.loads(await request.body())
            )
        )
        status = self.statuses.pop(0) if self.statuses else 200
        async with self.arrived:
            self.arrived.notify_all()
        return Response(status_code=status)

    async def wait_for(self, count: int) -> list[Received]:
        async with self.arrived:
            await asyncio.wait_for(
                self.arrived.wait_for(lambda: len(self.received) >= count), EVENT_WAIT
            )
        return self.received


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/hooks/mp", rec.endpoint, methods=["POST"])])
    async with LoopbackServer(app) as server:
        rec.url = f"{server.base_url}/hooks/mp"
        yield rec


def make_config(webhook_url: str | None = None, **overrides: Any) -> SimConfig:
    values: dict[str, Any] = {
        "access_token": TOKEN,
        "webhook_secret": SECRET,
        "time_scale": 0.0,
        "start_time": 1_790_000_000.0,
        "webhook_url": webhook_url,
        "devices": (
            SimDevice(id=DEVICE),
            SimDevice(id=OTHER_DEVICE, store_id="store-b", pos_id=2),
        ),
    }
    values.update(overrides)
    return SimConfig(**values)


SimFactory = Callable[..., Awaitable[CloudSimulator]]


@pytest.fixture
async def start_sim() -> AsyncIterator[SimFactory]:
    """Start simulators with chosen settings; all are stopped after the test."""
    running: list[CloudSimulator] = []

    async def start(webhook_url: str | None = None, **overrides: Any) -> CloudSimulator:
        sim = CloudSimulator(make_config(webhook_url, **overrides))
        await sim.__aenter__()
        running.append(sim)
        return sim

    yield start
    for sim in reversed(running):
        await sim.__aexit__(None, None, None)


@pytest.fixture
async def sim(start_sim: SimFactory, receiver: Receiver) -> CloudSimulator:
    return await start_sim(receiver.url)


@pytest.fixture
def no_wait() -> ManualClock:
    """Clock and sleep for the client: time moves only when it sleeps."""
    return ManualClock(0.0)


@pytest.fixture
async def client(sim: CloudSimulator, no_wait: ManualClock) -> AsyncIterator[PointApiClient]:
    async with PointApiClient(sim.base_url, TOKEN, clock=no_wait, sleep=no_wait.sleep) as api:
        yield api


@pytest.fixture
async def control(sim: CloudSimulator) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client on the simulator, for /_sim/ calls and raw requests."""
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=EVENT_WAIT) as http:
        yield http


async def advance(control: httpx.AsyncClient, seconds: float) -> None:
    """Move the simulator's clock through its HTTP control API."""
    response = await control.post("/_sim/clock/advance", json={"seconds": seconds})
    assert response.status_code == 200, response.text


def expected_signature(secret: str, data_id: str | None, request_id: str | None, ts: str) -> str:
    """The x-signature v1 value, written from Mercado Pago's rule (not from pointd)."""
    parts = []
    if data_id:
        parts.append(f"id:{data_id};")
    if request_id:
        parts.append(f"request-id:{request_id};")
    parts.append(f"ts:{ts};")
    return hmac.new(secret.encode(), "".join(parts).encode(), hashlib.sha256).hexdigest()


def split_signature(header: str) -> dict[str, str]:
    """``ts=...,v1=...`` as a dict."""
    return dict(piece.strip().split("=", 1) for piece in header.split(","))
