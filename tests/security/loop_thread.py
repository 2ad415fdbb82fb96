"""An event loop on its own thread, so that synchronous Hypothesis tests can drive async servers.

Hypothesis runs each example as a plain function call; starting a server per example
would cost more than the examples. The server (relay, control socket, register session)
is started once on this loop and each example talks to it over its real socket.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Bound on one call into the loop: real I/O on a loaded 2-core machine, never a timing check.
CALL_TIMEOUT = 20.0


class LoopThread:
    """A running event loop on a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, work: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """Run ``work`` on the loop and return its result."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CALL_TIMEOUT)
        self.loop.close()
