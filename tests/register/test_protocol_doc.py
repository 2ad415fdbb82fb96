"""docs/register-protocol.md is checked against the code: every hex frame in it is valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pointd.core.effects import Notice
from pointd.core.machine import TRANSITIONS
from pointd.core.states import HOLD_STATES, Refusal, SaleState
from pointd.link import arq
from pointd.link.frame import (
    MAX_PAYLOAD_SIZE,
    MAX_WIRE_FRAME_SIZE,
    DataFrame,
    FrameError,
    parse_frame,
)
from pointd.register.messages import ErrorCode, MessageType, decode_message
from pointd.register.prompts import DISPLAY_WIDTH, LANGUAGES, prompt_for
from pointd.register.session import _OUTCOMES
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


def _table_rows(heading: str) -> list[list[str]]:
    """The cells of the Markdown table that follows the first line containing ``heading``."""
    lines = DOC[DOC.index(heading):].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _codes(cell: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", cell))


def test_hold_and_withdraw_reasons_are_the_states_the_code_sends() -> None:
    hold = {row[0].strip("`") for row in _table_rows("`reason` is the sale's state:")}
    assert hold == {state.value for state in HOLD_STATES}
    withdraw = {row[0].strip("`") for row in _table_rows("sale's new state, and says what")}
    # Every state an approved sale can move to other than by the register's handover.
    left_approval = {target for (state, _event), row in TRANSITIONS.items()
                     if state is SaleState.APPROVED for target in row.targets}
    assert withdraw == {s.value for s in left_approval} - {
        SaleState.APPROVED.value, SaleState.HANDED_OVER.value,
        SaleState.HANDOVER_UNCONFIRMED.value}


def test_result_reasons_are_the_ones_the_code_sends() -> None:
    reasons = {row[0].strip("`"): _codes(row[1]) for row in _table_rows("The `reason` of each")}
    expected = {outcome.value: {state.value} for state, outcome in _OUTCOMES.items()}
    expected["approved"] = {"override"}
    expected["refused"] = {refusal.value for refusal in Refusal}
    assert reasons == expected


def test_advice_texts_are_the_catalogue_in_every_language() -> None:
    rows = _table_rows("display language (`l1`")
    documented = {(row[0], row[1]): tuple(row[2].strip("`").split(" / ")) for row in rows}
    names = {Notice.CANCEL_ON_TERMINAL: "cancel on the terminal",
             Notice.CANCEL_TOO_LATE: "too late to cancel",
             Notice.CREATE_UNRESOLVED: "request unconfirmed"}
    assert set(names) == set(Notice)
    assert documented == {(names[notice], language): prompt_for(notice, language).lines
                          for notice in Notice for language in LANGUAGES}


def test_the_closed_unconfirmed_screen_is_documented_in_every_language() -> None:
    for language in LANGUAGES:
        lines = " / ".join(prompt_for(SaleState.HANDOVER_UNCONFIRMED, language).lines)
        assert " ".join(lines.split()) in " ".join(DOC.replace("`", "").split()), language
