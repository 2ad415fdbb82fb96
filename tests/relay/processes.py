"""Real ``pointd relay`` processes for tests: a relay.toml, the process, and its log lines."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.relay.harness import ADMIN_TOKEN, IO_TIMEOUT, SECRET, TOKENS

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, backend: str, dsn: str | None, extra: str = "") -> Path:
    """A relay.toml with secrets in their own 0600 files; ``extra`` is appended TOML."""
    for name, value in (("secret", SECRET), ("admin", ADMIN_TOKEN), ("dsn", dsn or "unused")):
        path = tmp_path / name
        path.write_text(value)
        path.chmod(0o600)
    stores = "".join(
        f'[[stores]]\nid = "{store}"\ntoken_sha256 = "{hashlib.sha256(t.encode()).hexdigest()}"\n'
        for store, t in TOKENS.items()
    )
    storage = (
        'backend = "postgres"\npostgres_dsn_file = "./dsn"\n'
        if backend == "postgres"
        else 'backend = "sqlite"\nsqlite_path = "relay.sqlite3"\n'
    )
    config = tmp_path / "relay.toml"
    config.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 8080\n'
        '[intake]\nwebhook_secret_file = "./secret"\n'
        f"[storage]\n{storage}batch_wait = 0.001\n"
        '[admin]\ntoken_file = "./admin"\n' + extra + "\n" + stores
    )
    return config


class RelayLog:
    """The relay's JSON log lines as they arrive on its stdout."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def add(self, line: bytes) -> None:
        sys.stdout.write(line.decode(errors="replace"))  # shown by pytest when a test fails
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                self.entries.append(entry)
                self._changed.set()

    async def wait_for(self, event: str) -> dict[str, Any]:
        """The first entry named ``event``, waiting for it up to IO_TIMEOUT seconds."""

        async def first() -> dict[str, Any]:
            while True:
                for entry in self.entries:
                    if entry.get("event") == event:
                        return entry
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(first(), IO_TIMEOUT)


@contextlib.asynccontextmanager
async def relay_process(
    config: Path, port: int = 0
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, RelayLog]]:
    """Run ``python -m pointd.relay`` (on any free port unless ``port``); yield it, its base
    URL once it listens, and its log."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pointd.relay",
        "--config",
        str(config),
        "--port",
        str(port),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=None,  # a relay that fails to start says why in the test output
    )
    assert process.stdout is not None
    log = RelayLog()
    try:
        url = None
        while url is None:
            line = await asyncio.wait_for(process.stdout.readline(), IO_TIMEOUT)
            if not line:
                raise RuntimeError("relay exited before listening")
            log.add(line)
            found = re.search(rb"listening on (http://[0-9.:]+)/", line)
            url = found.group(1).decode() if found else None
        drain = asyncio.create_task(_drain(process.stdout, log))
        yield process, url, log
        drain.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _drain(stream: asyncio.StreamReader, log: RelayLog) -> None:
    while line := await stream.readline():
        log.add(line)
