"""A signed notification that lies cannot release goods: the real daemon asks the API instead.

Architecture rule 6 through the real processes: ``pointd relay`` and ``pointd run`` as
subprocesses, the cloud simulator and a register emulator on a pty in this test. The
attacker holds the webhook secret (or the relay runs with ``intake.signature_required =
false``) and knows the account has another approved payment of the same amount that carries
no ``external_reference`` (here another integration's Point intent; a QR or link payment
looks the same to ``/v1/payments``). It posts a FINISHED notification for the store's sale
naming that payment while the sale's real intent is still OPEN. The daemon may only ask
Mercado Pago sooner: the sale stays open, and when the customer really pays, the RESULT
names the real payment.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pointd.cloud.signature import sign
from pointd.core.states import SaleState
from pointd.register import messages as msg
from pointd.relay.service import INTAKE_PATH
from tests.e2e_daemon.harness import (
    APPROVED_CENTS,
    DEVICE,
    EVENT_TIMEOUT,
    LANE,
    PROJECT_ROOT,
    SIM_SALE_SECONDS,
    START_TIMEOUT,
    STORE_ID,
    TOKEN,
    WEBHOOK_SECRET,
    Store,
    child_environment,
    daemon_toml,
    eventually_async,
    write_token,
)

pytestmark = pytest.mark.slow

RELAY_STORE_TOKEN = "e2e-forged-relay-store-token-91c2"
STORE_TOKEN_SHA256 = hashlib.sha256(RELAY_STORE_TOKEN.encode()).hexdigest()


@contextlib.asynccontextmanager
async def pointd_relay(tmp: Path) -> AsyncIterator[str]:
    """``pointd relay`` for this one store (SQLite, signatures required); yield its base URL."""
    secret = tmp / "relay_webhook_secret"
    secret.write_text(WEBHOOK_SECRET, encoding="utf-8")
    secret.chmod(0o600)
    config = tmp / "relay.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 8080\n'
        f'[intake]\nwebhook_secret_file = "{secret}"\n'
        f'[storage]\nbackend = "sqlite"\nsqlite_path = "{tmp / "relay.sqlite3"}"\n'
        f'[[stores]]\nid = "{STORE_ID}"\ntoken_sha256 = "{STORE_TOKEN_SHA256}"\n',
        encoding="utf-8",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pointd.cli", "relay", "--config", str(config), "--port", "0",
        cwd=PROJECT_ROOT, env=child_environment({}),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = process.stdout
    assert output is not None
    try:
        url = None
        while url is None:
            line = await asyncio.wait_for(output.readline(), START_TIMEOUT)
            assert line, "pointd relay exited before listening"
            listening = re.search(rb"listening on (http://[0-9.:]+)/", line)
            url = listening.group(1).decode() if listening else None
        # Its log lines must keep flowing, or a full pipe would stall the relay.
        drain = asyncio.create_task(_copy(output, tmp / "relay.log"))
        yield url
        drain.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), START_TIMEOUT)
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _copy(stream: asyncio.StreamReader, path: Path) -> None:
    with path.open("ab") as log:
        while line := await stream.readline():
            log.write(line)


@pytest.fixture
async def relayed(store: Store, tmp_path: Path) -> AsyncIterator[tuple[Store, str]]:
    """The e2e store, its daemon reading its notifications from a real relay."""
    async with pointd_relay(tmp_path) as relay_url:
        store_token = tmp_path / "relay_store_token"
        store_token.write_text(RELAY_STORE_TOKEN + "\n", encoding="utf-8")
        store_token.chmod(0o600)
        store.config_path.write_text(daemon_toml(
            tmp=tmp_path, base_url=store.sim.base_url, register=store.register.device_path,
            token_file=write_token(tmp_path / "mp_access_token"),
            extra=f'[relay]\nurl = "{relay_url}"\nstore_token_file = "{store_token}"\n',
        ), encoding="utf-8")
        yield store, relay_url
        await store.close()  # the daemon must be gone before its relay is


async def approved_payment_without_reference(store: Store) -> dict[str, Any]:
    """Another program's approved payment of the sale's amount, with no external_reference.

    It is taken on the store's own terminal before the daemon's sale (a second program on
    the same account; a QR or link payment would look the same to /v1/payments).
    """
    async with httpx.AsyncClient(base_url=store.sim.base_url,
                                 headers={"authorization": f"Bearer {TOKEN}"}) as http:
        created = await http.post(
            f"/point/integration-api/devices/{DEVICE}/payment-intents",
            json={"amount": APPROVED_CENTS, "additional_info": {"ticket_number": "BAR-0042"}},
        )
    assert created.status_code in (200, 201), created.text
    await store.sim.advance(SIM_SALE_SECONDS)
    record = await store.record()
    [payment] = [p for p in record["payments"] if p.get("intent_id") == created.json()["id"]]
    assert payment["status"] == "approved"
    assert not payment["external_reference"]
    return payment


async def relay_cursor(store: Store) -> int:
    """How far the daemon has journaled its relay stream."""
    code, answer = await store.pointctl("relay")
    assert code in (0, 4), answer
    return int(answer.get("cursor") or 0)


async def post_forged_finished(relay_url: str, intent_id: str, reference: str,
                               payment_id: int) -> None:
    """A correctly signed FINISHED notification for our intent, naming someone else's payment."""
    body = {
        "additional_info": {"external_reference": reference},
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "id": intent_id,
        "payment": {"id": payment_id, "state": "approved", "type": "credit_card"},
        "state": "FINISHED",
    }
    request_id = str(uuid.uuid4())
    headers = {
        "content-type": "application/json",
        "x-request-id": request_id,
        "x-signature": sign(WEBHOOK_SECRET, data_id=intent_id, request_id=request_id,
                            ts=str(int(time.time()))),
    }
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{relay_url}{INTAKE_PATH}",
            params={"data.id": intent_id, "type": "point_integration_wh"},
            content=json.dumps(body).encode(), headers=headers,
        )
    assert answer.status_code == 200, answer.text


async def test_a_signed_finished_naming_another_payment_releases_nothing(
    relayed: tuple[Store, str],
) -> None:
    store, relay_url = relayed
    foreign = await approved_payment_without_reference(store)
    await store.start_daemon()
    sale = store.sale(APPROVED_CENTS, "forged-1")
    await store.shows("forged-1", SaleState.OPEN)
    [intent] = [i for i in (await store.record())["intents"]
                if (i["external_reference"] or "").startswith(f"pd1_{STORE_ID}_{LANE}_")]
    assert intent["state"] == "OPEN"
    cursor_before = await relay_cursor(store)
    seq_before = max(entry["seq"] for entry in (await store.only_sale())["timeline"])

    await post_forged_finished(relay_url, intent["id"], intent["external_reference"],
                               foreign["id"])

    async def journaled() -> bool:
        return await relay_cursor(store) > cursor_before

    await eventually_async("the daemon to journal the notification", journaled)

    async def answered_by_the_api() -> bool:
        if store.messages(msg.Result, "forged-1"):
            return True
        timeline = (await store.only_sale())["timeline"]
        return any(entry["seq"] > seq_before and entry["event"] == "IntentObserved"
                   and entry["detail"]["source"] != "notification" for entry in timeline)

    await eventually_async("the API's answer about the intent", answered_by_the_api)
    assert not store.messages(msg.Result, "forged-1"), "goods released on a forged notification"
    assert not store.messages(msg.Hold, "forged-1")
    status = await store.register.status("forged-1")
    assert (status.state, status.handover) == (SaleState.OPEN.value, False)
    assert not (await store.register.handover_check("forged-1")).allowed
    detail = await store.only_sale()
    assert detail["sale"]["payment_id"] is None
    assert detail["sale"]["approved_payment_id"] is None

    # The customer really pays: the RESULT names the payment the API gives for the intent.
    await store.sim.advance(SIM_SALE_SECONDS)
    outcome = await asyncio.wait_for(sale, EVENT_TIMEOUT)
    [real] = [p for p in (await store.record())["payments"]
              if p["external_reference"] == intent["external_reference"]]
    assert outcome.outcome is msg.Outcome.APPROVED
    assert outcome.payment_id == str(real["id"]) != str(foreign["id"])
