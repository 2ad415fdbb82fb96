"""The one fake of the clock and timer ports: time moves only when a test moves it.

``ManualClock`` is a wall or monotonic clock (call it), a ``TimerService`` (``call_at``,
as the engine and the lane terminals take it) and a ``sleep`` (which records the wait and
moves the clock by it). ``advance`` moves time and fires, in due order, every timer that
fell due; ``fire_all`` fires every armed timer whatever its due time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ManualTimer:
    """One armed timer; ``cancel`` disarms it."""

    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """Disarm the timer; no effect once it fired."""
        self.cancelled = True

    def fire(self) -> None:
        """Run the callback once, unless disarmed."""
        if not self.cancelled:
            self.cancelled = True
            self.callback()


@dataclass
class ManualClock:
    """Time a test moves by hand, with the timers and sleeps that follow it."""

    now: float = 1_790_000_000.0
    sleeps: list[float] = field(default_factory=list)
    _heap: list[tuple[float, int, ManualTimer]] = field(default_factory=list, repr=False)
    _order: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def __call__(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> ManualTimer:
        """Run ``callback`` once the clock is advanced to ``when`` (soon if already due)."""
        timer = ManualTimer(callback)
        if when <= self.now:
            asyncio.get_running_loop().call_soon(timer.fire)
        else:
            heapq.heappush(self._heap, (when, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> int:
        """Move forward and fire, in due order, every timer that fell due; return how many."""
        self.now += seconds
        fired = 0
        while self._heap and self._heap[0][0] <= self.now:
            _when, _order, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.fire()
                fired += 1
        return fired

    def fire_all(self) -> int:
        """Fire every armed timer now, whatever its due time; return how many."""
        due, self._heap = self._heap, []
        fired = 0
        for _when, _order, timer in sorted(due):
            if not timer.cancelled:
                timer.fire()
                fired += 1
        return fired

    def pending(self) -> list[float]:
        """Due times of the armed timers, soonest first."""
        return sorted(when for when, _order, timer in self._heap if not timer.cancelled)

    async def sleep(self, seconds: float) -> None:
        """A sleep that takes no real time: record it and move the clock by it."""
        self.sleeps.append(seconds)
        self.advance(seconds)
