"""The supervisor: the daemon's one failure path, and the start-up gate."""

from __future__ import annotations

import asyncio

from pointd.app.supervisor import StartUpGate, Supervisor
from pointd.app.systemd_notify import Notifier

# Bounds on waiting for a task's end to be noticed (a loop turn or two).
WAIT = 5.0


class RecordingNotifier(Notifier):
    """A notifier that keeps the STATUS= lines instead of sending them."""

    def __init__(self) -> None:
        super().__init__(None)
        self.statuses: list[str] = []

    def status(self, text: str) -> bool:
        self.statuses.append(text)
        return True


async def broken() -> None:
    raise RuntimeError("the wire is gone")


async def forever() -> None:
    await asyncio.Event().wait()


async def test_an_essential_task_that_raises_fails_the_daemon_once() -> None:
    notifier = RecordingNotifier()
    supervisor = Supervisor(notifier)
    supervisor.spawn(forever(), "engine", essential=True)
    supervisor.spawn(broken(), "register-1", essential=True)
    await asyncio.wait_for(supervisor.wait(), WAIT)
    assert supervisor.failure == "register-1 failed: RuntimeError: the wire is gone"
    assert not supervisor.healthy
    assert notifier.statuses == [f"failed: {supervisor.failure}"]
    await supervisor.cancel_all()
    assert notifier.statuses == [f"failed: {supervisor.failure}"]  # cancelling is no failure


async def test_an_essential_task_that_returns_or_is_cancelled_by_someone_else_fails_too() -> None:
    for work, reason in ((asyncio.sleep(0), "relay-consumer ended"),
                         (forever(), "relay-consumer was cancelled")):
        supervisor = Supervisor(RecordingNotifier())
        supervisor.spawn(work, "relay-consumer", essential=True)
        if reason.endswith("cancelled"):
            [task] = [t for t in asyncio.all_tasks() if t.get_name() == "relay-consumer"]
            task.cancel()
        await asyncio.wait_for(supervisor.wait(), WAIT)
        assert supervisor.failure == reason
        await supervisor.cancel_all()


async def test_a_non_essential_task_that_fails_is_only_logged() -> None:
    supervisor = Supervisor(RecordingNotifier())
    supervisor.spawn(broken(), "condition-1", essential=False)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert supervisor.failure is None
    assert supervisor.healthy
    await supervisor.cancel_all()


async def test_a_task_that_ends_while_stopping_is_no_failure() -> None:
    notifier = RecordingNotifier()
    supervisor = Supervisor(notifier)
    supervisor.request_stop()
    supervisor.spawn(broken(), "control-socket", essential=True)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert supervisor.failure is None
    assert notifier.statuses == []
    await supervisor.cancel_all()


async def test_the_start_up_gate_holds_waiters_until_it_opens() -> None:
    gate = StartUpGate()
    waiter = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert not gate.is_open
    gate.open()
    await asyncio.wait_for(waiter, WAIT)
    assert gate.is_open
