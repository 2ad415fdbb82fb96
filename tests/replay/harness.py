"""The daemon's side of one lane for recording and replaying register transcripts.

The replayed daemon uses the recording's link timers (``TIMERS``), so that it retransmits
exactly where the recorded one did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from pointd.link.arq import LinkTimers
from pointd.link.driver import LinkDriver
from pointd.link.trace import ByteTap
from pointd.register.messages import redact_card_data
from pointd.register.session import RegisterRequest, RegisterSession
from tests.replay.engine_stub import StubEngine

FIXTURES = Path(__file__).resolve().parents[2] / "hardware-fixtures" / "register"
# Long enough that a replay on a busy machine answers in time, short enough that a lost-ACK
# scenario records in a second. The two sides differ so that their retransmissions never
# coincide in a recording.
TIMERS = LinkTimers(ack_timeout=0.5, max_send_attempts=3, keepalive_interval=60.0)
REGISTER_TIMERS = LinkTimers(ack_timeout=0.2, max_send_attempts=3, keepalive_interval=60.0)
LANE = 1
LANGUAGE = "es"
EVENT_WAIT = 5.0


async def wait_until(condition: Callable[[], bool], within: float = EVENT_WAIT) -> None:
    """Poll for a state that real I/O will bring about (never for a timing rule)."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


@dataclass
class DaemonLane:
    """A running session with its link, stub engine and byte tap."""

    session: RegisterSession
    engine: StubEngine
    link: LinkDriver
    tap: ByteTap
    task: asyncio.Task[None]

    def count_events(self, prefix: str) -> int:
        """How many link events whose note starts with ``prefix`` the tap has seen."""
        return sum(1 for r in self.tap.records() if r.dir == "event" and r.note.startswith(prefix))

    async def wait_events(self, prefix: str, count: int) -> None:
        """Wait until the tap has seen ``count`` such events."""
        await wait_until(lambda: self.count_events(prefix) >= count)

    async def stop(self) -> None:
        """Stop the session and the engine's pending pushes."""
        self.session.stop()
        await asyncio.wait_for(self.task, EVENT_WAIT)
        await self.engine.close()


def start_daemon(url: str, transcript: TextIO | None = None) -> DaemonLane:
    """Start the daemon's side of the lane on ``url``."""
    tap = ByteTap(
        asyncio.get_running_loop().time,
        redact=redact_card_data,
        capacity=100_000,
        transcript=transcript,
    )
    engine = StubEngine()
    session = RegisterSession(lane=LANE, language=LANGUAGE, handler=engine)
    engine.attach(session)
    link = LinkDriver(
        url, timers=TIMERS, tap=tap, reconnect_min_delay=0.02, reconnect_max_delay=0.1
    )
    task = asyncio.create_task(session.run(link))
    return DaemonLane(session, engine, link, tap, task)


def request_record(request: RegisterRequest) -> dict[str, object]:
    """A request as it is kept in meta.json."""
    return {"type": type(request).__name__, **asdict(request)}
