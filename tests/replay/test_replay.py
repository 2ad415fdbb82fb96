"""Replay every recorded register transcript through link → codec → session → stub engine.

The test plays the register: it writes each recorded ``rx`` chunk into a real pty and
checks that the daemon writes exactly the recorded ``tx`` bytes (card digits redacted the
same way as at capture), then that the engine received the recorded requests. A new
register model or firmware is a new fixture directory, not new code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pointd.link.trace import TraceRecord, read_transcript
from pointd.register.messages import redact_card_data
from tests.replay.harness import FIXTURES, DaemonLane, request_record, start_daemon
from tests.support.pty_peer import PtyPeer

TRANSCRIPTS = sorted(FIXTURES.glob("*/*.jsonl"))


def _meta(transcript: Path) -> dict[str, object]:
    meta: dict[str, object] = json.loads((transcript.parent / "meta.json").read_text())
    return meta


async def replay(records: list[TraceRecord], peer: PtyPeer, daemon: DaemonLane) -> None:
    """Drive the daemon through the transcript, checking each tx chunk as it comes."""
    opened = lost = 0
    for index, record in enumerate(records):
        where = f"record {index + 1} ({record.dir} {record.note or record.hex[:24]})"
        if record.dir == "rx":
            peer.write(record.data)
        elif record.dir == "tx":
            written = await peer.read_exactly(len(record.data))
            assert redact_card_data(written).hex() == record.hex, where
        elif record.note == "unplug":
            peer.unplug()
        elif record.note == "replug":
            peer.plug()
        elif record.note.startswith("opened"):
            opened += 1
            await daemon.wait_events("opened", opened)
        elif record.note.startswith("lost"):
            if record is records[-1]:
                return  # the recording ended by stopping the daemon
            lost += 1
            await daemon.wait_events("lost", lost)
        else:
            pytest.fail(f"{where}: unknown event")


def test_there_are_transcripts_for_every_required_scenario() -> None:
    names = {path.stem for path in TRANSCRIPTS}
    assert {"normal-sale", "noise", "lost-ack", "unplug-mid-sale"} <= names


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_replay(transcript: Path, tmp_path: Path) -> None:
    records = read_transcript(transcript)
    scenario = _meta(transcript)["scenarios"][transcript.stem]  # type: ignore[index]
    peer = PtyPeer(tmp_path / "register")
    daemon = start_daemon(str(peer.link_path))
    try:
        await replay(records, peer, daemon)
        assert [request_record(r) for r in daemon.engine.requests] == scenario["requests"]
    finally:
        await daemon.stop()
        peer.unplug()


def test_transcripts_hold_no_card_digits() -> None:
    for transcript in TRANSCRIPTS:
        for record in read_transcript(transcript):
            assert redact_card_data(record.data) == record.data, transcript


def test_bad_transcript_lines_are_reported_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"t":0,"dir":"rx","hex":"02"}\n{"t":0,"dir":"sideways","hex":""}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: .*dir"):
        read_transcript(path)
    path.write_text('{"t":0,"dir":"rx","hex":"zz"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_transcript(path)


async def test_replay_notices_a_daemon_that_writes_something_else(tmp_path: Path) -> None:
    transcript = FIXTURES / "pointd-sim-register" / "normal-sale.jsonl"
    records = read_transcript(transcript)
    tx = next(i for i, r in enumerate(records) if r.dir == "tx" and len(r.data) > 20)
    tampered = bytearray(records[tx].data)
    tampered[5] ^= 0x01
    records[tx] = TraceRecord(records[tx].t, "tx", tampered.hex())
    peer = PtyPeer(tmp_path / "register")
    daemon = start_daemon(str(peer.link_path))
    try:
        with pytest.raises(AssertionError, match=f"record {tx + 1}"):
            await replay(records, peer, daemon)
    finally:
        await daemon.stop()
        peer.unplug()
