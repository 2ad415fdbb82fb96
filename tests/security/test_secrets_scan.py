"""One whole run with real processes, then every byte it printed or wrote searched for secrets.

The store is the rig's (pointd.rig, as the demo and the other end-to-end tests start it), with
both product processes real: ``pointd relay`` (SQLite, webhook secret, one store's token
hash, admin token) and ``pointd run`` (access token, webhook secret and relay store token in
0600 files, relay configured), both at debug level, and pointctl; in this process the cloud
simulator, which signs its webhooks and sends them to the relay, and a register emulator on
a real pty. The run sells (approved, held then approved, declined), asks pointctl for
status, sales, a sale, holds, terminals, relay, methods and a support bundle, and takes a
few wrong turns on purpose (a wrong store token, a wrong admin token, a forged and a badly
formed signature, an IPN carrying credentials, an unknown sale). Then it scans the relay's
and the daemon's output, both SQLite databases with their WAL, the bundle member by member,
any export file, every answer the relay and the control socket gave, and the systemd notify
messages, for each configured secret and for any ``Bearer`` credential.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pointd.cloud.signature import sign
from pointd.core.states import SaleState
from pointd.register import messages as msg
from pointd.rig import RelayProcess, RigLane, RigSecrets, StoreRig, StoreSpec, toml_text
from tests.e2e_daemon.harness import (
    APPROVED_CENTS,
    COLLECTOR_ID,
    CONFIRMATION_APPROVED_CENTS,
    DEVICE,
    EVENT_TIMEOUT,
    LANE,
    LANGUAGE,
    PROJECT_ROOT,
    SIM_SALE_SECONDS,
    SIM_SETTLE_SECONDS,
    STORE_ID,
    Store,
    child_environment,
    eventually,
)
from tests.security.leaks import LeakScanner

pytestmark = pytest.mark.slow

# The simulator's Mercado Pago outcome for this amount (docs/simulator.md).
DECLINED_CENTS = 1200
INTAKE = "/mp/webhook"


@dataclass(frozen=True)
class Secrets:
    """Distinctive random secrets for one run; each value is (secret, its random core)."""

    access_token: tuple[str, str]
    webhook_secret: tuple[str, str]
    store_token: tuple[str, str]
    admin_token: tuple[str, str]

    @classmethod
    def fresh(cls) -> Secrets:
        """New random values, shaped like the real ones."""
        cores = [secrets.token_hex(16) for _ in range(4)]
        return cls(
            access_token=(f"APP_USR-{cores[0]}", cores[0]),
            webhook_secret=(f"whs{cores[1]}", cores[1]),
            store_token=(f"sto{cores[2]}", cores[2]),
            admin_token=(f"adm{cores[3]}", cores[3]),
        )

    def by_name(self) -> dict[str, tuple[str, str]]:
        """Name to (secret, core), for the scanner."""
        return {
            "access token": self.access_token,
            "webhook secret": self.webhook_secret,
            "relay store token": self.store_token,
            "relay admin token": self.admin_token,
        }


def private_file(path: Path, value: str) -> Path:
    """A secret file as an installer writes it: the value, a newline, mode 0600."""
    path.write_text(value + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return path


def store_spec(tmp: Path, keys: Secrets) -> StoreSpec:
    """The rig's store with every process real and talkative: ``pointd relay`` (SQLite, the
    webhook secret, this store's token hash, an admin token) and ``pointd run`` (access token,
    webhook secret and relay store token in 0600 files, the relay's canary on), both at
    debug level."""
    admin_file = private_file(tmp / "relay_admin_token", keys.admin_token[0])
    return StoreSpec(
        store_id=STORE_ID,
        collector_id=COLLECTOR_ID,
        language=LANGUAGE,
        lanes=(RigLane(LANE, DEVICE),),
        relay="process",
        relay_log_level="debug",
        relay_config={"storage": {"batch_wait": 0.001},
                      "admin": {"token_file": str(admin_file)}},
        daemon="process",
        start_daemon=False,
        sim={"time_scale": 0.0},
        daemon_config={
            "cloud": {"read_timeout": 5.0},
            "timers": {"poll_fallback_after": 1, "verify_initial_backoff": 1,
                       "verify_max_backoff": 1},
            "relay": {"canary_interval": 5, "silence_alarm": 10},
            "logging": {"level": "debug", "format": "json"},
        },
        secrets=RigSecrets(access_token=keys.access_token[0],
                           webhook_secret=keys.webhook_secret[0],
                           store_token=keys.store_token[0]),
    )


class Answers:
    """Every answer the relay and the control socket gave, kept for the scan."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def http(self, what: str, response: httpx.Response) -> httpx.Response:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.items.append((f"relay answer to {what}", f"{headers}\n\n{response.text}"))
        return response

    def pointctl(self, args: tuple[str, ...], out: str, err: str) -> None:
        self.items.append((f"pointctl {' '.join(args)}", out + "\n" + err))


async def pointctl(store: Store, answers: Answers, *args: str, json_out: bool = True) -> str:
    """Run pointctl (JSON or human output) and keep what it printed."""
    command = ("--json", *args) if json_out else args
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pointd.control.cli", "--socket", str(store.control_socket),
        *command,
        cwd=PROJECT_ROOT,
        env=child_environment({}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), EVENT_TIMEOUT)
    answers.pointctl(args, out.decode(), err.decode())
    return out.decode()


async def wrong_turns(relay: httpx.AsyncClient, keys: Secrets, answers: Answers) -> None:
    """Requests an attacker or a misconfigured store would send; each must be refused."""
    wrong = f"Bearer wrong{secrets.token_hex(12)}"
    response = answers.http(
        "a wrong store token",
        await relay.get(f"/stores/{STORE_ID}/events", headers={"authorization": wrong}),
    )
    assert response.status_code == 404
    response = answers.http(
        "the store token on another store's path",
        await relay.get(
            "/stores/other-store/events",
            headers={"authorization": f"Bearer {keys.store_token[0]}"},
        ),
    )
    assert response.status_code == 404
    response = answers.http(
        "a wrong admin token",
        await relay.get("/admin/stats", headers={"authorization": wrong}),
    )
    assert response.status_code == 403
    body = json.dumps({"id": "forged-intent", "state": "FINISHED"}).encode()
    forged = sign(f"not{keys.webhook_secret[0]}", data_id="forged-intent",
                  request_id="forged-1", ts=str(int(time.time())))
    refused = (("a forged signature", forged), ("a malformed signature", "ts=1,v1=zz"))
    for what, signature in refused:
        response = answers.http(
            what,
            await relay.post(
                INTAKE, content=body,
                headers={"x-signature": signature, "x-request-id": "forged-1",
                         "authorization": f"Bearer {keys.store_token[0]}"},
            ),
        )
        assert response.status_code == 401, response.text
    # A kept notification (IPN) that carries credentials: they must not be stored with it.
    response = answers.http(
        "an IPN carrying credentials",
        await relay.post(
            INTAKE, params={"topic": "payment", "id": "777"}, content=b"",
            headers={"authorization": f"Bearer {keys.admin_token[0]}",
                     "cookie": f"session={keys.store_token[0]}"},
        ),
    )
    assert response.status_code == 200, response.text


async def test_no_secret_reaches_any_output_of_a_whole_run(tmp_path: Path) -> None:
    keys = Secrets.fresh()
    answers = Answers()
    bundle = tmp_path / "support.tar.gz"
    async with StoreRig(tmp_path, store_spec(tmp_path, keys)) as rig:
        assert isinstance(rig.relay, RelayProcess)
        relay_log = rig.relay.child.log_path
        rig.config_path.write_text(toml_text(rig.config_document()), encoding="utf-8")
        store = Store(tmp_path, rig.sim, rig.registers[LANE], rig.notify, rig.config_path,
                      tmp_path / "control.sock")
        async with httpx.AsyncClient(base_url=rig.relay.url, timeout=EVENT_TIMEOUT) as relay:
            try:
                await store.start_daemon()
                await sell(store, answers)
                await wrong_turns(relay, keys, answers)
                await pointctl(store, answers, "sale", "no-such-sale")
                for args in (("status",), ("sales",), ("holds",), ("terminals",),
                             ("relay",), ("methods",), ("connections",)):
                    await pointctl(store, answers, *args)
                await pointctl(store, answers, "status", json_out=False)
                await pointctl(store, answers, "relay", json_out=False)
                await pointctl(store, answers, "bundle", "-o", str(bundle))
                stats = answers.http(
                    "admin stats",
                    await relay.get("/admin/stats", headers={
                        "authorization": f"Bearer {keys.admin_token[0]}"}),
                )
                for status in ("unrouted", "quarantined"):
                    answers.http(f"admin {status} events", await relay.get(
                        "/admin/events", params={"status": status},
                        headers={"authorization": f"Bearer {keys.admin_token[0]}"}))
                answers.http("metrics", await relay.get("/metrics"))
                assert await store.daemon.terminate() == 0
            finally:
                await store.close()
        notify_messages = list(rig.notify.messages)

    # The run really went through the relay: signed notifications reached the store.
    assert stats.status_code == 200
    [stream] = [s for s in stats.json()["stores"] if s["store"] == STORE_ID]
    assert stream["acked"] >= 3, stats.json()
    assert stats.json()["intake"].get("unauthorized", 0) >= 2
    assert bundle.exists()
    # Not a vacuous scan: each process wrote its log at the level this run asked for.
    assert '"event": "relay_started"' in relay_log.read_text()
    assert any(e.get("level") == "debug" for run in store.runs for e in run.log_entries())

    scanner = LeakScanner(keys.by_name())
    scanner.file(relay_log, "relay stdout/stderr")
    for number, run in enumerate(store.runs, 1):
        scanner.file(run.log_path, f"daemon run {number} stdout/stderr")
    scanner.sqlite(tmp_path / "journal.sqlite3")
    scanner.sqlite(tmp_path / "relay.sqlite3")
    members = scanner.tarball(bundle)
    assert members, "the support bundle is empty"
    exports = tmp_path / "exports"
    if exports.exists():
        scanner.tree(exports)
    for where, text in answers.items:
        scanner.text(where, text)
    for message in store.register.received:
        scanner.text("the register's screen and replies", repr(message))
    scanner.text("systemd notify messages", repr(notify_messages))
    assert scanner.leaks == [], "secrets leaked:\n" + scanner.report()
    # Positive control: the same scanner finds each secret where it is meant to be.
    control = LeakScanner(keys.by_name())
    for name in ("mp_access_token", "mp_webhook_secret", "relay_store_token", "relay_admin_token"):
        control.file(tmp_path / name)
    assert {leak.what.split(" (")[0] for leak in control.leaks} == set(keys.by_name())
    assert len(scanner.scanned) >= 20, scanner.scanned
    assert [entry for run in store.runs for entry in run.failures()] == []


async def sell(store: Store, answers: Answers) -> None:
    """Three sales: approved, held then approved, declined; handovers where allowed."""
    approved = store.sale(APPROVED_CENTS, "sec-approved")
    await store.shows("sec-approved", SaleState.OPEN)
    await store.sim.advance(SIM_SALE_SECONDS)
    assert (await asyncio.wait_for(approved, EVENT_TIMEOUT)).outcome is msg.Outcome.APPROVED
    await store.register.handover_done("sec-approved")

    held = store.sale(CONFIRMATION_APPROVED_CENTS, "sec-held")
    await store.shows("sec-held", SaleState.OPEN)
    await store.sim.advance(SIM_SALE_SECONDS)
    await eventually("HOLD", lambda: "sec-held" in store.register.held, EVENT_TIMEOUT)
    await pointctl(store, answers, "holds")
    await store.sim.advance(SIM_SETTLE_SECONDS)
    assert (await asyncio.wait_for(held, EVENT_TIMEOUT)).outcome is msg.Outcome.APPROVED
    await store.register.handover_done("sec-held")

    declined = store.sale(DECLINED_CENTS, "sec-declined")
    await store.shows("sec-declined", SaleState.OPEN)
    await store.sim.advance(SIM_SALE_SECONDS)
    assert (await asyncio.wait_for(declined, EVENT_TIMEOUT)).outcome is msg.Outcome.DECLINED

    code, listing = await store.pointctl("sales")
    assert code == 0
    for row in listing["sales"]:
        await pointctl(store, answers, "sale", row["sale_id"])
