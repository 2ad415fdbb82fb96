"""Frames: CRC variant, stuffing, golden bytes, and the decoder under splits, noise and damage."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointd.link.frame import (
    DLE,
    ETX,
    MAX_PAYLOAD_SIZE,
    MAX_WIRE_FRAME_SIZE,
    STX,
    AckFrame,
    DataFrame,
    Decoded,
    Discard,
    DiscardReason,
    EnqFrame,
    Frame,
    FrameDecoder,
    FrameError,
    NakFrame,
    NeedMore,
    crc16_ccitt_false,
    decode,
    parse_frame,
    stuff,
    unstuff,
)

GOLDEN: list[tuple[Frame, str]] = [
    (AckFrame(1), "02 01 06 4e f8 03"),
    (AckFrame(2), "02 10 22 06 1b ab 03"),  # seq 0x02 is STX: stuffed as DLE 0x22
    (NakFrame(1), "02 01 15 6c aa 03"),
    (NakFrame(0), "02 00 15 5f 9b 03"),  # a NAK for a frame whose number was unreadable
    (EnqFrame(7), "02 07 05 d4 3d 03"),
    (
        DataFrame(4, b"Cid=A1B2-0001"),
        "02 04 43 69 64 3d 41 31 42 32 2d 30 30 30 31 bf 9c 03",
    ),
    (
        DataFrame(2, b"Sid=A1B2-0001\x1famount=1500"),
        "02 10 22 53 69 64 3d 41 31 42 32 2d 30 30 30 31 1f 61 6d 6f 75 6e 74 3d 31 35 30 30"
        " ec 42 03",
    ),
]

NOISE = b"\x00\xffjunk\x03\x10\x10"


def test_crc_is_ccitt_false_with_its_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert crc16_ccitt_false(b"") == 0xFFFF


def _crc_bit_by_bit(data: bytes) -> int:
    """The protocol page's reference loop, transcribed: the oracle for the fast CRC."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


@given(st.binary(max_size=600))
def test_crc_matches_the_protocol_pages_reference_loop(data: bytes) -> None:
    assert crc16_ccitt_false(data) == _crc_bit_by_bit(data)


@pytest.mark.parametrize(("frame", "wire_hex"), GOLDEN)
def test_golden_bytes(frame: Frame, wire_hex: str) -> None:
    wire = bytes.fromhex(wire_hex)
    assert frame.to_bytes() == wire
    assert parse_frame(wire) == frame
    assert type(frame).from_bytes(wire) == frame


def test_from_bytes_refuses_the_wrong_kind() -> None:
    with pytest.raises(FrameError):
        DataFrame.from_bytes(AckFrame(1).to_bytes())
    with pytest.raises(FrameError):
        AckFrame.from_bytes(NakFrame(1).to_bytes())


def test_stuffing_escapes_every_delimiter() -> None:
    assert stuff(bytes((STX, ETX, DLE, 0x41))) == bytes((DLE, 0x22, DLE, 0x23, DLE, 0x30, 0x41))
    assert unstuff(stuff(bytes(range(256)))) == bytes(range(256))


@pytest.mark.parametrize("bad", [bytes((DLE,)), bytes((DLE, 0x41)), b"ab" + bytes((DLE,))])
def test_unstuff_rejects_escapes_stuff_never_makes(bad: bytes) -> None:
    with pytest.raises(FrameError):
        unstuff(bad)


@pytest.mark.parametrize(
    "build",
    [
        lambda: DataFrame(0, b"S"),
        lambda: DataFrame(256, b"S"),
        lambda: DataFrame(1, b""),
        lambda: DataFrame(1, b"\x06"),  # control types are not message types
        lambda: DataFrame(1, b"S" * (MAX_PAYLOAD_SIZE + 1)),
        lambda: AckFrame(0),
        lambda: NakFrame(-1),
    ],
)
def test_invalid_frames_cannot_be_built(build: object) -> None:
    with pytest.raises(FrameError):
        build()  # type: ignore[operator]


def _feed_all(chunks: list[bytes]) -> list[Frame | Discard]:
    decoder = FrameDecoder()
    out: list[Frame | Discard] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def _frames(items: list[Frame | Discard]) -> list[Frame]:
    return [item for item in items if not isinstance(item, Discard)]


def _splits(wire: bytes) -> dict[str, list[bytes]]:
    half = len(wire) // 2
    return {
        "whole": [wire],
        "halves": [wire[:half], wire[half:]],
        "bytewise": [wire[i : i + 1] for i in range(len(wire))],
    }


@pytest.mark.parametrize(("frame", "wire_hex"), GOLDEN)
@pytest.mark.parametrize("split", ["whole", "halves", "bytewise"])
@pytest.mark.parametrize("garbage", ["none", "before", "after", "both"])
def test_decoder_finds_frame_however_it_arrives(
    frame: Frame, wire_hex: str, split: str, garbage: str
) -> None:
    wire = bytes.fromhex(wire_hex)
    stream = (
        (NOISE if garbage in ("before", "both") else b"")
        + wire
        + (NOISE if garbage in ("after", "both") else b"")
    )
    items = _feed_all(_splits(stream)[split])
    assert _frames(items) == [frame]
    assert all(item.reason is DiscardReason.NOISE for item in items if isinstance(item, Discard))


@pytest.mark.parametrize("split", ["whole", "halves", "bytewise"])
def test_garbage_inside_a_frame_loses_only_that_frame(split: str) -> None:
    first, second = AckFrame(5).to_bytes(), DataFrame(6, b"Qid=X").to_bytes()
    # A new STX arrives mid-frame (the rest of the first frame was lost on the line).
    stream = first[:3] + second + first
    items = _feed_all(_splits(stream)[split])
    assert _frames(items) == [DataFrame(6, b"Qid=X"), AckFrame(5)]
    assert any(isinstance(i, Discard) and i.reason is DiscardReason.TRUNCATED for i in items)


def test_damaged_frame_is_discarded_with_its_seq_for_the_nak() -> None:
    wire = bytearray(DataFrame(9, b"Qid=X").to_bytes())
    wire[4] ^= 0x01  # a flipped bit in the payload breaks the CRC
    assert decode(bytes(wire)) == Discard(len(wire), DiscardReason.DAMAGED, 9)


def test_a_bad_escape_is_damage_not_noise() -> None:
    wire = bytes((STX, 0x01, 0x53, DLE, 0x41, 0x00, 0x00, ETX))
    result = decode(wire)
    assert isinstance(result, Discard)
    assert result.reason is DiscardReason.DAMAGED


def test_short_frame_is_damage() -> None:
    assert decode(bytes((STX, 0x01, ETX))) == Discard(3, DiscardReason.DAMAGED, 1)
    assert decode(bytes((STX, ETX))) == Discard(2, DiscardReason.DAMAGED, None)


def test_decoder_says_need_more_until_the_end_byte() -> None:
    wire = AckFrame(1).to_bytes()
    assert decode(wire[:-1]) == NeedMore()
    assert decode(b"") == NeedMore()
    assert decode(wire) == Decoded(AckFrame(1), len(wire))


def test_size_cap_discards_a_frame_that_never_ends() -> None:
    endless = bytes((STX,)) + b"A" * MAX_WIRE_FRAME_SIZE
    result = decode(endless)
    assert isinstance(result, Discard)
    assert result.reason is DiscardReason.OVERSIZE
    decoder = FrameDecoder()
    list(decoder.feed(endless))
    assert decoder.pending == 0
    assert _frames(list(decoder.feed(AckFrame(3).to_bytes()))) == [AckFrame(3)]


def test_control_frames_must_not_carry_data() -> None:
    inner = bytes((1, 0x06, 0x41))
    body = inner + crc16_ccitt_false(inner).to_bytes(2, "big")
    with pytest.raises(FrameError):
        parse_frame(bytes((STX,)) + stuff(body) + bytes((ETX,)))


frames = st.one_of(
    st.builds(
        DataFrame,
        st.integers(1, 255),
        st.binary(max_size=MAX_PAYLOAD_SIZE - 1).flatmap(
            lambda rest: st.integers(0x20, 0x7E).map(lambda t: bytes((t,)) + rest)
        ),
    ),
    st.builds(AckFrame, st.integers(1, 255)),
    st.builds(NakFrame, st.integers(0, 255)),
    st.builds(EnqFrame, st.integers(1, 255)),
)
# Noise without STX cannot start a false frame; with STX it is covered by the tests above.
noise = st.binary(max_size=40).map(lambda b: bytes(x for x in b if x != STX))


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.tuples(noise, frames), min_size=1, max_size=8),
    trailing=noise,
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_round_trip_under_arbitrary_splits_and_noise(
    items: list[tuple[bytes, Frame]], trailing: bytes, cuts: list[int]
) -> None:
    stream = b"".join(gap + frame.to_bytes() for gap, frame in items) + trailing
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    assert _frames(_feed_all(chunks)) == [frame for _gap, frame in items]


@given(st.binary(max_size=300))
def test_decoder_never_crashes_and_always_progresses(data: bytes) -> None:
    decoder = FrameDecoder()
    list(decoder.feed(data))
    assert decoder.pending <= len(data)
    assert decoder.pending == 0 or data[len(data) - decoder.pending] == STX
