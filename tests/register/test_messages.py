"""Register messages: golden payloads and frames for every message, round trips, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointd.link.frame import DataFrame
from pointd.register import messages as m
from pointd.register.messages import ErrorCode, MessageError, decode_message

CID = "A1B2-0001"

# (message, the whole wire frame with the sequence number given) — the same examples as
# docs/register-protocol.md, so the document cannot drift from the code.
GOLDEN: list[tuple[m.Message, int, str]] = [
    (
        m.Hello(("1.0",), "ACME-POS 4.2"),
        1,
        "02 01 48 76 65 72 73 69 6f 6e 73 3d 31 2e 30 1f 72 65 67 69 73 74 65 72 3d 41 43 4d 45"
        " 2d 50 4f 53 20 34 2e 32 4e 51 03",
    ),
    (
        m.Sale(CID, 1500),
        2,
        "02 10 22 53 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 61 6d 6f 75 6e 74 3d 31 35 30 30"
        " ec 42 03",
    ),
    (
        m.Sale("A1B2-0002", 250075, "PAX_A910__SMARTPOS1234567890"),
        3,
        "02 10 23 53 69 64 3d 41 31 42 32 2d 30 30 30 32 1f 61 6d 6f 75 6e 74 3d 32 35 30 30 37"
        " 35 1f 74 65 72 6d 69 6e 61 6c 3d 50 41 58 5f 41 39 31 30 5f 5f 53 4d 41 52 54 50 4f 53"
        " 31 32 33 34 35 36 37 38 39 30 97 ec 03",
    ),
    (m.Cancel(CID), 4, "02 04 43 69 64 3d 41 31 42 32 2d 30 30 30 31 bf 9c 03"),
    (m.Status(CID), 5, "02 05 51 69 64 3d 41 31 42 32 2d 30 30 30 31 58 8f 03"),
    (m.HandoverCheck(CID), 6, "02 06 4b 69 64 3d 41 31 42 32 2d 30 30 30 31 42 04 03"),
    (m.HandoverDone(CID), 7, "02 07 44 69 64 3d 41 31 42 32 2d 30 30 30 31 f8 37 03"),
    (
        m.HelloReply("1.0", 1, "es"),
        8,
        "02 08 68 76 65 72 73 69 6f 6e 3d 31 2e 30 1f 6c 61 6e 65 3d 31 1f 6c 61 6e 67 3d 65 73"
        " 7a 70 03",
    ),
    (
        m.Display(("PASE LA TARJETA", "EN LA TERMINAL"), m.Severity.INFO, "es", CID),
        9,
        "02 09 64 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 73 65 76 3d 69 6e 66 6f 1f 6c 61 6e 67"
        " 3d 65 73 1f 6c 31 3d 50 41 53 45 20 4c 41 20 54 41 52 4a 45 54 41 1f 6c 32 3d 45 4e 20"
        " 4c 41 20 54 45 52 4d 49 4e 41 4c 79 e4 03",
    ),
    (
        m.Result(CID, m.Outcome.APPROVED, 1500, "98765432101", "4242"),
        10,
        "02 0a 72 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 6f 75 74 63 6f 6d 65 3d 61 70 70 72 6f"
        " 76 65 64 1f 61 6d 6f 75 6e 74 3d 31 35 30 30 1f 70 61 79 6d 65 6e 74 3d 39 38 37 36 35"
        " 34 33 32 31 30 31 1f 63 61 72 64 3d 34 32 34 32 79 1c 03",
    ),
    (
        m.Result(CID, m.Outcome.DECLINED, 1500, reason="declined"),
        11,
        "02 0b 72 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 6f 75 74 63 6f 6d 65 3d 64 65 63 6c 69"
        " 6e 65 64 1f 61 6d 6f 75 6e 74 3d 31 35 30 30 1f 72 65 61 73 6f 6e 3d 64 65 63 6c 69 6e"
        " 65 64 e9 68 03",
    ),
    (
        m.Hold(CID, "held"),
        12,
        "02 0c 77 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 72 65 61 73 6f 6e 3d 68 65 6c 64 0e 45 03",
    ),
    (
        m.Release(CID, "approved"),
        13,
        "02 0d 67 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 72 65 61 73 6f 6e 3d 61 70 70 72 6f 76"
        " 65 64 52 93 03",
    ),
    (
        m.StatusReply(CID, "approved", True, 1500, "98765432101", "4242"),
        14,
        "02 0e 71 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 73 74 61 74 65 3d 61 70 70 72 6f 76 65"
        " 64 1f 68 61 6e 64 6f 76 65 72 3d 79 65 73 1f 61 6d 6f 75 6e 74 3d 31 35 30 30 1f 70 61"
        " 79 6d 65 6e 74 3d 39 38 37 36 35 34 33 32 31 30 31 1f 63 61 72 64 3d 34 32 34 32 db 81"
        " 03",
    ),
    (
        m.HandoverReply(CID, False, "held"),
        15,
        "02 0f 6b 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 61 6c 6c 6f 77 65 64 3d 6e 6f 1f 72 65"
        " 61 73 6f 6e 3d 68 65 6c 64 3e 8f 03",
    ),
    (
        m.Error(
            ErrorCode.ID_REUSED, "this correlation id belongs to a sale of another amount", CID
        ),
        16,
        "02 10 30 65 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 63 6f 64 65 3d 69 64 5f 72 65 75 73"
        " 65 64 1f 74 65 78 74 3d 74 68 69 73 20 63 6f 72 72 65 6c 61 74 69 6f 6e 20 69 64 20 62"
        " 65 6c 6f 6e 67 73 20 74 6f 20 61 20 73 61 6c 65 20 6f 66 20 61 6e 6f 74 68 65 72 20 61"
        " 6d 6f 75 6e 74 45 42 03",
    ),
    (
        m.Refund("RF-0001", CID, 500),
        17,
        "02 11 52 69 64 3d 52 46 2d 30 30 30 31 1f 73 61 6c 65 3d 41 31 42 32 2d 30 30 30 31 1f 61"
        " 6d 6f 75 6e 74 3d 35 30 30 c9 13 03",
    ),
    (
        m.RefundResult("RF-0001", CID, m.RefundOutcome.REFUNDED, 500),
        18,
        "02 12 66 69 64 3d 52 46 2d 30 30 30 31 1f 73 61 6c 65 3d 41 31 42 32 2d 30 30 30 31 1f 6f"
        " 75 74 63 6f 6d 65 3d 72 65 66 75 6e 64 65 64 1f 61 6d 6f 75 6e 74 3d 35 30 30 04 23 03",
    ),
    (
        m.Withdraw(CID, "blocked"),
        19,
        "02 13 78 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 72 65 61 73 6f 6e 3d 62 6c 6f 63 6b 65"
        " 64 6f c9 03",
    ),
]


@pytest.mark.parametrize(("message", "seq", "wire_hex"), GOLDEN, ids=lambda v: type(v).__name__)
def test_golden_frames(message: m.Message, seq: int, wire_hex: str) -> None:
    wire = bytes.fromhex(wire_hex)
    assert DataFrame(seq, message.to_payload()).to_bytes() == wire
    assert decode_message(DataFrame.from_bytes(wire).payload) == message


def test_every_message_class_has_a_golden_example() -> None:
    golden_types = {type(message) for message, _seq, _hex in GOLDEN}
    every = {
        m.Hello,
        m.Sale,
        m.Cancel,
        m.Status,
        m.HandoverCheck,
        m.HandoverDone,
        m.HelloReply,
        m.Display,
        m.Result,
        m.Hold,
        m.Release,
        m.Withdraw,
        m.StatusReply,
        m.HandoverReply,
        m.Error,
        m.Refund,
        m.RefundResult,
    }
    assert golden_types == every
    assert len(m.MessageType) == len(every)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    payload = b"Qid=A1\x1fnewfield=whatever"
    assert decode_message(payload) == m.Status("A1")


def test_display_round_trips_utf8_and_four_lines() -> None:
    display = m.Display(("AÇÃO", "2", "3", "4"), m.Severity.ERROR, "pt")
    assert decode_message(display.to_payload()) == display


@pytest.mark.parametrize(
    ("payload", "code", "cid"),
    [
        (b"", ErrorCode.MALFORMED, None),
        (b"Z", ErrorCode.UNKNOWN_TYPE, None),
        (b"\x7fid=A", ErrorCode.UNKNOWN_TYPE, "A"),
        (b"S", ErrorCode.MALFORMED, None),
        (b"Sid=A1", ErrorCode.MALFORMED, "A1"),  # no amount
        (b"Sid=A1\x1famount=0", ErrorCode.MALFORMED, "A1"),
        (b"Sid=A1\x1famount=-5", ErrorCode.MALFORMED, "A1"),
        (b"Sid=A1\x1famount=15.00", ErrorCode.MALFORMED, "A1"),
        (b"Sid=A1\x1famount=99999999999", ErrorCode.MALFORMED, "A1"),
        (b"Sid=has space\x1famount=1", ErrorCode.MALFORMED, None),
        (b"Sid=" + b"x" * 33 + b"\x1famount=1", ErrorCode.MALFORMED, None),
        (b"Sid=A1\x1fid=A2\x1famount=1", ErrorCode.MALFORMED, None),  # duplicate key
        (b"Sid=A1\x1fnoequals", ErrorCode.MALFORMED, None),
        (b"SID=A1\x1famount=1", ErrorCode.MALFORMED, None),  # keys are lower case
        (b"Qid=\xff\xfe", ErrorCode.MALFORMED, None),
        (b"Qid=A\x07", ErrorCode.MALFORMED, None),
        (b"Hversions=one", ErrorCode.MALFORMED, None),
        (b"Rid=A1\x1famount=100", ErrorCode.MALFORMED, "A1"),  # no sale
        (b"rid=A1\x1foutcome=maybe", ErrorCode.MALFORMED, "A1"),
        (b"qid=A1\x1fstate=open\x1fhandover=perhaps", ErrorCode.MALFORMED, "A1"),
    ],
)
def test_bad_payloads_name_their_error_code(
    payload: bytes, code: ErrorCode, cid: str | None
) -> None:
    with pytest.raises(MessageError) as caught:
        decode_message(payload)
    assert caught.value.code is code
    assert caught.value.correlation_id == cid


def test_values_with_control_characters_cannot_be_built() -> None:
    with pytest.raises(MessageError):
        m.Display(("A\x1fB",), m.Severity.INFO, "es")
    with pytest.raises(MessageError):
        m.Display((), m.Severity.INFO, "es")
    with pytest.raises(MessageError):
        m.Result(CID, m.Outcome.APPROVED, card_last4="4242424242424242")


ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
text = st.text(
    st.characters(min_codepoint=0x20, exclude_categories=["Cs"]).filter(lambda c: c != "\x7f"),
    max_size=20,
)
messages = st.one_of(
    st.builds(m.Sale, ids, st.integers(1, m.MAX_AMOUNT_CENTS), st.none() | ids),
    st.builds(m.Status, ids),
    st.builds(
        m.Display,
        st.lists(text, min_size=1, max_size=4).map(tuple),
        st.sampled_from(m.Severity),
        st.sampled_from(["es", "pt", "en"]),
        st.none() | ids,
    ),
    st.builds(
        m.Result,
        ids,
        st.sampled_from(m.Outcome),
        st.none() | st.integers(1, 10**6),
        st.none() | ids,
        st.none() | st.from_regex(r"[0-9]{4}", fullmatch=True),
        st.none() | text,
    ),
    st.builds(m.Error, st.sampled_from(ErrorCode), text, st.none() | ids),
)


@given(messages)
def test_round_trip(message: m.Message) -> None:
    assert decode_message(message.to_payload()) == message


def test_redaction_masks_card_digits_and_keeps_frames_valid() -> None:
    result = DataFrame(2, m.Result(CID, m.Outcome.APPROVED, 1500, "P1", "4242").to_payload())
    other = DataFrame(3, m.Status(CID).to_payload()).to_bytes()
    chunk = b"\x00" + result.to_bytes() + other + b"\x02partial"
    redacted = m.redact_card_data(chunk)
    assert b"4242" not in redacted
    assert redacted.startswith(b"\x00")
    assert redacted.endswith(other + b"\x02partial")
    frame = DataFrame.from_bytes(redacted[1 : redacted.index(other)])
    decoded = decode_message(frame.payload)
    assert isinstance(decoded, m.Result)
    assert decoded.card_last4 == m.CARD_REDACTION
    assert decoded.payment_id == "P1"
