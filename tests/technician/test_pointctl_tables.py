"""Every pointctl command against the real ``pointd run``: readable tables, ISO times, --json.

Rules under test (docs/control-socket.md, "pointctl"): each command prints a table or
``key: value`` lines, never raw JSON, with every time as ISO-8601 UTC and durations in
seconds, minutes or hours; ``--json`` works before or after the command; a sale's
timeline shows the state each event left it in; ``holds`` shows the register's receipt and
``override --receipt`` settles the held sale it names; ``pointd sim --help`` lists the
simulators.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e_daemon.harness import CONFIRMATION_APPROVED_CENTS, SIM_SALE_SECONDS
from tests.technician.conftest import OpenShop, Shop

pytestmark = pytest.mark.slow

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
EPOCH = re.compile(r"(?<![\d.])1[6-9]\d{8}(\.\d+)?(?![\d.])")
LONG_FLOAT = re.compile(r"\d\.\d{4,}")


def _readable(command: str, text: str) -> None:
    assert text.strip(), f"pointctl {command} printed nothing"
    assert '{"' not in text, f"pointctl {command} printed JSON:\n{text}"
    assert not EPOCH.search(text), f"pointctl {command} printed an epoch time:\n{text}"
    assert not LONG_FLOAT.search(text), f"pointctl {command} printed a long float:\n{text}"


async def _both_ways(shop: Shop, *args: str) -> str:
    """The human output, after checking --json parses in both places."""
    code, text, err = await shop.pointctl_text(*args)
    assert code in (0, 4), (args, code, err)
    _readable(" ".join(args), text)
    for flags in ((*args, "--json"), ("--json", *args)):
        json_code, out, err = await shop.pointctl_text(*flags)
        assert json_code == code, (flags, err)
        json.loads(out)
    return text


async def test_every_command_reads_like_a_table_and_json_goes_anywhere(
    open_shop: OpenShop,
) -> None:
    async with open_shop(relay="process") as shop:
        await shop.lane_ready()
        await shop.approved_sale("t-1")
        held = shop.sale(CONFIRMATION_APPROVED_CENTS, "t-held")
        await shop.until_intent("t-held")
        await shop.rig.sim.advance(SIM_SALE_SECONDS)
        await shop.wait_status("the sale held", lambda s: s["holds"] == 1)
        _code, listing = await shop.pointctl("sales")
        by_receipt = {row["correlation_id"]: row for row in listing["sales"]}
        paid = by_receipt["t-1"]

        status = await _both_ways(shop, "status")
        assert ISO.search(status)
        assert re.search(r"^uptime: +\d+\.\d s$", status, re.MULTILINE), status
        assert "t-held" in status
        assert status.count("is held: do not hand over") == 1  # one problem, once

        sales = await _both_ways(shop, "sales")
        assert re.search(rf"^{paid['sale_id']} +t-1 +1 +handed_over +25\.00 +{ISO.pattern}",
                         sales, re.MULTILINE), sales

        sale = await _both_ways(shop, "sale", paid["sale_id"])
        timeline = sale[sale.index("AT "):].splitlines()
        assert timeline[0].split()[:3] == ["AT", "EVENT", "STATE"]
        states = [line.split()[2] for line in timeline[1:]]
        assert "approved" in states
        assert states[-1] == "handed_over"
        assert all(ISO.fullmatch(line.split()[0]) for line in timeline[1:])

        holds = await _both_ways(shop, "holds")
        assert re.search(r"^\S+ +t-held +1 +held ", holds, re.MULTILINE), holds

        terminals = await _both_ways(shop, "terminals")
        assert "PAX_A910__SMARTPOS1234345545" in terminals

        relay = await _both_ways(shop, "relay")
        assert re.search(rf"^last event: +{ISO.pattern} \(\d+\.\d s ago\)$", relay,
                         re.MULTILINE), relay
        _code, relay_json = await shop.pointctl("relay")
        assert relay_json["last_event_age"] == round(relay_json["last_event_age"], 1)

        connections = await _both_ways(shop, "connections")
        assert re.search(rf"^\d+ +\d+ +admin +{ISO.pattern}", connections, re.MULTILINE)

        methods = await _both_ways(shop, "methods")
        assert "integrator" in methods

        # reconcile may run once every 10 s: the human output only.
        code, reconcile, err = await shop.pointctl_text("reconcile")
        assert code == 0, err
        _readable("reconcile", reconcile)
        assert re.search(r"^\S+ +held +fetch payment \d+$", reconcile, re.MULTILINE), reconcile

        code, text, err = await shop.pointctl_text(
            "override", "--receipt", "t-held", "--release", "--reason", "slip seen by manager")
        assert code == 0, err
        _readable("override", text)
        assert "correlation_id: t-held" in text
        assert "state:          overridden" in text
        outcome = await held
        assert outcome.correlation_id == "t-held"
        assert (await shop.status())["holds"] == 0


async def test_pointd_sim_help_lists_the_simulators(open_shop: OpenShop) -> None:
    async with open_shop(start=False) as shop:
        code, out, _err = await shop.command("pointd.cli", "sim", "--help")
        assert code == 0
        for simulator in ("sim cloud", "sim register", "sim usb"):
            assert simulator in out
        code, _out, err = await shop.command("pointd.cli", "sim")
        assert code == 2
        assert "sim cloud" in err
