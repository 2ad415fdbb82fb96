"""LineFramer: any stream, cut anywhere, gives back the lines, oversize ones flagged once."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from pointd.control.protocol import LineFramer, LineTooLong, encode

CAP = 32

lines_strategy = st.lists(
    st.binary(max_size=CAP * 3).map(lambda b: b.replace(b"\n", b"x")), max_size=12
)


def _expected(lines: list[bytes]) -> list[bytes | LineTooLong]:
    return [line if len(line) <= CAP else LineTooLong(len(line)) for line in lines]


@given(lines=lines_strategy, cuts=st.lists(st.integers(min_value=0, max_value=400)))
def test_any_chunking_yields_the_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    points = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    framer = LineFramer(CAP)
    out: list[bytes | LineTooLong] = []
    for start, end in itertools.pairwise(points):
        out += framer.feed(stream[start:end])
    assert out == _expected(lines)
    assert framer.pending == 0


@given(lines=lines_strategy)
def test_line_without_newline_stays_pending(lines: list[bytes]) -> None:
    framer = LineFramer(CAP)
    tail = b"partial"
    out = framer.feed(b"".join(line + b"\n" for line in lines) + tail)
    assert out == _expected(lines)
    assert framer.pending == len(tail)


def test_exactly_cap_bytes_is_allowed_and_one_more_is_not() -> None:
    framer = LineFramer(CAP)
    assert framer.feed(b"a" * CAP + b"\n" + b"b" * (CAP + 1) + b"\n") == [
        b"a" * CAP,
        LineTooLong(CAP + 1),
    ]


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_encode_is_one_line_that_decodes_back(value: object) -> None:
    line = encode({"result": value})
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert json.loads(line) == {"result": value}
