"""The byte tap: redaction before keeping, bounded ring, JSON-lines transcripts."""

from __future__ import annotations

import io
import itertools

from pointd.link.frame import DataFrame
from pointd.link.trace import ByteTap, TraceRecord
from pointd.register import messages as m


def test_card_digits_never_reach_ring_or_transcript() -> None:
    ticks = itertools.count()
    transcript = io.StringIO()
    tap = ByteTap(lambda: float(next(ticks)), redact=m.redact_card_data, transcript=transcript)
    result = m.Result("A1", m.Outcome.APPROVED, 1500, "P1", "4242")
    tap.record("tx", DataFrame(1, result.to_payload()).to_bytes())
    tap.record("event", note="lost: test")
    lines = transcript.getvalue().splitlines()
    assert len(lines) == 2
    for record in (*tap.records(), *map(TraceRecord.from_json, lines)):
        assert b"4242" not in record.data
    first = TraceRecord.from_json(lines[0])
    assert first.t == 1.0
    assert first.dir == "tx"
    decoded = m.decode_message(DataFrame.from_bytes(first.data).payload)
    assert isinstance(decoded, m.Result)
    assert decoded.card_last4 == m.CARD_REDACTION


def test_ring_keeps_only_the_newest_records() -> None:
    tap = ByteTap(lambda: 0.0, capacity=3)
    for n in range(5):
        tap.record("rx", bytes((n,)))
    assert [r.data for r in tap.records()] == [b"\x02", b"\x03", b"\x04"]
