"""Record the register transcripts in hardware-fixtures/register/pointd-sim-register/.

    python -m tests.replay.record

Each scenario runs the register emulator on a real pty against the daemon's link, session
and stub engine; the daemon's byte tap writes the transcript (card digits redacted at
capture). Harness actions are marked in the transcript as ``unplug`` / ``replug`` events.
meta.json keeps the capture's setting and, per scenario, the requests the engine received.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from pointd import __version__
from pointd.register.messages import PROTOCOL_VERSION
from pointd.sim.register import RegisterEmulator
from tests.replay.harness import (
    FIXTURES,
    LANE,
    LANGUAGE,
    REGISTER_TIMERS,
    TIMERS,
    DaemonLane,
    request_record,
    wait_until,
)
from tests.replay.harness import start_daemon as start

MODEL = "pointd-sim-register"
SALE_WAIT = 10.0

Scenario = Callable[[RegisterEmulator, DaemonLane], Awaitable[None]]


async def normal_sale(emulator: RegisterEmulator, daemon: DaemonLane) -> None:
    """HELLO, an approved sale, handover check and handover done."""
    await emulator.hello()
    await emulator.sale(1500, "REC-1", within=SALE_WAIT)
    await emulator.handover_check("REC-1")
    await emulator.handover_done("REC-1")
    await wait_until(lambda: emulator.display[:1] == ("VENTA FINALIZADA",), SALE_WAIT)


async def noise(emulator: RegisterEmulator, daemon: DaemonLane) -> None:
    """Line noise between frames and a SALE with a bad CRC (NAK, retransmission)."""
    await emulator.hello()
    emulator.inject_noise(b"\x00\xff\x7e\x03\x10noise")
    emulator.corrupt_next_frame()
    await emulator.sale(1501, "REC-2", within=SALE_WAIT)


async def lost_ack(emulator: RegisterEmulator, daemon: DaemonLane) -> None:
    """The daemon's ACK of SALE is lost, then the register's ACK of the first DISPLAY."""
    await emulator.hello()
    emulator.drop_next_ack_received()
    emulator.drop_next_ack_sent()
    await emulator.sale(1500, "REC-3", within=SALE_WAIT)


async def unplug_mid_sale(emulator: RegisterEmulator, daemon: DaemonLane) -> None:
    """The cable is pulled while the customer is at the terminal; STATUS after replug."""
    await emulator.hello()
    sale = asyncio.create_task(emulator.sale(1503, "REC-4", within=SALE_WAIT))
    await wait_until(lambda: emulator.display[:1] == ("PASE LA TARJETA",), SALE_WAIT)
    daemon.tap.record("event", note="unplug")
    await emulator.unplug()
    await daemon.wait_events("lost", 1)
    daemon.tap.record("event", note="replug")
    await emulator.replug()
    await asyncio.wait_for(sale, SALE_WAIT)


SCENARIOS: dict[str, Scenario] = {
    "normal-sale": normal_sale,
    "noise": noise,
    "lost-ack": lost_ack,
    "unplug-mid-sale": unplug_mid_sale,
}


async def record(name: str, scenario: Scenario, out: Path, work: Path) -> list[dict[str, object]]:
    """Run one scenario and write its transcript; return the requests the engine saw."""
    emulator = await RegisterEmulator.open_pty(work / f"{name}.tty", timers=REGISTER_TIMERS)
    with (out / f"{name}.jsonl").open("w", encoding="utf-8") as transcript:
        daemon = start(emulator.device_path, transcript)
        try:
            await daemon.wait_events("opened", 1)
            await scenario(emulator, daemon)
        finally:
            await daemon.stop()
            await emulator.close()
    return [request_record(r) for r in daemon.engine.requests]


async def record_all(out: Path) -> None:
    """Record every scenario into ``out`` (which must exist) with its meta.json."""
    scenarios: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as work:
        for name, scenario in SCENARIOS.items():
            requests = await record(name, scenario, out, Path(work))
            scenarios[name] = {"description": scenario.__doc__, "requests": requests}
    meta = {
        "device": "pointd register emulator (pointd.sim.register)",
        "firmware": f"pointd {__version__}",
        "protocol": PROTOCOL_VERSION,
        "adapter": "pty (os.openpty) behind a symlink",
        "captured": dt.date.today().isoformat(),
        "captured_by": "python -m tests.replay.record",
        "daemon": {"lane": LANE, "language": LANGUAGE, "engine": "tests/replay/engine_stub.py"},
        "timers": {
            "daemon": asdict(TIMERS),
            "register": asdict(REGISTER_TIMERS),
        },
        "scenarios": scenarios,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES / MODEL
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(record_all(target))
