"""status, sales, sale, holds, terminals and relay, answered from a real engine and journal."""

from __future__ import annotations

import pytest

from pointd.app.control_views import StatusView
from pointd.control import views
from pointd.control.errors import RemoteError
from pointd.core.events import OverrideDecision, OverrideGiven
from pointd.core.machine import forget_settled
from pointd.core.states import SaleState
from tests.app_control.conftest import T0, Rig


async def test_status_shows_daemon_lanes_relay_registers_and_the_held_sale(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")

    status = await rig.client.call("status")

    assert status["version"] == "0.1.0"
    assert status["started_at"] == "2026-11-18T11:05:00Z"
    assert status["uptime_s"] == 100.0
    assert status["ready"] is True
    assert status["healthy"] is True
    assert status["journal"] == str(rig.journal.path)
    assert status["cloud"] == {"reachable": True}
    assert status["relay"]["state"] == "connected"
    assert status["relay"]["connected"] is True
    assert status["relay"]["cursor"] == "42"
    lane1, lane2 = status["lanes"]
    assert lane1["lane"] == "1"
    assert lane1["condition"] == "ready"
    assert lane1["sale"] == {"sale_id": "S5", "correlation_id": "c-S5", "state": "held",
                             "amount_cents": 2599, "payment_id": "555"}
    assert lane1["register"]["connected"] is True
    assert lane1["register"]["since"] == "2026-11-18T11:06:10Z"
    assert lane2["sale"] is None
    assert status["holds"] == 1
    assert status["unfinished"] == 1
    assert len(status["problems"]) == 1
    assert status["problems"][0].startswith(
        "sale S5 (receipt c-S5) on lane 1 is held: do not hand over"
    )


async def test_status_lists_every_kind_of_problem(rig: Rig) -> None:
    rig.terminals.conditions[2] = "terminal_not_connected"
    rig.terminals.cloud_reachable = False
    rig.links.connected[1] = False
    rig.relay.status = {"state": "silent", "since": 1_795_000_000.0, "detail": "no canary"}

    status = await rig.client.call("status")

    problems = "\n".join(status["problems"])
    assert "Mercado Pago cannot be reached" in problems
    assert "relay silent since 2026-11-18T11:06:40Z: no canary" in problems
    assert "lane 2: terminal_not_connected" in problems
    assert "lane 1: register not connected" in problems
    assert status["lanes"][0]["condition"] == "register_not_connected"
    assert status["lanes"][0]["terminal_condition"] == "ready"
    assert status["relay"]["connected"] is False
    assert status["cloud"] == {"reachable": False}


async def test_the_runtime_reachability_overrides_the_lane_view(rig: Rig) -> None:
    rig.handlers.cloud_reachable = False
    status = await rig.client.call("status")
    assert status["cloud"] == {"reachable": False}


async def test_status_is_not_ready_until_the_runtime_says_so(rig: Rig) -> None:
    rig.handlers.ready = False
    assert (await rig.client.call("status"))["ready"] is False


async def test_a_failing_provider_becomes_a_problem_not_a_failed_status(rig: Rig) -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("relay client gone")

    rig.relay.relay_status = broken  # type: ignore[method-assign]
    status = await rig.client.call("status")
    assert status["relay"]["state"] == "unknown"
    assert any(p.startswith("relay unknown") for p in status["problems"])


async def test_sales_filters_by_state_lane_since_and_limit(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")
    await rig.open_sale("S6", 2, 1000)

    everything = (await rig.client.call("sales"))["sales"]
    assert {s["sale_id"] for s in everything} == {"S5", "S6"}
    held = (await rig.client.call("sales", {"state": "held"}))["sales"]
    assert [s["sale_id"] for s in held] == ["S5"]
    assert held[0] | {"updated_at": None} == {
        "sale_id": "S5", "correlation_id": "c-S5", "lane": "1", "state": "held",
        "amount_cents": 2599, "payment_id": "555", "started_at": "2026-11-18T11:06:40Z",
        "updated_at": None,
        "terminal_id": "PAX_A910__SMARTPOS1", "intent_id": "INT-pd1_loja-centro_1_S5_1",
        "attempt": 1, "refusal": None, "detail": "payment status 'pending'"}
    lane2 = (await rig.client.call("sales", {"lane": "2"}))["sales"]
    assert [s["sale_id"] for s in lane2] == ["S6"]
    assert len((await rig.client.call("sales", {"limit": 1}))["sales"]) == 1
    assert (await rig.client.call("sales", {"since": "2030-01-01T00:00:00Z"}))["sales"] == []
    assert len((await rig.client.call("sales", {"since": "2026-11-18T11:06:40"}))["sales"]) == 2


@pytest.mark.parametrize(("params", "param"), [
    ({"lane": "one"}, "lane"),
    ({"lane": "0"}, "lane"),
    ({"lane": "1000"}, "lane"),
    ({"since": "yesterday"}, "since"),
    ({"state": "lost"}, "state"),
    ({"limit": 0}, "limit"),
])
async def test_bad_sales_filters_name_the_param(rig: Rig, params: dict[str, object],
                                                param: str) -> None:
    with pytest.raises(RemoteError) as caught:
        await rig.client.call("sales", params)
    assert caught.value.code == "bad_params"
    assert caught.value.data["param"] == param


async def test_sale_shows_the_journaled_timeline(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")

    result = await rig.client.call("sale", {"sale_id": "S5"})

    assert result["sale"]["state"] == "held"
    assert result["sale"]["may_hand_over"] is False
    assert result["sale"]["override"] is None
    assert set(result["sale"]["timers"]) == {"verify", "escalate"}
    kinds = [entry["event"] for entry in result["timeline"]]
    assert kinds == ["SaleRequested", "IntentCreated", "IntentObserved", "PaymentVerified"]
    verified = result["timeline"][-1]
    assert verified["detail"]["status"] == "pending"
    assert "sale_id" not in verified["detail"]
    assert "kind" not in verified["detail"]
    seqs = [entry["seq"] for entry in result["timeline"]]
    assert seqs == sorted(seqs)


async def test_an_unknown_sale_is_not_found(rig: Rig) -> None:
    with pytest.raises(RemoteError) as caught:
        await rig.client.call("sale", {"sale_id": "NOPE"})
    assert caught.value.code == "not_found"


async def test_holds_lists_held_sales_only(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")
    await rig.open_sale("S6", 2, 1000)

    holds = (await rig.client.call("holds"))["holds"]

    assert holds == [{"sale_id": "S5", "correlation_id": "c-S5", "lane": "1", "state": "held",
                      "amount_cents": 2599,
                      "payment_id": "555", "held_since": "2026-11-18T11:06:40Z",
                      "reason": "payment status 'pending'"}]


async def test_terminals_show_the_live_intent_holding_each_terminal(rig: Rig) -> None:
    intent = await rig.open_sale("S6", 2, 1000)

    rows = (await rig.client.call("terminals"))["terminals"]

    assert [row["lane"] for row in rows] == ["1", "2"]
    assert rows[0]["live_intent"] is None
    assert rows[0]["usb_present"] is True
    assert rows[1]["live_intent"] == intent
    assert rows[1]["live_sale"] == "S6"
    assert rows[1]["serial"] == "SMARTPOS2"
    assert rows[1]["mode"] == "PDV"


async def test_relay_view_and_disabled_relay(rig: Rig) -> None:
    relay = await rig.client.call("relay")
    assert relay == {"state": "connected", "connected": True, "since": "2026-11-18T11:05:40Z",
                     "last_event_age": 3.0, "cursor": "42"}
    without_relay = StatusView(
        engine=rig.engine, journal=rig.journal, terminals=rig.terminals, relay=None,
        links=rig.links, alerts=list, clock=lambda: T0, started_at=T0, version="test",
    )
    assert without_relay.relay_view() == {"state": "disabled", "connected": None}


async def test_pointctl_views_render_the_real_results(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")
    status = await rig.client.call("status")

    text = views.render_status(status)

    assert "S5" in text
    assert "25.99" in text
    assert any("held" in p for p in views.status_problems(status))
    sale_text = views.render_sale(await rig.client.call("sale", {"sale_id": "S5"}))
    assert "PaymentVerified" in sale_text
    assert "S5" in views.render_holds(await rig.client.call("holds"))
    assert "SMARTPOS1" in views.render_terminals(await rig.client.call("terminals"))
    assert "S5" in views.render_sales(await rig.client.call("sales"))


async def test_a_sale_the_core_forgot_is_still_answered_from_the_journal(rig: Rig) -> None:
    await rig.held_sale("S7", 1, 2599, "777")
    await rig.engine.submit(OverrideGiven("S7", OverrideDecision.VOID, "customer left", 0))
    assert rig.state_of("S7") is SaleState.DECLINED
    # The rig's clock stands still at T0, when the sale last changed, and the core forgets
    # only sales older than its clock: apply the same pure step a day later instead.
    rig.engine._state = forget_settled(rig.engine.state, T0 + 86_400)
    assert "S7" not in rig.engine.state.sales

    result = await rig.client.call("sale", {"sale_id": "S7"})

    assert result["sale"]["state"] == "declined"
    assert result["sale"]["in_memory"] is False
    assert result["sale"]["amount_cents"] == 2599
    kinds = [entry["event"] for entry in result["timeline"]]
    assert kinds[0] == "SaleRequested"
    assert "OverrideGiven" in kinds
