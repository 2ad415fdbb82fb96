"""A technician's refund through the real control socket, engine, journal and simulator."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pointd.app.control_handlers import DaemonHandlers, journal_audit
from pointd.control.client import ControlClient
from pointd.control.errors import RemoteError
from pointd.control.methods import register_daemon_methods
from pointd.control.server import ControlServer
from tests.app_control.conftest import FakeLinks, FakeRelay, FakeTerminals
from tests.refunds.conftest import START, STORE, Rig


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes, too short for pytest's tmp_path.
    path = Path(tempfile.mkdtemp(prefix="pdrf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def control(rig: Rig, sock_dir: Path) -> AsyncIterator[ControlClient]:
    server = ControlServer(sock_dir / "control.sock",
                           record_audit=journal_audit(rig.journal, rig.clock))
    handlers = DaemonHandlers(
        engine=rig.engine, journal=rig.journal, cloud=rig.cloud, terminals=FakeTerminals(),
        relay=FakeRelay(), links=FakeLinks(), events=server, config={"store": {"id": STORE}},
        secrets=[], clock=rig.clock, started_at=START, recent_logs=list,
    )
    handlers.ready = True
    register_daemon_methods(server, handlers)
    await server.start()
    client = await ControlClient.connect(server.path)
    try:
        yield client
    finally:
        await client.close()
        await server.close()


async def test_refund_from_the_control_socket(rig: Rig, control: ControlClient) -> None:
    sale_id = await rig.paid_sale(1500)

    answer = await control.call("refund", {"sale_id": sale_id, "amount_cents": 400})
    assert (answer["sale_id"], answer["amount_cents"]) == (sale_id, 400)
    assert answer["idempotency_key"] == f"rf_{sale_id}_1"
    assert answer["by"].startswith("control uid ")
    refund = await rig.settle(answer["refund_id"])
    assert refund.status.value == "refunded"
    assert rig.refunded_cents(sale_id) == 400

    with pytest.raises(RemoteError) as over:
        await control.call("refund", {"sale_id": sale_id, "amount_cents": 1101})
    assert over.value.code == "conflict"
    assert "over_amount" in over.value.message
    assert rig.refunded_cents(sale_id) == 400

    with pytest.raises(RemoteError) as unknown:
        await control.call("refund", {"sale_id": "NOSUCHSALE"})
    assert unknown.value.code == "not_found"

    rest = await control.call("refund", {"sale_id": sale_id})
    assert rest["amount_cents"] == 1100
    await rig.settle(rest["refund_id"])
    assert rig.refunded_cents(sale_id) == 1500

    detail = await control.call("sale", {"sale_id": sale_id})
    assert [(r["amount_cents"], r["status"]) for r in detail["sale"]["refunds"]] == [
        (400, "refunded"), (1101, "refused"), (1100, "refunded")]
    outcomes = [(e.outcome, e.args.get("amount_cents")) for e in
                reversed(rig.journal.audit_log()) if e.method == "refund"]
    assert outcomes == [
        ("requested", 400), ("done", 400), ("requested", 1101), ("refused: conflict", 1101),
        ("requested", None), ("refused: not_found", None), ("requested", None), ("done", None),
    ]
