"""Relay fixtures: both storage backends, and a running relay on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.relay.harness import RunningRelay, make_settings, relay_clock, running_relay
from tests.support.postgres import PostgresServer, postgres_server

__all__ = ["postgres_server"]


@pytest.fixture(scope="session")
def relay_template(postgres_server: PostgresServer) -> PostgresServer:
    """The session's server, its template already holding the relay schema."""
    from pointd.relay.postgres_backend import SCHEMA

    # Creating the schema per test would cost more than the test; the backend's own
    # CREATE ... IF NOT EXISTS still runs (and is tested) on every start.
    postgres_server.prepare_template(SCHEMA)
    return postgres_server


@pytest.fixture
def postgres_dsn(relay_template: PostgresServer) -> Iterator[str]:
    """A fresh database holding the relay schema, dropped afterwards."""
    dsn = relay_template.fresh_database()
    yield dsn
    relay_template.drop_database(dsn)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """The backend name, and a fresh database DSN for postgres."""
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("postgres_dsn")
    return "sqlite", None


@pytest.fixture
async def relay(tmp_path: Path, backend: tuple[str, str | None]) -> AsyncIterator[RunningRelay]:
    """A relay for stores store-a and store-b, with a hand-moved clock."""
    name, dsn = backend
    async with running_relay(make_settings(tmp_path, name, dsn), clock=relay_clock()) as running:
        yield running


@pytest.fixture
async def sqlite_relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    """A relay on SQLite only, for checks made before storage is touched (both backends
    share that code path; the parametrised suite covers what reaches storage)."""
    setup = make_settings(tmp_path, "sqlite", None)
    async with running_relay(setup, clock=relay_clock()) as running:
        yield running
