"""The server-sent-event codec: frames survive any chunking and any of the three line ends."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointd.relay import sse

# The relay's data lines are JSON: printable, never a line break.
line_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=200
)
events = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(0, 10**12)), line_text), min_size=1, max_size=20
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(events, st.lists(st.integers(0, 10**6), max_size=30), st.sampled_from(["\n", "\r\n", "\r"]))
def test_frames_decode_to_what_was_framed_however_the_bytes_are_cut(
    messages: list[tuple[int | None, str]], cuts: list[int], line_end: str
) -> None:
    wire = b"".join(
        sse.frame(data.encode(), event_id=event_id) + sse.KEEPALIVE
        for event_id, data in messages
    ).replace(b"\n", line_end.encode())
    decoder = sse.Decoder()
    decoded = [message for chunk in _chunks(wire, cuts) for message in decoder.feed(chunk)]
    expected_ids: list[str] = []
    last = ""
    for event_id, _data in messages:
        last = str(event_id) if event_id is not None else last
        expected_ids.append(last)
    assert [m.data for m in decoded] == [data for _id, data in messages]
    assert [m.id for m in decoded] == expected_ids
    assert decoder.comments == len(messages)


def test_event_types_multi_line_data_and_unknown_fields() -> None:
    decoder = sse.Decoder()
    messages = decoder.feed(
        b"event: open\ndata: {}\n\nretry: 10\nfoo: bar\ndata:a\ndata:  b\nid: 7\n\n: c\n\n"
    )
    assert messages == [sse.Message("open", "", "{}"), sse.Message("", "7", "a\n b")]


def test_a_message_that_never_ends_is_refused_at_the_bound() -> None:
    decoder = sse.Decoder(max_message=1000)
    decoder.feed(b"data: " + b"x" * 900)
    with pytest.raises(sse.StreamCorrupt):
        decoder.feed(b"x" * 200)
    decoder = sse.Decoder(max_message=1000)
    with pytest.raises(sse.StreamCorrupt):
        decoder.feed(b"data: xxxxxxxx\n" * 200)


def test_a_frame_refuses_data_with_a_line_break() -> None:
    with pytest.raises(ValueError, match="one line"):
        sse.frame(b"a\nb", event_id=1)


def test_a_long_message_in_many_pieces_decodes_once_it_ends() -> None:
    decoder = sse.Decoder()
    payload = "x" * 3_000_000
    wire = sse.frame(payload.encode(), event_id=9)
    messages = []
    for start in range(0, len(wire), 4096):
        messages += decoder.feed(wire[start : start + 4096])
    assert messages == [sse.Message("", "9", payload)]
