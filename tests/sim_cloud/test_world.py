"""The simulated account as a pure state machine, driven by Hypothesis with no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pointd.sim.cloud.scenarios import AMOUNT_OUTCOMES, ScenarioRule, parse_rule
from pointd.sim.cloud.world import FINAL, SimApiError, SimWorld
from tests.sim_cloud.conftest import DEVICE, OTHER_DEVICE, make_config

RANK = {"OPEN": 0, "ON_TERMINAL": 1, "PROCESSING": 2, "PROCESSED": 3}
AMOUNTS = [1500, *AMOUNT_OUTCOMES]
STEPS = [0.0, 0.5, 1.0, 2.0, 3.0, 7.0, 30.0, 899.0, 900.0, 1800.0]


def body(amount: int, reference: str) -> dict[str, object]:
    return {
        "amount": amount,
        "additional_info": {"external_reference": reference, "ticket_number": "T"},
    }


class SimWorldMachine(RuleBasedStateMachine):
    """Random creates, cancels, reads and clock moves never break the account's rules."""

    def __init__(self) -> None:
        super().__init__()
        self.world = SimWorld(make_config("http://127.0.0.1:9/hook"), start_wall=1_790_000_000.0)
        self.now = 0.0
        self.seen: dict[str, str] = {}
        self.count = 0

    def _deliver_all(self, deliveries: list) -> None:  # type: ignore[type-arg]
        for delivery in deliveries:
            self.world.delivery_done(delivery, url="u", status_code=200, error=None, now=self.now)

    @rule(device=st.sampled_from([DEVICE, OTHER_DEVICE]), amount=st.sampled_from(AMOUNTS))
    def create(self, device: str, amount: int) -> None:
        self.count += 1
        busy = any(
            i.device_id == device and i.state not in FINAL for i in self.world.intents.values()
        )
        request = body(amount, f"pd1_s_1_X_{self.count}")
        if busy:
            with pytest.raises(SimApiError, match="queued payment intent"):
                self.world.create_intent(device, request, self.now)
        else:
            self.world.create_intent(device, request, self.now)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if not self.world.intents:
            return
        intent = data.draw(st.sampled_from(list(self.world.intents.values())))
        was = intent.state
        if was != "OPEN":
            with pytest.raises(SimApiError, match="conflict"):
                self.world.cancel_intent(intent.device_id, intent.id, self.now)
        else:
            self.world.cancel_intent(intent.device_id, intent.id, self.now)
            assert intent.state == "CANCELED"

    @rule(step=st.sampled_from(STEPS))
    def advance(self, step: float) -> None:
        self.now += step
        self._deliver_all(self.world.run_due(self.now))

    @invariant()
    def one_live_intent_per_device(self) -> None:
        for device in (DEVICE, OTHER_DEVICE):
            live = [
                i
                for i in self.world.intents.values()
                if i.device_id == device and i.state not in FINAL
            ]
            assert len(live) <= 1

    @invariant()
    def states_only_move_forward_and_finals_never_change(self) -> None:
        for intent in self.world.intents.values():
            before = self.seen.get(intent.id)
            if before in FINAL:
                assert intent.state == before
            elif before is not None and intent.state not in FINAL:
                assert RANK[intent.state] >= RANK[before]
            self.seen[intent.id] = intent.state

    @invariant()
    def payments_exist_exactly_when_the_terminal_charged(self) -> None:
        for intent in self.world.intents.values():
            charged = intent.state in ("PROCESSED", "FINISHED", "CONFIRMATION_REQUIRED")
            assert (intent.payment_id is not None) == charged
            if intent.payment_id is not None:
                payment = self.world.payments[intent.payment_id]
                assert payment.amount == intent.amount
                assert payment.external_reference == intent.external_reference

    @invariant()
    def nothing_is_left_open_past_abandonment(self) -> None:
        for intent in self.world.intents.values():
            if self.now - intent.created_at >= self.world.config.abandon_after + 60:
                assert intent.state in FINAL


SimWorldMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestSimWorld = SimWorldMachine.TestCase


@settings(max_examples=60, deadline=None)
@given(
    amounts=st.lists(st.sampled_from(AMOUNTS), min_size=1, max_size=2),
    steps=st.lists(st.sampled_from(STEPS), min_size=1, max_size=8),
)
def test_one_jump_and_many_small_steps_reach_the_same_states(
    amounts: list[int], steps: list[float]
) -> None:
    worlds = [SimWorld(make_config("http://127.0.0.1:9/hook"), start_wall=0.0) for _ in range(2)]
    for world in worlds:
        for n, (device, amount) in enumerate(zip([DEVICE, OTHER_DEVICE], amounts, strict=False)):
            world.create_intent(device, body(amount, f"pd1_s_1_X_{n}"), 0.0)
    now = 0.0
    for step in steps:
        now += step
        worlds[0].run_due(now)
    worlds[1].run_due(now)
    states = [
        sorted((i.device_id, i.state, i.state_changed_at) for i in w.intents.values())
        for w in worlds
    ]
    assert states[0] == states[1]


def test_rule_parsing_picks_exactly_one_selector() -> None:
    assert parse_rule({"amount": 1500, "outcome": "error"}) == parse_rule(
        {"amount": 1500, "outcome": "error"}
    )
    assert isinstance(parse_rule({"external_reference": "r", "get_5xx": 3}), ScenarioRule)
    with pytest.raises(ValueError, match="exactly one"):
        parse_rule({"amount": 1500, "external_reference": "r"})


def test_tips_and_decline_details_are_checked() -> None:
    rule = parse_rule({"next": True, "tip_cents": 250, "decline_detail": "high_risk"})
    assert (rule.scenario.tip_cents, rule.scenario.decline_detail) == (250, "high_risk")
    with pytest.raises(ValueError, match="decline_detail"):
        parse_rule({"next": True, "decline_detail": "cc_rejected_other_reason"})
    with pytest.raises(ValueError, match="tip_cents"):
        parse_rule({"next": True, "tip_cents": -1})
