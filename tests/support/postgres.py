"""A real PostgreSQL server for tests, started from the system's binaries in a temporary dir.

The server is session-scoped; each test gets a fresh database created from a template.
PostgreSQL refuses to run as root, so under root (as in CI) initdb and postgres run as the
``postgres`` user (or ``nobody``) through ``runuser``/``setpriv``. Without the binaries the
tests skip, unless POINTD_REQUIRE_POSTGRES=1 (set by CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Start-up of a fresh cluster on a loaded 2-core machine takes a few seconds.
STARTUP_TIMEOUT = 30.0
TEMPLATE = "pointd_template"
# What the postmaster logs when its port is already bound (its messages are kept in English
# by lc_messages=C, whatever the machine's locale), and how many ports it is offered.
PORT_TAKEN = "Address already in use"
PORT_ATTEMPTS = 5


def find_binaries() -> Path | None:
    """The directory holding initdb and postgres, or None."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        directory = Path(os.path.realpath(initdb)).parent
        if (directory / "postgres").exists():
            return directory
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "postgres").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no postgres/nobody user to run PostgreSQL as")


def _as_user(command: list[str], user: str | None) -> list[str]:
    if user is None:
        return command
    entry = pwd.getpwnam(user)
    if shutil.which("setpriv"):
        # setpriv execs, so signals reach postgres itself (runuser stays in between).
        return [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--clear-groups",
            *command,
        ]
    return ["runuser", "-u", user, "--", *command]


@dataclass
class PostgresServer:
    """A running server; ``dsn(name)`` connects to one of its databases."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string over loopback TCP."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def prepare_template(self, sql: str) -> None:
        """Run ``sql`` in the template, so every fresh database starts with it."""
        import psycopg

        with psycopg.connect(self.dsn(TEMPLATE), autocommit=True) as connection:
            connection.execute(sql)

    def fresh_database(self) -> str:
        """Create an empty database from the template; return its DSN."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        """Drop a database made by fresh_database, closing what still uses it."""
        import psycopg

        name = dsn.rsplit("dbname=", 1)[1]
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_server(*, durable: bool = False) -> PostgresServer:
    """Initialise and start a server; ``durable`` keeps fsync on (benchmarks)."""
    binaries = find_binaries()
    if binaries is None:
        raise FileNotFoundError(
            "no PostgreSQL binaries (initdb, postgres) on PATH or in /usr/lib/postgresql"
        )
    user = _unprivileged_user() if os.geteuid() == 0 else None
    directory = initialise_cluster(binaries, user)
    for _ in range(PORT_ATTEMPTS):
        # Between the probe closing its socket and postgres binding the port, another
        # process (a sibling pytest-xdist worker starting its own server, say) may take it.
        server = launch(binaries, directory, user, port=_free_port(), durable=durable)
        if server is not None:
            return server
    shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL found no free port in {PORT_ATTEMPTS} attempts")


def initialise_cluster(binaries: Path, user: str | None) -> Path:
    """A fresh cluster in a new temporary directory (owned by ``user`` if given)."""
    directory = Path(tempfile.mkdtemp(prefix="pointd-pg-"))
    directory.chmod(0o755)
    data = directory / "data"
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    subprocess.run(
        _as_user(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            user,
        ),
        check=True,
        capture_output=True,
    )
    return directory


def launch(
    binaries: Path, directory: Path, user: str | None, *, port: int, durable: bool = False
) -> PostgresServer | None:
    """Start the cluster in ``directory`` on ``port``; None if another process holds it."""
    settings = [
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"unix_socket_directories={directory}",
        "-c",
        "max_connections=100",
        "-c",
        "lc_messages=C",
    ]
    if not durable:
        # Tests crash the relay, never the database server, so the server's own fsync adds
        # only time; commits are still made before the relay answers.
        settings += ["-c", "fsync=off", "-c", "full_page_writes=off"]
    log_path = directory / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        _as_user(
            [str(binaries / "postgres"), "-D", str(directory / "data"), "-p", str(port),
             *settings],
            user,
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = PostgresServer(port=port, directory=directory, process=process)
    import psycopg

    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=2) as connection:
                # A sibling's server that won the port answers too: ours will fail to bind.
                [answering] = connection.execute("SHOW data_directory").fetchone() or [""]
                if Path(answering).resolve() == (directory / "data").resolve():
                    connection.execute(f"CREATE DATABASE {TEMPLATE}")
                    return server
            process.terminate()
            process.wait()
            log.close()
            return None
        except psycopg.OperationalError:
            if process.poll() is not None and PORT_TAKEN in log_path.read_text(errors="replace"):
                log.close()
                return None
            if process.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                raise RuntimeError(
                    "PostgreSQL did not start: " + log_path.read_text()[-2000:]
                ) from None
            time.sleep(0.1)


def stop_server(server: PostgresServer) -> None:
    """Stop the server quickly and remove its files."""
    if server.process.poll() is None:
        # SIGQUIT is PostgreSQL's "immediate" shutdown: the cluster is thrown away anyway.
        server.process.send_signal(signal.SIGQUIT)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (skip, or fail in CI, without binaries)."""
    if find_binaries() is None:
        reason = "PostgreSQL binaries not found (install the postgresql package)"
        if os.environ.get("POINTD_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"POINTD_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped afterwards."""
    dsn = postgres_server.fresh_database()
    yield dsn
    # Hundreds of left-over databases make the final clean-up take seconds of disk I/O.
    postgres_server.drop_database(dsn)
