"""The daemon's periodic jobs on the simulation's clock (a ``JobScheduler`` port).

apscheduler reads the real time of day (``datetime.now``) to decide what is due, which in a
simulation would fire jobs at whatever virtual moment the real clock happened to cross an
interval. This scheduler keeps apscheduler's triggers (the daemon builds them) and asks
them for the next fire time with the daemon's *simulated* wall clock: interval jobs run
every interval of loop time, cron jobs (the end-of-day export) at their local time of the
simulated day, one-off jobs at once. As apscheduler is configured by the daemon
(``coalesce=True, max_instances=1``), a job still running when its time comes again is
not started twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.triggers.interval import IntervalTrigger


@dataclass
class _Job:
    id: str
    func: Callable[[], Awaitable[object]]
    trigger: Any
    next_run_time: dt.datetime | None = None
    handle: asyncio.TimerHandle | None = None
    running: asyncio.Task[object] | None = None


class VirtualJobScheduler:
    """apscheduler's triggers fired on the simulated wall clock."""

    def __init__(self, wall_clock: Callable[[], float], timezone: dt.tzinfo) -> None:
        self._wall = wall_clock
        self._timezone = timezone
        self._jobs: dict[str, _Job] = {}
        self.running = False

    def add_job(self, func: Callable[..., Any], trigger: Any = None, **kwargs: Any) -> _Job:
        """Register a job; ``trigger`` None runs it once as soon as the scheduler runs."""
        job_id = str(kwargs.get("id") or getattr(func, "__name__", "job"))
        previous = self._jobs.pop(job_id, None)
        if previous is not None and previous.handle is not None:
            previous.handle.cancel()
        job = _Job(job_id, func, trigger)
        self._jobs[job_id] = job
        if self.running:
            self._schedule(job, first=True)
        return job

    def start(self) -> None:
        """Arm every job on the running loop."""
        self.running = True
        for job in list(self._jobs.values()):
            self._schedule(job, first=True)

    def shutdown(self, wait: bool = True) -> None:
        """Disarm every job and cancel the ones running."""
        self.running = False
        for job in self._jobs.values():
            if job.handle is not None:
                job.handle.cancel()
            if job.running is not None:
                job.running.cancel()

    def get_jobs(self) -> list[_Job]:
        """Every job, with its next run time."""
        return list(self._jobs.values())

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._wall(), self._timezone)

    def _schedule(self, job: _Job, *, first: bool) -> None:
        loop = asyncio.get_running_loop()
        if job.trigger is None:
            delay = 0.0
        elif isinstance(job.trigger, IntervalTrigger):
            delay = job.trigger.interval.total_seconds()
        else:
            due = job.trigger.get_next_fire_time(None if first else job.next_run_time,
                                                 self._now())
            if due is None:
                self._jobs.pop(job.id, None)
                return
            delay = max(0.0, due.timestamp() - self._wall())
        job.next_run_time = self._now() + dt.timedelta(seconds=delay)
        job.handle = loop.call_later(delay, self._fire, job)

    def _fire(self, job: _Job) -> None:
        job.handle = None
        if not self.running or self._jobs.get(job.id) is not job:
            return
        if job.running is None or job.running.done():
            job.running = asyncio.ensure_future(job.func())
            job.running.add_done_callback(_retrieve)
        if job.trigger is None:
            self._jobs.pop(job.id, None)
        else:
            self._schedule(job, first=False)


def _retrieve(task: asyncio.Task[object]) -> None:
    # The daemon's jobs record their own failures; a cancelled one at shutdown is expected.
    if not task.cancelled():
        task.exception()
