"""Choosing the Mercado Pago backend from the configuration, in one place."""

from __future__ import annotations

import random as random_module
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import httpx

from pointd.cloud.client import CallObserver, Clock, PointApiClient, Timeouts
from pointd.cloud.errors import InvalidRequest
from pointd.cloud.order_backend import OrdersBackend
from pointd.cloud.port import CloudPort, PaymentIntentBackend
from pointd.cloud.sites import Site

Backend = Literal["payment-intent", "orders"]
BACKENDS: tuple[Backend, ...] = ("payment-intent", "orders")
DEFAULT_TIMEOUTS = Timeouts()
Closer = Callable[[], Awaitable[None]]


def build_cloud_port(
    backend: str,
    base_url: str,
    token: str,
    site: Site | str,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    order_expiration_seconds: int | None = None,
    cancel_at_terminal: bool = False,
    observer: CallObserver | None = None,
    clock: Clock = time.monotonic,
    random: Callable[[], float] = random_module.random,
) -> tuple[CloudPort, Closer]:
    """The backend named by ``cloud.backend`` and the coroutine that closes its connections.

    ``clock`` (monotonic) paces the calls and ``random`` draws their retry jitter.

    ``backend`` is "payment-intent" or "orders" (anything else is InvalidRequest). Both
    share one ``PointApiClient``: the Orders backend still reads ``/v1/payments``.
    """
    if backend not in BACKENDS:
        raise InvalidRequest(f"cloud backend must be one of {list(BACKENDS)}")
    client = PointApiClient(
        base_url, token, site=Site(site), timeouts=timeouts, transport=transport,
        observer=observer, clock=clock, random=random,
    )
    port: CloudPort
    if backend == "orders":
        port = OrdersBackend(
            client,
            expiration_seconds=order_expiration_seconds,
            cancel_at_terminal=cancel_at_terminal,
        )
    else:
        port = PaymentIntentBackend(client)
    return port, client.aclose
