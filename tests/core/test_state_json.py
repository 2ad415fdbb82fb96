"""The core state's JSON (snapshots) round-trips exactly and refuses malformed documents."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointd.core import codec, snapshot
from pointd.core.errors import StateDecodeError
from pointd.core.events import (
    OverrideDecision,
    TimerKind,
)
from pointd.core.machine import CoreState, Override, Sale
from pointd.core.persistent import PersistentMap
from pointd.core.records import newest_sale_per_request
from pointd.core.snapshot import STATE_FORMAT
from pointd.core.states import IntentState, Refusal, SaleState
from tests.core.scenario import STORE

text = st.text(max_size=12)
times = st.floats(allow_nan=False, allow_infinity=False, width=64)
ints = st.integers(-(2**53), 2**53)
overrides = st.builds(Override, st.sampled_from(OverrideDecision), text, ints, times)
sales = st.builds(
    Sale,
    sale_id=st.from_regex(r"[A-Z0-9]{1,26}", fullmatch=True), lane=ints,
    correlation_id=text, amount_cents=ints, terminal_id=text,
    state=st.sampled_from(SaleState), requested_at=times, updated_at=times,
    refusal=st.none() | st.sampled_from(Refusal), attempt=ints,
    reference=st.none() | text, attempt_started_at=times, sends=ints,
    not_found_attempts=st.lists(ints, max_size=3).map(tuple),
    intent_id=st.none() | text, intent_state=st.none() | st.sampled_from(IntentState),
    payment_id=st.none() | text, approved_payment_id=st.none() | text,
    verify_round=ints, verify_started_at=st.none() | times, reconcile_round=ints,
    cancel_requested=st.booleans(), override=st.none() | overrides, detail=text,
    timers=st.lists(st.tuples(st.sampled_from(TimerKind), times), max_size=3).map(tuple),
)


@st.composite
def states(draw: st.DrawFn) -> CoreState:
    drawn = draw(st.lists(sales, max_size=5, unique_by=lambda s: s.sale_id))
    ids = [s.sale_id for s in drawn]
    some_sale = st.sampled_from(ids) if ids else st.nothing()
    keyed = st.dictionaries(text, some_sale, max_size=4) if ids else st.just({})
    lanes = st.dictionaries(ints, some_sale, max_size=3) if ids else st.just({})
    by_id = PersistentMap({s.sale_id: s for s in drawn})
    return CoreState(
        store_id=STORE,
        sales=by_id,
        requests=newest_sale_per_request(by_id),
        lanes=PersistentMap(draw(lanes)),
        terminals=PersistentMap(draw(keyed)),
        intents=PersistentMap(draw(keyed)),
        payments=PersistentMap(draw(keyed)),
        fraud_alerts=frozenset(draw(st.lists(text, max_size=3))),
        overrides=PersistentMap(draw(st.dictionaries(some_sale, overrides, max_size=2))
                                if ids else {}),
        forgotten_through=draw(st.from_regex(r"[A-Z0-9]{0,26}", fullmatch=True)),
    )


@settings(max_examples=100)
@given(sales)
def test_every_sale_round_trips(sale: Sale) -> None:
    body = json.loads(json.dumps(codec.encode(sale)))
    assert codec.decode_dataclass(Sale, body, "sale", StateDecodeError) == sale


@settings(max_examples=60)
@given(states())
def test_every_state_round_trips(state: CoreState) -> None:
    text_form = state.to_json()
    assert CoreState.from_json(text_form) == state
    assert CoreState.from_json(text_form.encode()).to_json() == text_form


def _valid() -> dict[str, object]:
    sale = Sale("S0001", 1, "c-1", 1500, "T1", SaleState.CREATING, 1.0, 2.0, attempt=1,
                reference=f"pd1_{STORE}_1_S0001_1")
    state = CoreState(STORE, sales=PersistentMap({"S0001": sale}),
                      lanes=PersistentMap({1: "S0001"}), terminals=PersistentMap({"T1": "S0001"}))
    body: dict[str, object] = json.loads(state.to_json())
    return body


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: b.update(format="pointd-core-state/4"), "format"),
    (lambda b: b.pop("refunds"), "missing fields"),
    (lambda b: b.update(extra=1), "unknown fields"),
    (lambda b: b.pop("lanes"), "missing fields"),
    (lambda b: b.update(store_id="Not A Store"), "store id"),
    (lambda b: b.update(fraud_alerts="P1"), "fraud_alerts"),
    (lambda b: b.update(lanes=[[1]]), "lanes"),
    (lambda b: b.update(lanes=[[True, "S0001"]]), "lane"),
    (lambda b: b.update(terminals={"T1": "S0404"}), "unknown sale"),
    (lambda b: b.update(overrides={"S0404": {"decision": "release", "reason": "r",
                                             "uid": 0, "at": 1.0}}), "unknown sale"),
    (lambda b: b["sales"].append(b["sales"][0]), "twice"),
    (lambda b: b["sales"][0].update(state="paid"), "SaleState"),
    (lambda b: b["sales"][0].update(amount_cents="1500"), "amount_cents"),
    (lambda b: b["sales"][0].update(amount_cents=15.0), "amount_cents"),
    (lambda b: b["sales"][0].update(cancel_requested=0), "cancel_requested"),
    (lambda b: b["sales"][0].update(timers=[["poll"]]), "timers"),
    (lambda b: b["sales"][0].update(timers=[["nap", 1.0]]), "TimerKind"),
    (lambda b: b["sales"][0].update(not_found_attempts=[1, "2"]), r"not_found_attempts\[1\]"),
    (lambda b: b["sales"][0].update(override={"decision": "release"}), "override"),
    (lambda b: b["sales"][0].pop("detail"), "missing"),
])
def test_malformed_documents_are_refused_with_the_place_named(damage: object,
                                                               message: str) -> None:
    body = _valid()
    damage(body)  # type: ignore[operator]
    with pytest.raises(StateDecodeError, match=message):
        CoreState.from_json(json.dumps(body))


@pytest.mark.parametrize("raw", ["", "{", "[]", "null", b"\xff"])
def test_non_documents_are_refused(raw: str | bytes) -> None:
    with pytest.raises(StateDecodeError):
        CoreState.from_json(raw)


def test_a_format_1_document_decodes_with_no_approval_withdrawn() -> None:
    body = _valid()
    body["format"] = "pointd-core-state/1"
    del body["refunds"], body["refunds_by_sale"]
    for sale in body["sales"]:  # type: ignore[attr-defined]
        del sale["approval_withdrawn"]
    state = CoreState.from_json(json.dumps(body))
    assert state.sales["S0001"].approval_withdrawn is False
    # A /2 document must have the field.
    body["format"] = "pointd-core-state/2"
    with pytest.raises(StateDecodeError, match="approval_withdrawn"):
        CoreState.from_json(json.dumps(body))


def test_a_format_2_document_decodes_and_says_it_holds_no_refund_book() -> None:
    body = _valid()
    body["format"] = "pointd-core-state/2"
    del body["refunds"], body["refunds_by_sale"]
    decoded = snapshot.decode(json.dumps(body))
    assert decoded.has_refunds is False
    assert decoded.state.sale_on_lane(1) is not None
    # Its refunds are replayed by the journal (tests/journal/test_snapshot_upgrade.py); a
    # /2 document holding a book is not one any daemon wrote.
    body["refunds"] = []
    with pytest.raises(StateDecodeError, match="unknown fields"):
        snapshot.decode(json.dumps(body))


def test_the_valid_document_decodes() -> None:
    body = _valid()
    assert body["format"] == STATE_FORMAT
    state = CoreState.from_json(json.dumps(body))
    assert state.sale_on_lane(1) is not None
    override = {"decision": "void", "reason": "r", "uid": 3, "at": 1}
    assert codec.decode_dataclass(Override, override, "override", StateDecodeError) == \
        Override(OverrideDecision.VOID, "r", 3, 1.0)
