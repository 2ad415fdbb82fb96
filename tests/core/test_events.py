"""Events round-trip through JSON exactly, and malformed JSON is refused with a clear error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointd.core.errors import EventDecodeError
from pointd.core.events import (
    EVENT_TYPES,
    CoreEvent,
    Event,
    FoundPayment,
    ObservationSource,
    OverrideDecision,
    PaymentsFound,
    SaleRequested,
    TimerKind,
    event_from_json,
)
from pointd.core.states import Refusal

text = st.text(max_size=30)
optional_text = st.none() | text
found = st.builds(FoundPayment, payment_id=text, status=text,
                  amount_cents=st.none() | st.integers())
FIELD_STRATEGIES = {
    str: text, int: st.integers(-(2**53), 2**53), float: st.floats(allow_nan=False),
}


def strategy_for(cls: type[CoreEvent]) -> st.SearchStrategy[Event]:
    return st.builds(  # type: ignore[no-any-return]
        cls,
        **{name: strategy for name, strategy in {
            "sale_id": optional_text if cls.__name__ == "CancelRequested" else text,
            "lane": st.none() | st.integers(0, 1000) if cls.__name__ == "CancelRequested"
            else st.integers(0, 1000),
            "terminal_ok": st.none() | st.sampled_from(Refusal),
            "source": st.sampled_from(ObservationSource),
            "timer": st.sampled_from(TimerKind),
            "decision": st.sampled_from(OverrideDecision),
            "payments": st.lists(found, max_size=3).map(tuple),
            "payment_id": optional_text if cls.__name__ == "IntentObserved" else text,
            "payment_state": optional_text,
            "external_reference": optional_text,
            "status_detail": optional_text,
            "amount_cents": st.none() | st.integers() if cls.__name__ == "PaymentVerified"
            else st.integers(),
            "before": FIELD_STRATEGIES[float],
        }.items() if name in cls.__dataclass_fields__},  # type: ignore[attr-defined]
    )


events = st.one_of([strategy_for(cls) for cls in EVENT_TYPES])


@given(events)
def test_every_event_round_trips(event: Event) -> None:
    encoded = event.to_json()
    assert "\n" not in encoded
    assert event_from_json(encoded) == event
    assert CoreEvent.from_json(encoded.encode()) == event


def test_golden_json() -> None:
    event = SaleRequested("01JQ7Z", 3, "r-42", 1500, "PAX_1", Refusal.TERMINAL_NOT_PDV)
    assert event.to_json() == (
        '{"amount_cents":1500,"correlation_id":"r-42","kind":"SaleRequested","lane":3,'
        '"sale_id":"01JQ7Z","terminal_id":"PAX_1","terminal_ok":"terminal_not_pdv"}')
    found_event = PaymentsFound("A", 1, (FoundPayment("9", "approved", 100),))
    assert json.loads(found_event.to_json())["payments"] == [
        {"amount_cents": 100, "payment_id": "9", "status": "approved"}]


GOOD = json.loads(SaleRequested("A", 1, "c", 100, "T", None).to_json())


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    ("[]", "must be an object"),
    ('{"kind": "Nope"}', "unknown event kind"),
    ("{}", "unknown event kind"),
    (json.dumps({**GOOD, "extra": 1}), "unknown fields"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "lane"}), "missing fields"),
    (json.dumps({**GOOD, "lane": "1"}), "expected an integer"),
    (json.dumps({**GOOD, "lane": True}), "expected an integer"),
    (json.dumps({**GOOD, "amount_cents": 1.5}), "expected an integer"),
    (json.dumps({**GOOD, "sale_id": None}), "expected a string"),
    (json.dumps({**GOOD, "terminal_ok": "broken"}), "is not a Refusal"),
    (json.dumps({"kind": "PaymentsFound", "sale_id": "A", "attempt": 1, "payments": {}}),
     "expected a list"),
    (json.dumps({"kind": "PaymentsFound", "sale_id": "A", "attempt": 1, "payments": [1]}),
     "expected an object"),
    (json.dumps({"kind": "TimerExpired", "sale_id": "A", "timer": "never"}),
     "is not a TimerKind"),
])
def test_malformed_event_json_is_refused(text: str | bytes, message: str) -> None:
    with pytest.raises(EventDecodeError, match=message):
        event_from_json(text)
