"""The relay's encoders made once per process write exactly what a ``json.dumps`` per call
wrote: intake's 200 body, the stream's event frames and the stored query and header text."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pointd.relay import sse
from pointd.relay.service import _answer_body, _compact_json, _event_frame
from pointd.relay.storage import StoredEvent, decode_mapping, encode_mapping

_TEXT = st.text(max_size=30)
_MAPPINGS = st.dictionaries(_TEXT, _TEXT, max_size=8)


@given(st.sampled_from(["stored", "duplicate"]), st.integers(min_value=0, max_value=2**63 - 1))
def test_the_intake_answer_is_the_json_it_was(outcome: str, event_id: int) -> None:
    expected = json.dumps({"status": outcome, "event": event_id}, separators=(",", ":"))
    assert _answer_body(outcome, event_id) == expected.encode()


@given(_MAPPINGS)
def test_stored_mappings_are_the_json_they_were(mapping: dict[str, str]) -> None:
    expected = json.dumps(mapping, separators=(",", ":"), sort_keys=True)
    assert encode_mapping(mapping) == expected
    assert decode_mapping(encode_mapping(mapping)) == mapping


@given(
    st.builds(
        StoredEvent,
        event_id=st.integers(min_value=1, max_value=2**40),
        position=st.integers(min_value=1, max_value=2**40),
        store=st.none() | _TEXT,
        received_at=st.floats(min_value=0, max_value=4e9),
        kind=_TEXT,
        topic=st.none() | _TEXT,
        parse=st.sampled_from(["json", "lenient", "unparseable"]),
        signed=st.booleans(),
        id_source=st.none() | _TEXT,
        signed_field=st.none() | _TEXT,
        asks=st.none() | _TEXT,
        alerted_at=st.none() | st.floats(min_value=0, max_value=4e9),
        query=_MAPPINGS,
        headers=_MAPPINGS,
        body=st.binary(max_size=200),
    )
)
def test_event_frames_are_the_bytes_they_were(event: StoredEvent) -> None:
    expected = sse.frame(
        json.dumps(event.to_json(), separators=(",", ":")).encode(), event_id=event.position
    )
    assert _event_frame(event) == expected
    decoded = sse.Decoder().feed(expected)
    assert json.loads(decoded[0].data)["body_b64"] == base64.b64encode(event.body).decode()


@given(st.recursive(st.none() | st.booleans() | st.integers() | _TEXT,
                    lambda inner: st.lists(inner) | st.dictionaries(_TEXT, inner), max_leaves=20))
def test_compact_json_is_json_dumps(payload: Any) -> None:
    assert _compact_json(payload) == json.dumps(payload, separators=(",", ":")).encode()
