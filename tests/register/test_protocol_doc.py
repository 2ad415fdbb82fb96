"""docs/register-protocol.md is checked against the code: every hex frame in it is valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pointd.link import arq
from pointd.link.frame import (
    MAX_PAYLOAD_SIZE,
    MAX_WIRE_FRAME_SIZE,
    DataFrame,
    FrameError,
    parse_frame,
)
from pointd.register.messages import ErrorCode, MessageType, decode_message
from pointd.register.prompts import DISPLAY_WIDTH
from tests.register.test_messages import GOLDEN

DOC = (Path(__file__).resolve().parents[2] / "docs" / "register-protocol.md").read_text()
# A frame written as spaced hex: 02 ... 03 with at least SEQ, TYPE and CRC in between.
FRAME = re.compile(r"\b02(?: [0-9a-f]{2}){4,}? 03\b(?! [0-9a-f]{2}\b)")
BAD_CRC_EXAMPLE = "1f 61 6d 6f 75 6e 74 3d 31 35 30 30 13 bd 03"
FRAMES = [f for f in FRAME.findall(DOC) if not f.endswith(BAD_CRC_EXAMPLE)]


def test_the_doc_has_many_frames() -> None:
    assert len(FRAMES) >= 40


@pytest.mark.parametrize("wire_hex", FRAMES)
def test_every_frame_in_the_doc_is_valid(wire_hex: str) -> None:
    frame = parse_frame(bytes.fromhex(wire_hex))
    if isinstance(frame, DataFrame):
        decode_message(frame.payload)


def test_the_bad_crc_example_really_has_a_bad_crc() -> None:
    (damaged,) = {f for f in FRAME.findall(DOC) if f.endswith(BAD_CRC_EXAMPLE)}
    with pytest.raises(FrameError, match="CRC"):
        parse_frame(bytes.fromhex(damaged))


@pytest.mark.parametrize(("message", "seq", "wire_hex"), GOLDEN, ids=lambda v: type(v).__name__)
def test_every_golden_message_is_in_the_doc(message: object, seq: int, wire_hex: str) -> None:
    assert wire_hex in DOC


def test_constants_match_the_doc() -> None:
    assert f"| `ACK_TIMEOUT` | {arq.ACK_TIMEOUT} s |" in DOC
    assert f"| `MAX_SEND_ATTEMPTS` | {arq.MAX_SEND_ATTEMPTS} |" in DOC
    assert f"| `KEEPALIVE_INTERVAL` | {arq.KEEPALIVE_INTERVAL} s |" in DOC
    assert f"at most {MAX_PAYLOAD_SIZE} bytes" in DOC
    assert f"at most {MAX_WIRE_FRAME_SIZE // 1000} {MAX_WIRE_FRAME_SIZE % 1000:03d} bytes" in DOC
    assert f"at most **{DISPLAY_WIDTH}" in DOC
    assert "29B1" in DOC


def test_every_message_type_and_error_code_is_documented() -> None:
    for message_type in MessageType:
        assert f"`{chr(message_type)}` {message_type:02X}" in DOC, message_type.name
    for code in ErrorCode:
        assert f"| `{code.value}` |" in DOC, code
