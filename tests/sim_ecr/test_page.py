"""The second register reads every frame printed in docs/register-protocol.md as the page says.

Each example is whole wire bytes. The ECR's receiver must find exactly one frame in it, with
a CRC that matches (except the one example the page damages on purpose), rebuilding the
frame from its SEQ, TYPE and DATA must give the same bytes, and its fields must decode.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pointd.sim.ecr import fields, wire

DOC = (Path(__file__).resolve().parents[2] / "docs" / "register-protocol.md").read_text()
# A frame written as spaced hex: 02 ... 03 with at least SEQ, TYPE and CRC in between.
FRAME = re.compile(r"\b02(?: [0-9a-f]{2}){4,}? 03\b(?! [0-9a-f]{2}\b)")
BAD_CRC_TAIL = "13 bd 03"
EXAMPLES = FRAME.findall(DOC)
GOOD = [example for example in EXAMPLES if not example.endswith(BAD_CRC_TAIL)]
CONTROL = {wire.ACK, wire.NAK, wire.ENQ}


def test_the_page_has_many_examples() -> None:
    assert len(GOOD) >= 40
    assert len(EXAMPLES) - len(GOOD) == 1


@pytest.mark.parametrize("example", GOOD)
def test_every_example_is_one_frame_that_rebuilds_to_its_bytes(example: str) -> None:
    raw = bytes.fromhex(example)
    found = wire.Receiver().feed(raw)
    assert len(found) == 1
    frame = found[0]
    assert isinstance(frame, wire.Frame), frame
    assert wire.build(frame.seq, frame.kind, frame.data) == raw
    if frame.kind in CONTROL:
        assert frame.data == b""
    else:
        message = fields.decode(frame.kind, frame.data)
        assert message.fields  # every message on the page carries fields


def test_the_damaged_example_is_damaged_and_keeps_its_seq() -> None:
    damaged = [example for example in EXAMPLES if example.endswith(BAD_CRC_TAIL)]
    found = wire.Receiver().feed(bytes.fromhex(damaged[0]))
    assert found == [wire.Damaged(2)]


def test_crc_check_value_and_the_ack_of_two() -> None:
    assert wire.crc16(b"123456789") == 0x29B1
    assert wire.build(2, wire.ACK) == bytes.fromhex("02 10 22 06 1b ab 03")


@pytest.mark.parametrize(("body", "stuffed"), [
    (b"\x02", b"\x10\x22"), (b"\x03", b"\x10\x23"), (b"\x10", b"\x10\x30"),
])
def test_stuffing_table(body: bytes, stuffed: bytes) -> None:
    assert wire.stuff(body) == stuffed


def test_a_sale_from_the_page() -> None:
    kind, data = fields.encode(fields.SALE, {"id": "A1B2-0001", "amount": "1500"})
    expected = ("02 10 22 53 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 61 6d 6f 75 6e 74 3d 31 35"
                " 30 30 ec 42 03")
    assert wire.build(2, kind, data) == bytes.fromhex(expected)


@pytest.mark.parametrize("chunk", [
    b"\x10\x41",  # DLE followed by a byte that is not an escape
    b"\x01\x53\x10",  # DLE directly before ETX
    b"\x01\x06",  # shorter than SEQ, TYPE and a CRC
])
def test_damage_the_page_names(chunk: bytes) -> None:
    found = wire.Receiver().feed(b"\x02" + chunk + b"\x03")
    assert len(found) == 1
    assert isinstance(found[0], wire.Damaged)


def test_noise_a_cut_frame_and_an_endless_frame_are_dropped() -> None:
    ack = wire.build(5, wire.ACK)
    receiver = wire.Receiver()
    stream = b"noise" + b"\x02\x07\x53" + ack + b"\x02" + b"A" * 1100 + ack
    assert receiver.feed(stream) == [wire.Frame(5, wire.ACK, b""), wire.Frame(5, wire.ACK, b"")]
    assert receiver.discarded > 1100


def test_fields_reject_what_the_page_forbids() -> None:
    for bad in (b"noequals", b"UPPER=1", b"k=1\x1fk=2", b"k=\x07"):
        with pytest.raises(fields.MessageError):
            fields.decode(ord("q"), bad)
    with pytest.raises(fields.MessageError):
        fields.encode("S", {"id": "line\nbreak"})
    assert fields.decode(ord("q"), b"id=A\x1fnewkey=x=y").fields == {"id": "A", "newkey": "x=y"}
