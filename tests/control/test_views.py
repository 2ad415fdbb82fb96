"""pointctl's renderers: any JSON the daemon sends renders without crashing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointd.control import views

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "lanes",
                    "sales",
                    "sale",
                    "holds",
                    "terminals",
                    "methods",
                    "state",
                    "lane",
                    "params",
                    "problems",
                    "relay",
                    "timeline",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)

RENDERERS = [
    views.render_status,
    views.render_sales,
    views.render_sale,
    views.render_holds,
    views.render_terminals,
    views.render_methods,
    views.render_mapping,
    views.render_relay,
    views.render_connections,
    views.render_reconcile,
]


@pytest.mark.parametrize("render", RENDERERS)
@settings(max_examples=40)
@given(value=json_values)
def test_renderers_accept_any_shape(render: Any, value: Any) -> None:
    assert isinstance(render(value), str)


@settings(max_examples=200)
@given(value=json_values)
def test_status_problems_accepts_any_shape(value: Any) -> None:
    if isinstance(value, dict):
        assert isinstance(views.status_problems(value), list)


@pytest.mark.parametrize(
    ("cents", "text"), [(0, "0.00"), (5, "0.05"), (1250, "12.50"), (-199, "-1.99"), (None, "-")]
)
def test_money(cents: int | None, text: str) -> None:
    assert views.money(cents) == text


def test_escalated_and_blocked_sales_are_problems_but_approved_is_not() -> None:
    def status(state: str) -> dict[str, Any]:
        return {
            "lanes": [{"lane": "3", "condition": "ready", "sale": {"sale_id": "S", "state": state}}]
        }

    # A daemon that sends no problems list (older than pointctl): pointctl derives them.
    assert views.status_problems(status("escalated")) == ["lane 3: sale S escalated"]
    assert views.status_problems(status("blocked")) == ["lane 3: sale S blocked"]
    assert views.status_problems(status("approved")) == []
    assert views.status_problems({"ready": False, "relay": {"connected": False}}) == [
        "daemon not ready",
        "relay not connected",
    ]


def test_a_daemons_problem_list_is_shown_as_sent_each_problem_once() -> None:
    status = {
        "ready": True,
        "holds": 1,
        "lanes": [{"lane": "1", "condition": "ready", "sale": {"sale_id": "S", "state": "held"}}],
        "problems": ["sale S on lane 1 is held: do not hand over"],
    }
    assert views.status_problems(status) == ["sale S on lane 1 is held: do not hand over"]


@pytest.mark.parametrize(
    ("value", "text"),
    [(4.2, "4.2 s"), (185, "3 min 05 s"), (7800.5, "2 h 10 min"), (None, "-")],
)
def test_durations_read_like_durations(value: float | None, text: str) -> None:
    assert views.seconds(value) == text


def test_epoch_times_from_an_older_daemon_show_as_iso() -> None:
    text = views.render_connections(
        {"connections": [{"pid": 7, "uid": 0, "access": "admin", "opened_at": 1795000000.25,
                          "requests": [{"at": 1795000001.0, "method": "status",
                                        "outcome": "ok"}]}]}
    )
    assert "2026-11-18T11:06:40Z" in text
    assert "status ok at 2026-11-18T11:06:41Z" in text
    assert "1795000000" not in text
