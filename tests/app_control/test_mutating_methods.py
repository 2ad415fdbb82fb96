"""override, cancel, verify, reconcile and refund go through the engine and are audited."""

from __future__ import annotations

import asyncio
import os

import pytest

from pointd.control.errors import RemoteError
from pointd.core.events import SaleRequested
from pointd.core.states import SaleState
from tests.app_control.conftest import Rig, payment, reference


def audit_rows(rig: Rig, method: str) -> list[tuple[int, str, str]]:
    return [(e.uid, e.outcome, e.args.get("sale_id", "")) for e in
            reversed(rig.journal.audit_log()) if e.method == method]


async def test_override_release_on_a_held_sale_is_journaled_and_audited(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")

    result = await rig.client.call("override", {"sale_id": "S5", "decision": "release",
                                                "reason": "manager saw the approved slip"})

    assert result == {"sale_id": "S5", "correlation_id": "c-S5", "state": "overridden",
                      "decision": "release"}
    assert rig.state_of("S5") is SaleState.OVERRIDDEN
    uid = os.geteuid()
    assert audit_rows(rig, "override") == [(uid, "requested", "S5"), (uid, "done", "S5")]
    last = rig.journal.timeline("S5")[-1]
    assert last.kind == "OverrideGiven"
    assert last.event.uid == uid  # type: ignore[union-attr]
    sale = (await rig.client.call("sale", {"sale_id": "S5"}))["sale"]
    assert sale["may_hand_over"] is True
    assert sale["override"]["uid"] == uid
    assert sale["override"]["reason"] == "manager saw the approved slip"
    assert (await rig.client.call("holds"))["holds"] == []


async def test_override_by_the_registers_receipt_finds_the_held_sale(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")
    await rig.held_sale("S6", 2, 1000, "556")

    result = await rig.client.call("override", {"correlation_id": "c-S6", "decision": "void",
                                                "reason": "customer left"})

    assert (result["sale_id"], result["correlation_id"]) == ("S6", "c-S6")
    assert rig.state_of("S6") is SaleState.DECLINED
    assert rig.state_of("S5") is SaleState.HELD
    with pytest.raises(RemoteError) as missing:
        await rig.client.call("override", {"correlation_id": "c-S6", "lane": "1",
                                           "decision": "void", "reason": "wrong lane"})
    assert missing.value.code == "not_found"
    with pytest.raises(RemoteError) as both:
        await rig.client.call("override", {"sale_id": "S5", "correlation_id": "c-S5",
                                           "decision": "void", "reason": "ambiguous"})
    assert both.value.code == "bad_params"


async def test_override_void_declines_the_sale(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")
    result = await rig.client.call("override", {"sale_id": "S5", "decision": "void",
                                                "reason": "customer left"})
    assert result["state"] == "declined"


async def test_override_of_a_sale_that_is_not_held_is_a_conflict_and_changes_nothing(
        rig: Rig) -> None:
    await rig.open_sale("S6", 2, 1000)
    events_before = rig.journal.last_seq()

    with pytest.raises(RemoteError) as caught:
        await rig.client.call("override", {"sale_id": "S6", "decision": "release",
                                           "reason": "trying to cheat"})

    assert caught.value.code == "conflict"
    assert "nothing was done" in caught.value.message
    assert rig.state_of("S6") is SaleState.OPEN
    assert rig.journal.last_seq() == events_before
    assert [o for _u, o, _s in audit_rows(rig, "override")] == ["requested", "refused: conflict"]


async def test_override_of_an_unknown_sale_is_not_found(rig: Rig) -> None:
    with pytest.raises(RemoteError) as caught:
        await rig.client.call("override", {"sale_id": "GHOST", "decision": "release",
                                           "reason": "no such sale"})
    assert caught.value.code == "not_found"


async def test_cancel_by_lane_asks_mercado_pago_to_cancel_the_open_intent(rig: Rig) -> None:
    intent = await rig.open_sale("S6", 2, 1000)

    result = await rig.client.call("cancel", {"lane": "2"})

    assert result == {"sale_id": "S6", "state": "canceling", "cancel_requested": True,
                      "notice": None}
    await rig.until(lambda: rig.cloud.called("cancel") == [intent])
    assert rig.journal.timeline("S6")[2].event.by == f"control uid {os.geteuid()}"  # type: ignore[union-attr]
    assert [o for _u, o, _s in audit_rows(rig, "cancel")] == ["requested", "done"]


async def test_cancel_of_a_sale_the_customer_is_paying_only_advises(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")
    result = await rig.client.call("cancel", {"sale_id": "S5"})
    assert result["state"] == "held"
    assert result["notice"] == "cancel_too_late"
    assert result["cancel_requested"] is False


async def test_cancel_with_nothing_to_cancel(rig: Rig) -> None:
    with pytest.raises(RemoteError) as caught:
        await rig.client.call("cancel", {"lane": "1"})
    assert caught.value.code == "not_found"
    with pytest.raises(RemoteError) as caught:
        await rig.client.call("cancel", {"lane": "x"})
    assert caught.value.code == "bad_params"
    await rig.held_sale("S5", 1, 2599, "555")
    await rig.client.call("override", {"sale_id": "S5", "decision": "void", "reason": "gone"})
    with pytest.raises(RemoteError) as caught:
        await rig.client.call("cancel", {"sale_id": "S5"})
    assert caught.value.code == "conflict"


async def test_verify_applies_an_approved_payment_through_the_core(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")
    rig.cloud.payments["555"] = payment("555", "approved", 2599, reference("S5", 1))

    result = await rig.client.call("verify", {"payment_id": "555"})

    assert result == {"payment_id": "555", "status": "approved", "status_detail": "accredited",
                      "amount_cents": 2599, "currency": "BRL", "sale_id": "S5",
                      "sale_state": "approved", "verdict": "release",
                      "reason": "approved for the exact amount", "changed": True}
    assert rig.state_of("S5") is SaleState.APPROVED
    assert rig.journal.timeline("S5")[-1].kind == "PaymentVerified"


async def test_verify_of_a_wrong_amount_is_judged_a_mismatch_and_never_approves(
        rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")
    rig.cloud.payments["555"] = payment("555", "approved", 259, reference("S5", 1))

    result = await rig.client.call("verify", {"payment_id": "555"})

    assert result["verdict"] == "mismatch"
    assert result["sale_state"] == "escalated"
    assert rig.state_of("S5") is SaleState.ESCALATED


async def test_verify_of_a_payment_that_is_not_ours_changes_nothing(rig: Rig) -> None:
    rig.cloud.payments["777"] = payment("777", "approved", 500, "someone-else")
    before = rig.journal.last_seq()

    result = await rig.client.call("verify", {"payment_id": "777"})

    assert result["sale_id"] is None
    assert result["verdict"] is None
    assert result["changed"] is False
    assert rig.journal.last_seq() == before


async def test_verify_of_a_missing_payment_and_of_an_unreachable_api(rig: Rig) -> None:
    with pytest.raises(RemoteError) as caught:
        await rig.client.call("verify", {"payment_id": "404"})
    assert caught.value.code == "not_found"
    rig.cloud.failing = True
    with pytest.raises(RemoteError) as caught:
        await rig.client.call("verify", {"payment_id": "555"})
    assert caught.value.code == "unavailable"
    assert "nothing was changed" in caught.value.message


async def test_reconcile_asks_the_api_for_every_unfinished_sale(rig: Rig) -> None:
    await rig.held_sale("S5", 1, 2599, "555")
    intent = await rig.open_sale("S6", 2, 1000)
    payments_before = len(rig.cloud.called("get_payment"))

    result = await rig.client.call("reconcile")

    assert result == {"checked": 2, "asked": 2, "sales": [
        {"sale_id": "S5", "state": "held", "action": "fetch payment 555"},
        {"sale_id": "S6", "state": "open", "action": f"fetch intent {intent}"},
    ]}
    await rig.until(lambda: len(rig.cloud.called("get_payment")) > payments_before)
    await rig.until(lambda: intent in rig.cloud.called("get_state"))
    assert [o for _u, o, _s in audit_rows(rig, "reconcile")] == ["requested", "done"]


async def test_reconcile_leaves_a_create_in_flight_alone(rig: Rig) -> None:
    rig.cloud.hold_creates = asyncio.Event()
    await rig.engine.submit(SaleRequested("S7", 1, "c-7", 1200, "PAX_A910__SMARTPOS1", None))
    await rig.until(lambda: len(rig.cloud.called("create")) == 1)
    assert rig.state_of("S7") is SaleState.CREATING

    result = await rig.client.call("reconcile")

    assert result["sales"] == [{"sale_id": "S7", "state": "creating",
                                "action": "wait: create in flight"}]
    assert result["asked"] == 0
    for _ in range(20):
        await asyncio.sleep(0)
    assert rig.cloud.called("find_attempt") == []
    rig.cloud.hold_creates.set()
    await rig.until(lambda: rig.state_of("S7") is SaleState.OPEN)


async def test_refund_of_an_unknown_sale_is_refused_and_audited(rig: Rig) -> None:
    with pytest.raises(RemoteError) as caught:
        await rig.client.call("refund", {"sale_id": "S5", "amount_cents": 500})
    assert caught.value.code == "not_found"
    assert "nothing was sent" in caught.value.message
    assert rig.cloud.called("refund_payment") == []
    assert [o for _u, o, _s in audit_rows(rig, "refund")] == ["requested",
                                                               "refused: not_found"]
