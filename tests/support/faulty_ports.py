"""``pointd run`` with one production port swapped for one the test owns, in its own process.

``python -m tests.support.faulty_ports --config FILE --fault KIND --trigger PATH`` loads the
configuration and serves the daemon exactly as ``pointd run`` does (``runtime.serve`` with
``Ports.production()``), except that one port misbehaves once the file ``PATH`` exists:

- ``register``: the register port opener says the port can never work (pyserial's
  ValueError), so the lane's register session ends at its next reconnect;
- ``relay``: the relay's HTTP transport raises a cancellation nobody asked for (what a
  library that leaks one does), so the relay consumer ends.

Nothing here is in the product: the daemon is the real one, fed a port the test owns.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

import httpx

from pointd.app.ports import Ports
from pointd.app.runtime import serve
from pointd.config import DaemonConfig, load_config
from pointd.link.ports import Port, open_port
from pointd.logging import configure_logging


def pulled(trigger: Path) -> bool:
    """Whether the test has pulled the trigger (a stat of a local file: instant)."""
    return trigger.exists()


class CancellingTransport(httpx.AsyncBaseTransport):
    """The real transport until ``trigger`` exists; then every request is cancelled."""

    def __init__(self, trigger: Path) -> None:
        self._trigger = trigger
        self._real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if pulled(self._trigger):
            raise asyncio.CancelledError("the test's transport cancels every request")
        return await self._real.handle_async_request(request)

    async def aclose(self) -> None:
        await self._real.aclose()


def faulty(kind: str, trigger: Path) -> Ports:
    """Production ports, with the ``kind`` port failing once ``trigger`` exists."""
    ports = Ports.production()
    if kind == "register":

        async def opener(url: str, baudrate: int) -> Port:
            if pulled(trigger):
                raise ValueError(f"{url} can never work (the test said so)")
            return await open_port(url, baudrate)

        return dataclasses.replace(ports, open_register_port=opener)
    if kind == "relay":
        return dataclasses.replace(ports, relay_transport=CancellingTransport(trigger))
    raise SystemExit(f"unknown fault {kind!r}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--fault", choices=("register", "relay"), required=True)
    parser.add_argument("--trigger", type=Path, required=True)
    args = parser.parse_args()
    config = load_config(args.config, DaemonConfig)
    configure_logging(config.logging.level, config.logging.format,
                      library_level=config.logging.library_level)
    return asyncio.run(serve(config, lambda: faulty(args.fault, args.trigger)))


if __name__ == "__main__":
    sys.exit(main())
