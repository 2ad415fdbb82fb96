"""A configured ``[[usb_vendors]]`` entry makes the daemon see that vendor's device as a terminal.

Rule under test (docs/terminals.md, "USB vendor table"): pointd treats a USB device as a
terminal only when its vendor id is in the table, and a vendor added in ``pointd.toml`` is
looked for as the built-in ones are. Lane 1's terminal here sits on an FTDI chip (vendor
0403, a register cable's, in no terminal vendor's list); lane 2's is a Gertec, a built-in
vendor, so its lane being ready shows the bus was scanned. The daemon is the runtime
in-process: only there does the simulated USB bus replace libusb.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pointd.control.client import ControlClient
from pointd.rig import RigLane, StoreRig, StoreSpec
from tests.e2e_daemon.harness import EVENT_TIMEOUT, eventually_async

# (lane, USB model on the simulated bus, its serial, the Mercado Pago device id)
LANES = ((1, "ftdi-ft232r", "1234345545", "PAX_A910__1234345545"),
         (2, "gertec-mp35p", "8701016695109435", "GERTEC_MP35P__8701016695109435"))


@pytest.mark.parametrize(
    ("vendors", "lane_1"),
    [([{"name": "Acme Point", "vendor_id": "0403"}], "ready"),
     ([], "terminal_not_connected")],
    ids=["configured", "not-configured"],
)
async def test_a_configured_vendor_is_looked_for_like_a_built_in_one(
    tmp_path: Path, vendors: list[dict[str, str]], lane_1: str
) -> None:
    spec = StoreSpec(
        store_id="vendor-shop", relay="none", daemon="in-process", sim={"time_scale": 0.0},
        lanes=tuple(RigLane(lane, device, usb=(model, serial), pin_by_serial=True)
                    for lane, model, serial, device in LANES),
        daemon_config={"terminals": {"usb_rescan_interval": 1.0},
                       **({"usb_vendors": vendors} if vendors else {})},
    )
    async with StoreRig(tmp_path, spec) as rig:
        await rig.hello_all()
        async with await ControlClient.connect(rig.state_dir / "control.sock") as client:
            conditions: dict[str, Any] = {}

            async def lane_2_ready() -> bool:
                status = await client.call("status")
                conditions.update({row["lane"]: row["terminal_condition"]
                                   for row in status["lanes"]})
                return conditions["2"] == "ready" and conditions["1"] == lane_1

            await eventually_async(f"lane 2 ready and lane 1 {lane_1}", lane_2_ready,
                                   EVENT_TIMEOUT * 4)
