"""Forgetting settled sales changes no decision about a kept sale, for honest event streams."""

from __future__ import annotations

from hypothesis import given, settings

from pointd.core.events import SettledSalesForgotten
from pointd.core.machine import CoreState, Step, step
from tests.core.honest_sales import POLICIES, Move, store_days
from tests.core.scenario import POLICY, STORE, T0, check_invariants


@settings(max_examples=80, deadline=None)
@given(store_days())
def test_forgetting_never_changes_a_kept_sale_or_its_effects(moves: list[Move]) -> None:
    forgetting = plain = CoreState.empty(STORE)
    now, policy = T0, POLICY
    for move in moves:
        now += move.gap
        if move.kind == "policy":
            policy = POLICIES[move.policy]
        elif move.kind == "forget":
            result = step(forgetting, SettledSalesForgotten(now - move.age), now=now,
                          policy=policy)
            assert result.rejection is None
            assert result.effects == ()
            gone = set(forgetting.sales) - set(result.state.sales)
            assert all(forgetting.sales[s].is_final for s in gone)
            forgetting = result.state
        elif move.kind == "event":
            assert move.event is not None
            with_forgets: Step = step(forgetting, move.event, now=now, policy=policy)
            without: Step = step(plain, move.event, now=now, policy=policy)
            forgetting, plain = with_forgets.state, without.state
            if with_forgets.sale_id is not None:
                assert with_forgets.sale_id == without.sale_id
                assert with_forgets.effects == without.effects
                assert (with_forgets.rejection is None) == (without.rejection is None)
        check_invariants(forgetting)
        for sale_id, sale in forgetting.sales.items():
            assert plain.sales[sale_id] == sale
        assert forgetting.unfinished() == plain.unfinished()
        assert dict(forgetting.lanes) == dict(plain.lanes)
        assert dict(forgetting.terminals) == dict(plain.terminals)
        assert forgetting.fraud_alerts == plain.fraud_alerts
        assert CoreState.from_json(forgetting.to_json()) == forgetting
