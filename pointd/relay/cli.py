"""``pointd relay``: load the relay's configuration, open its storage and serve it with uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
import uvicorn

from pointd.config.relay import RelayConfig, RelaySecrets, load_relay_config
from pointd.config.schema import EXIT_CONFIG, ConfigError
from pointd.logging import ANNOUNCEMENTS, DEFAULT_LIBRARY_LEVEL, LEVELS, configure_logging
from pointd.relay.errors import ConfigurationError, StorageError
from pointd.relay.service import INTAKE_PATH, RelayService
from pointd.relay.storage import Storage

announce = structlog.get_logger(ANNOUNCEMENTS)

# The SQLite writer thread needs the GIL back after every statement and after each fsync;
# under load the event loop holds it, and the default 5 ms switch interval would make every
# group commit wait several times 5 ms (docs/benchmarks.md, "relay").
GIL_SWITCH_INTERVAL = 0.0005
# Long enough for in-flight intake requests to finish their durable write and answer.
GRACEFUL_SHUTDOWN_TIMEOUT = 3
CONFIG_ERROR_EXIT = EXIT_CONFIG  # systemd and operators read it as "fix the configuration"
STORAGE_ERROR_EXIT = 69  # EX_UNAVAILABLE


def open_storage(config: RelayConfig, secrets: RelaySecrets) -> Storage:
    """The configured backend, not yet opened."""
    if config.storage.backend == "postgres":
        from pointd.relay.postgres_backend import PostgresStorage  # noqa: PLC0415

        if secrets.postgres_dsn is None:
            raise ConfigurationError("storage.postgres_dsn_file is required for postgres")
        return PostgresStorage(secrets.postgres_dsn.reveal())
    from pointd.relay.sqlite_backend import SqliteStorage  # noqa: PLC0415

    return SqliteStorage(str(config.storage.sqlite_path))


def http_implementation() -> str:
    """uvicorn's HTTP parser: httptools (C) when installed, else the pure-Python h11."""
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when installed, else None for asyncio's own."""
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop  # noqa: PLC0415

    return uvloop.new_event_loop


async def serve(
    config: RelayConfig,
    secrets: RelaySecrets,
    *,
    port: int | None = None,
    http: str | None = None,
) -> None:
    """Serve the relay until the process is told to stop."""
    service = RelayService(config, secrets, open_storage(config, secrets))
    server_config = uvicorn.Config(
        service.app,
        host=config.server.host,
        port=config.server.port if port is None else port,
        # httptools parses a request in C, several times faster than h11; the intake's
        # throughput target is met only with it (docs/benchmarks.md).
        http=http or http_implementation(),
        lifespan="on",
        # The relay never reads the client's address, so X-Forwarded-* need no parsing.
        proxy_headers=False,
        log_config=None,  # records go through pointd.logging's redacting pipeline
        access_log=False,
        # Mercado Pago waits 22 s; a relay that holds a socket longer only wastes it.
        timeout_keep_alive=30,
        # A store's long-poll may hold a request open for delivery.long_poll_timeout; a stop
        # must not wait for it (the store simply polls again after the restart).
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_TIMEOUT,
    )
    server = _AnnouncingServer(server_config, service)
    await server.serve()
    if not server.started:
        raise StorageError("the relay did not start; see the log above")


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints its bound address once it listens.

    On shutdown it first answers the stores' waiting long-polls, which would otherwise hold
    their connections until the graceful-shutdown timeout and then be cancelled.
    """

    def __init__(self, config: uvicorn.Config, service: RelayService) -> None:
        super().__init__(config)
        self._service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._service.begin_shutdown()
        await super().shutdown(sockets=sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            host, bound_port = self.servers[0].sockets[0].getsockname()[:2]
            # Logged at any level, for supervisors and tests that start the relay on port 0;
            # a log line, not a print, so a JSON log stream stays JSON.
            url = f"http://{host}:{bound_port}{INTAKE_PATH}"
            announce.info(f"pointd relay listening on {url}", url=url)


def main(argv: Sequence[str]) -> int:
    """Entry point for ``pointd relay``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="pointd relay", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="relay TOML file")
    parser.add_argument("--port", type=int, help="override server.port (0: any free port)")
    parser.add_argument("--check", action="store_true", help="validate the settings and exit")
    parser.add_argument(
        "--log-level", default="info", choices=LEVELS, help="pointd's own lines (default info)"
    )
    parser.add_argument(
        "--library-log-level", default=DEFAULT_LIBRARY_LEVEL, choices=LEVELS,
        help=f"uvicorn's, httpx's and the other libraries' lines (default {DEFAULT_LIBRARY_LEVEL})",
    )
    parser.add_argument(
        "--portable",
        action="store_true",
        help="use h11 and asyncio's own loop even when httptools and uvloop are installed",
    )
    args = parser.parse_args(list(argv))
    configure_logging(level=args.log_level, library_level=args.library_log_level)
    try:
        config, secrets = load_relay_config(args.config)
    except (ConfigError, ConfigurationError) as exc:
        print(f"pointd relay: {exc}", file=sys.stderr)
        return CONFIG_ERROR_EXIT
    if args.check:
        print(
            f"pointd relay: {args.config} is valid ({config.storage.backend}, "
            f"{len(config.stores)} stores)"
        )
        return 0
    factory = None if args.portable else loop_factory()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            http = "h11" if args.portable else None
            runner.run(serve(config, secrets, port=args.port, http=http))
    except (StorageError, ConfigurationError) as exc:
        print(f"pointd relay: {exc}", file=sys.stderr)
        return STORAGE_ERROR_EXIT
    except KeyboardInterrupt:
        return 0
    return 0
