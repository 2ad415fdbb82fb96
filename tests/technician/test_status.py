"""A lane without its register is not ready, and systemd's STATUS= line says why.

Rules under test (docs/operations.md, "pointd.service"): READY=1 comes once the daemon
serves (a missing register must not keep pointctl away from the technician looking for
it), but the lane's condition is ``register_not_connected``, ``pointctl status`` exits 4
and names since when and why, and STATUS= is the one-line summary (``0/1 lanes ready, …;
lane 1: register not connected since …``), never the latest event. Once the port appears
the lane is ready and the summary says so.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from tests.e2e_daemon.harness import eventually
from tests.technician.conftest import DEVICE, WAIT_CEILING, OpenShop

pytestmark = pytest.mark.slow

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


async def test_a_missing_register_port_is_a_lane_not_ready_with_the_reason(
    open_shop: OpenShop,
) -> None:
    async with open_shop(start=False) as shop:
        later = shop.rig.state_dir / "register-plugged-later"
        shop.rig.spec = dataclasses.replace(shop.rig.spec, daemon_config={
            **shop.rig.spec.daemon_config,
            "lanes": [{"number": 1, "register": str(later), "baud": 115200, "terminal": DEVICE}],
        })
        await shop.rig.start_daemon()
        run = shop.rig.latest_run

        status = await shop.wait_status("the register problem",
                                        lambda s: bool(s["problems"]))
        [lane] = status["lanes"]
        assert lane["condition"] == "register_not_connected"
        assert lane["terminal_condition"] == "ready"
        assert lane["register"]["connected"] is False
        [problem] = status["problems"]
        assert re.fullmatch(rf"lane 1: register not connected since {ISO} \(cannot open "
                            rf"{re.escape(str(later))}: .*No such file or directory.*\)", problem)
        code, text, _err = await shop.pointctl_text("status")
        assert code == 4
        assert re.search(r"^1 +register_not_connected +\S+ +DOWN", text, re.MULTILINE), text
        await eventually(
            "STATUS= to name the missing register",
            lambda: run.seen("STATUS")
            and run.seen("STATUS")[-1]["STATUS"].startswith(
                "0/1 lanes ready, no relay (polling Mercado Pago); lane 1: register not "
                "connected since "),
            WAIT_CEILING,
        )

        later.symlink_to(shop.rig.registers[1].device_path)
        status = await shop.lane_ready()
        assert status["problems"] == []
        await run.notify.wait("STATUS", "1/1 lanes ready, no relay (polling Mercado Pago)",
                              since=run.notify_from, within=WAIT_CEILING)
        code, text, _err = await shop.pointctl_text("status")
        assert code == 0
        assert re.search(r"^1 +ready +\S+ +up", text, re.MULTILINE), text
