"""The PostgreSQL fixture (tests/support/postgres.py) survives losing its port to a sibling.

Under pytest-xdist every worker starts its own server on a port it probed free; between the
probe and the postmaster's bind another worker may take that port. The server must then be
started again on another port, never handed out while someone else's server answers there.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.postgres import postgres_server

__all__ = ["postgres_server"]

pytestmark = pytest.mark.postgres


@pytest.fixture
def cluster() -> Iterator[tuple[Path, Path, str | None]]:
    """An initialised, never started cluster: binaries, directory, the user it runs as."""
    binaries = postgres.find_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL binaries not found (install the postgresql package)")
    user = postgres._unprivileged_user() if os.geteuid() == 0 else None
    directory = postgres.initialise_cluster(binaries, user)
    yield binaries, directory, user
    shutil.rmtree(directory, ignore_errors=True)


def test_a_port_another_program_listens_on_is_given_up(
    cluster: tuple[Path, Path, str | None],
) -> None:
    binaries, directory, user = cluster
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        assert postgres.launch(binaries, directory, user, port=port) is None
    server = postgres.launch(binaries, directory, user, port=port)
    assert server is not None
    try:
        server.fresh_database()
    finally:
        postgres.stop_server(server)


def test_a_sibling_server_on_the_port_is_never_taken_for_ours(
    cluster: tuple[Path, Path, str | None],
    postgres_server: postgres.PostgresServer,
) -> None:
    binaries, directory, user = cluster
    assert postgres.launch(binaries, directory, user, port=postgres_server.port) is None
    # The sibling's server is untouched and still serves its own databases.
    postgres_server.drop_database(postgres_server.fresh_database())

