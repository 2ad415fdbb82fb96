"""Device events and device refreshes, seen through pointctl on the real ``pointd run``.

Rules under test (seed 001; docs/terminals.md, docs/control-socket.md): ``pointctl
integrator`` shows the account's device-event channels and turns the e-mail channel on
(stating Mercado Pago's 30-minute delay) and off; ``pointctl terminals`` shows what a device
refresh saw change, with its time: a terminal's mode going PDV -> STANDALONE, the switch
back to PDV the daemon then asked for (``terminals.switch_to_pdv``, so the runtime really
passes the mode setter), a switch Mercado Pago refused because nobody is logged in on
the terminal, whose message says what to fix instead of "safe to retry", and a terminal
gone from the account's device list. ``pointd run
--check`` reports the lanes' terminal modes as the account's device list has them.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest

from pointd.control.client import ControlClient
from pointd.rig import RigLane
from pointd.sim.cloud import SimDevice
from tests.technician.conftest import DEVICE, OTHER_DEVICE, WAIT_CEILING, OpenShop, Shop

pytestmark = pytest.mark.slow

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
# The shortest refresh the configuration allows; the test waits for one refresh after it.
REFRESH_INTERVAL = 30


def _changes(terminals: dict[str, Any], lane: str) -> list[str]:
    [row] = [t for t in terminals["terminals"] if t["lane"] == lane]
    assert all(re.fullmatch(ISO, change["at"]) for change in row["changes"])
    return [change["change"] for change in row["changes"]]


async def _until_changed(shop: Shop, lane: str, text: str) -> dict[str, Any]:
    async def changed(client: ControlClient) -> dict[str, Any] | None:
        terminals: dict[str, Any] = await client.call("terminals")
        return terminals if any(text in change for change in _changes(terminals, lane)) else None

    return await shop.until(f"lane {lane} to show {text!r}", changed)


async def test_refresh_changes_and_refused_switches_show_in_pointctl_terminals(
    open_shop: OpenShop,
) -> None:
    devices = (
        SimDevice(id=DEVICE, pos_id=1, external_pos_id="LANE1"),
        SimDevice(id=OTHER_DEVICE, pos_id=2, external_pos_id="LANE2",
                  operating_mode="STANDALONE", logged_in=False),
    )
    async with open_shop(
        lanes=(RigLane(1, DEVICE), RigLane(2, OTHER_DEVICE)),
        sim={"devices": devices},
        daemon_config={"terminals": {"refresh_interval": REFRESH_INTERVAL,
                                     "switch_to_pdv": True}},
    ) as shop:
        # Start-up's refresh asked for lane 2's switch, and Mercado Pago refused it.
        terminals = await _until_changed(shop, "2", "nobody is logged into the device")
        [refusal] = _changes(terminals, "2")
        assert "log in on the terminal" in refusal
        assert "safe to retry" not in refusal
        code, text, _err = await shop.pointctl_text("terminals")
        assert code == 0
        assert re.search(rf"^2 +{OTHER_DEVICE} .* STANDALONE +terminal_not_pdv .*{ISO} "
                         r"Mercado Pago refused", text, re.MULTILINE), text

        code, out, _err = await shop.command("pointd.cli", "run", "--config",
                                             str(shop.rig.config_path), "--check")
        assert code == 1, out
        assert re.search(rf"^fail lane 2 terminal: {OTHER_DEVICE} is in STANDALONE mode\n"
                         r" +fix: switch it to PDV", out, re.MULTILINE), out
        assert f"ok   lane 1 terminal: {DEVICE} in PDV mode" in out
        assert "held by the running pointd" in out

        watch, _status = await shop.watch("--json")
        # Lane 2's terminal leaves the account (unlinked from the store at Mercado Pago),
        # and someone switches lane 1's terminal to STANDALONE, and it restarts.
        shop.rig.sim.world.devices.pop(OTHER_DEVICE)
        async with httpx.AsyncClient(base_url=shop.rig.sim.base_url) as http:
            answer = await http.patch(
                f"/point/integration-api/devices/{DEVICE}", json={"operating_mode": "STANDALONE"},
                headers={"authorization": f"Bearer {shop.rig.secrets.access_token}"})
            assert answer.status_code == 200, answer.text
            assert (await http.post(f"/_sim/devices/{DEVICE}/restart")).status_code == 200

        terminals = await _until_changed(shop, "1", "was switched to PDV mode")
        assert _changes(terminals, "1") == [
            f"Terminal {DEVICE} was switched to PDV mode. Restart the terminal: the change "
            "applies only after a restart.",
            f"terminal {DEVICE} mode PDV -> STANDALONE",
        ]
        event = await _terminal_event(shop, watch, "mode PDV -> STANDALONE")
        assert event["lane"] == "1"
        terminals = await _until_changed(shop, "2", "gone from the account's device list")
        assert _changes(terminals, "2")[0] == (
            f"terminal {OTHER_DEVICE} gone from the account's device list")


async def test_pointctl_integrator_turns_device_event_emails_on_and_off(
    open_shop: OpenShop,
) -> None:
    async with open_shop() as shop:
        code, text, _err = await shop.pointctl_text("integrator")
        assert code == 0
        assert re.search(r"^email: +no$", text, re.MULTILINE), text

        code, text, err = await shop.pointctl_text("integrator", "--enable-email")
        assert code == 0, err
        assert re.search(r"^email: +yes$", text, re.MULTILINE), text
        assert "about 30 minutes after the channel is enabled" in text
        assert await _sim_channels(shop) == ["email"]

        code, answer = await shop.pointctl("integrator", "--disable-email")
        assert code == 0
        assert (answer["email"], answer["event_channel_devices"]) == (False, [])
        assert await _sim_channels(shop) == []


async def _sim_channels(shop: Shop) -> list[str]:
    async with httpx.AsyncClient(base_url=shop.rig.sim.base_url) as http:
        answer = await http.get(
            "/point/integration-api/integrator",
            headers={"authorization": f"Bearer {shop.rig.secrets.access_token}"})
    channels: list[str] = answer.json()["event_channel_devices"]
    return channels


async def _terminal_event(shop: Shop, watch: asyncio.subprocess.Process, text: str
                          ) -> dict[str, Any]:
    assert watch.stdout is not None
    try:
        async with asyncio.timeout(WAIT_CEILING):
            while True:
                line = await watch.stdout.readline()
                assert line, "pointctl watch ended"
                event = json.loads(line)
                if event["event"] == "terminal" and any(
                    text in change["change"] for change in event["data"]["changes"]
                ):
                    data: dict[str, Any] = event["data"]
                    return data
    finally:
        await shop.stop_watch(watch)
