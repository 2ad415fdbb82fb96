"""The one failure path, in the real ``pointd run`` process: any essential part that dies
stops the watchdog pings, sets ``STATUS=`` to the reason and exits 1 for systemd to restart.

Each part is killed the way it could die in a store: the journal's write lock held by
another program, the control socket removed, a register port that can never work again,
a relay client whose requests are cancelled. The last two need a port the test owns:
``tests/support/faulty_ports.py`` runs the same ``serve`` with one production port
swapped; the product has no fault hook of its own.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest

from pointd.core.states import SaleState
from pointd.rig import DaemonRun, InProcessRelay, relay_config, relay_document
from tests.e2e_daemon.harness import (
    APPROVED_CENTS,
    EVENT_TIMEOUT,
    SIM_SALE_SECONDS,
    STORE_ID,
    WEBHOOK_SECRET,
    Store,
    daemon_toml,
    write_token,
)

pytestmark = pytest.mark.slow

EXIT_FAILED = 1
# The journal gives up on a held write lock after 5 s (LOCK_TIMEOUT); the engine's health
# is looked at every second after that; the stop then takes well under a second.
FAILURE_TIMEOUT = 60.0
RELAY_TOKEN = "e2e-failure-relay-token"


async def failed_with(run: DaemonRun, reason: str) -> str:
    """Wait for the daemon to exit 1 having said why; check it stopped feeding the watchdog."""
    run.failure_expected = True
    code = await run.wait_exit(FAILURE_TIMEOUT)
    assert code == EXIT_FAILED, run.log_tail()
    statuses = [m["STATUS"] for m in run.seen("STATUS") if m["STATUS"].startswith("failed: ")]
    assert statuses, f"no STATUS=failed: ...\n{run.log_tail()}"
    assert reason in statuses[0], statuses
    messages = run.notify.messages[run.notify_from:]
    failed_at = next(i for i, m in enumerate(messages) if m.get("STATUS") == statuses[0])
    assert any("WATCHDOG" in m for m in messages[:failed_at]), "the watchdog was never fed"
    assert not any("WATCHDOG" in m for m in messages[failed_at:]), "fed after the failure"
    assert not any("STOPPING" in m for m in messages), "a failure is not a requested stop"
    return statuses[0]


async def test_a_journal_that_cannot_be_written_fails_the_daemon(store: Store) -> None:
    run = await store.start_daemon()
    # Another program (a sqlite3 shell left inside a transaction) holds the write lock.
    holder = sqlite3.connect(store.tmp / "journal.sqlite3", isolation_level=None, timeout=1)
    try:
        holder.execute("BEGIN IMMEDIATE")
        store.sale(APPROVED_CENTS, "jf-1")
        status = await failed_with(run, "engine failed")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "journal could not be written" in status
    # The restarted daemon finds the journal as it was: the refused sale never happened.
    await store.start_daemon()
    code, listing = await store.pointctl("sales")
    assert code == 0
    assert listing["sales"] == []


async def test_a_removed_control_socket_fails_the_daemon(store: Store) -> None:
    run = await store.start_daemon()
    os.unlink(store.control_socket)
    status = await failed_with(run, "control-socket failed")
    assert "was removed" in status
    # What systemd does next: a new daemon binds a new socket and answers pointctl.
    await store.start_daemon()
    assert store.control_socket.exists()


async def test_a_register_port_that_can_never_work_again_fails_the_daemon(store: Store) -> None:
    trigger = store.tmp / "register-port-unusable"
    run = await store.spawn(faulty("register", store, trigger))
    await run.wait_ready()
    await store.register.hello(EVENT_TIMEOUT)
    trigger.touch()
    await store.register.unplug()  # the daemon's link drops and tries to reopen the port
    status = await failed_with(run, "register-1 failed")
    assert "LinkConfigError" in status


async def test_a_relay_consumer_that_ends_fails_the_daemon(store: Store, tmp_path: Path) -> None:
    document = relay_document(sqlite_path=tmp_path / "relay.sqlite3",
                              stores={STORE_ID: RELAY_TOKEN})
    relay = InProcessRelay(relay_config(document), WEBHOOK_SECRET, clock=time.time)
    await relay.start()
    try:
        store_token = tmp_path / "relay_store_token"
        store_token.write_text(RELAY_TOKEN, encoding="utf-8")
        store_token.chmod(0o600)
        store.config_path.write_text(
            daemon_toml(tmp=tmp_path, base_url=store.sim.base_url,
                        register=store.register.device_path,
                        token_file=write_token(tmp_path / "mp_access_token"),
                        extra=f'[relay]\nurl = "{relay.url}"\n'
                              f'store_token_file = "{store_token}"\n'),
            encoding="utf-8",
        )
        trigger = tmp_path / "relay-requests-cancelled"
        run = await store.spawn(faulty("relay", store, trigger))
        await run.wait_ready()
        await store.wait_status("relay connected",
                                lambda status: status["relay"]["state"] == "connected")
        trigger.touch()
        # A stopping relay answers the waiting long-poll: the consumer's next request is
        # the first one the test's transport cancels.
        await relay.stop()
        status = await failed_with(run, "relay-consumer was cancelled")
    finally:
        await relay.stop()
    assert status.startswith("failed: relay-consumer")


async def test_a_sale_in_progress_survives_the_failure_and_the_restart(store: Store) -> None:
    run = await store.start_daemon()
    sale = store.sale(APPROVED_CENTS, "sf-1")
    await store.shows("sf-1", SaleState.OPEN)
    os.unlink(store.control_socket)
    await failed_with(run, "control-socket failed")
    # The customer pays while systemd restarts the daemon; recovery finishes the sale.
    await store.sim.advance(SIM_SALE_SECONDS)
    await store.start_daemon()
    outcome = await asyncio.wait_for(sale, EVENT_TIMEOUT)
    assert outcome.outcome.value == "approved"


def faulty(kind: str, store: Store, trigger: Path) -> tuple[str, list[str]]:
    """The test's entry point around ``serve`` with one port failing once ``trigger`` exists."""
    return ("tests.support.faulty_ports",
            ["--config", str(store.config_path), "--fault", kind, "--trigger", str(trigger)])
