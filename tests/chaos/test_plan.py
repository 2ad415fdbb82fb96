"""The seed fixes a chaos run's sales and its whole schedule of faults against the parts."""

from __future__ import annotations

import itertools
import random

from bench.chaos import PART_FAULT_WEIGHTS, fault_params, fault_units
from pointd.rig.chaos.plan import (
    SALE_FAULTS,
    SalePlanner,
    ScheduledFault,
    fault_schedule,
    schedule_digest,
)

LANES = 4


def schedule(seed: int) -> tuple[ScheduledFault, ...]:
    return fault_schedule(random.Random(seed), PART_FAULT_WEIGHTS, mean_interval=1.2,
                          horizon=200.0,
                          params=lambda kind, rng: fault_params(kind, rng, LANES))


def test_one_seed_one_schedule_another_seed_another() -> None:
    assert schedule_digest(schedule(7)) == schedule_digest(schedule(7))
    assert [str(f) for f in schedule(7)] == [str(f) for f in schedule(7)]
    assert schedule_digest(schedule(7)) != schedule_digest(schedule(8))


def test_the_first_faults_walk_through_every_kind_with_its_choices_drawn() -> None:
    faults = schedule(20261122)
    first = [fault.kind for fault in faults[: len(PART_FAULT_WEIGHTS)]]
    assert sorted(first) == sorted(PART_FAULT_WEIGHTS)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(faults)]
    assert all(gap >= 0 for gap in gaps)
    for fault in faults:
        if fault.kind.startswith("daemon_sigkill") and fault.kind not in (
            "daemon_sigkill_starting", "daemon_sigkill_recovering"
        ):
            assert 0.0 <= fault.params["down"] <= 1.5
        if fault.kind in ("api_429_burst", "api_5xx_burst"):
            assert fault_units(fault) == fault.params["gets"] >= 2


def test_the_first_sales_walk_through_every_sale_fault() -> None:
    planner = SalePlanner(random.Random(3), total=40, lanes=LANES)
    plans = [planner.next_for(1 + index % LANES) for index in range(40)]
    assert planner.next_for(1) is None
    seen = {fault for plan in plans if plan is not None for fault in plan.faults}
    assert seen == set(SALE_FAULTS)
    again = SalePlanner(random.Random(3), total=40, lanes=LANES)
    assert [again.next_for(1 + index % LANES) for index in range(40)] == plans
    for plan in plans:
        assert plan is not None
        if "stale_gets" in plan.faults:
            assert plan.planned()["stale_gets"] == plan.scenario["stale_gets"]
