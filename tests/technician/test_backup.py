"""``pointctl backup`` while the real ``pointd run`` sells, and the restore procedure.

Rules under test (docs/operations.md, "Back up and restore the journal"): a backup made
while sales run is one consistent journal (the SQLite integrity check passes, and every
sale's projection points at an event the copy holds), written 0600 where the technician
asked; restoring it is stopping the daemon, putting the copy in the journal's place
(without the old -wal and -shm) and starting again, and the restored daemon knows every
sale of the copy and carries on with the one that was held when the copy was taken.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from pointd.rig import RigLane
from tests.e2e_daemon.harness import (
    CONFIRMATION_APPROVED_CENTS,
    SIM_SALE_SECONDS,
    SIM_SETTLE_SECONDS,
)
from tests.technician.conftest import DEVICE, OTHER_DEVICE, OpenShop, Shop

pytestmark = pytest.mark.slow


async def _backup(shop: Shop, target: Path) -> None:
    code, out, err = await shop.pointctl_text("backup", "-o", str(target))
    assert code == 0, err
    assert f"written_to: {target}" in out
    assert "check:      ok (sqlite integrity_check)" in out


def _restore(backup: Path, journal: Path) -> None:
    """What docs/operations.md says to do with the daemon stopped."""
    for suffix in ("-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, journal)
    os.chmod(journal, 0o600)


def _consistent(path: Path) -> set[str]:
    """The receipts of the sales in a backup, after checking it is one consistent journal."""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        dangling = db.execute(
            "SELECT sale_id FROM sales s WHERE NOT EXISTS "
            "(SELECT 1 FROM events e WHERE e.seq = s.last_seq AND e.sale_id = s.sale_id)"
        ).fetchall()
        assert dangling == []
        return {row[0] for row in db.execute("SELECT correlation_id FROM sales")}
    finally:
        db.close()


async def test_backups_while_selling_are_consistent_and_restore_the_store(
    open_shop: OpenShop, tmp_path: Path
) -> None:
    async with open_shop(lanes=(RigLane(1, DEVICE), RigLane(2, OTHER_DEVICE))) as shop:
        await shop.lane_ready()
        await shop.lane_ready(2)
        taken: list[tuple[Path, asyncio.Task[None]]] = []
        for number in range(3):
            # Each backup starts while a sale is between its create and its payment.
            sale = shop.sale(2500, f"b-{number}")
            await shop.until_intent(f"b-{number}")
            target = tmp_path / f"journal-{number}.sqlite3"
            taken.append((target, asyncio.create_task(_backup(shop, target))))
            await shop.rig.sim.advance(SIM_SALE_SECONDS)
            await shop.hand_over(await sale)
            await taken[-1][1]
            await asyncio.sleep(1.0)  # the backup method's rate limit (once a second)
        for target, _task in taken:
            assert {"b-0"} <= _consistent(target)

        held = shop.sale(CONFIRMATION_APPROVED_CENTS, "b-held")
        await shop.until_intent("b-held")
        await shop.rig.sim.advance(SIM_SALE_SECONDS)
        await shop.wait_status("the sale held", lambda s: s["holds"] == 1)
        backup = tmp_path / "before-the-disk-died.sqlite3"
        await _backup(shop, backup)
        assert _consistent(backup) == {"b-0", "b-1", "b-2", "b-held"}
        # A sale after the backup: the restore takes the journal back to before it.
        await shop.approved_sale("after-the-backup", lane=2)

        # The restore procedure of docs/operations.md.
        assert await shop.rig.stop_daemon() == 0
        held.cancel()
        _restore(backup, shop.rig.state_dir / "journal.sqlite3")
        await shop.rig.start_daemon()

        _code, listing = await shop.pointctl("sales")
        assert {row["correlation_id"] for row in listing["sales"]} == {
            "b-0", "b-1", "b-2", "b-held"}
        assert (await shop.status())["holds"] == 1
        # The restored daemon verifies the held payment once it settles, as before.
        await shop.rig.sim.advance(SIM_SETTLE_SECONDS)
        await shop.wait_status("the held sale released", lambda s: s["holds"] == 0)
        _code, listing = await shop.pointctl("sales")
        states = {row["correlation_id"]: row["state"] for row in listing["sales"]}
        assert states["b-held"] == "approved"
