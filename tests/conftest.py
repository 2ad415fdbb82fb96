"""Fixtures shared by every test area; each area adds its own conftest.py beside its tests.

Every test must leave nothing running behind it (as aioesphomeapi's conftest insists):

- no asyncio task of its event loop still pending once its fixtures are torn down
  (``no_lingering_tasks``): a task left behind is a part some test or fixture forgot to
  stop, and would run on into the next test or be cancelled mid-write at loop close;
- no thread still alive once a test module's fixtures are all torn down that was not
  there before its first test (``pytest_runtest_teardown``): a thread left behind is a
  writer, a server or an executor nobody closed. (Per module, not per test: a module-scoped
  fixture's server thread rightly lives from the module's first test to its last.)
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis fails an example that takes over 200 ms by default; with every core running a
# test worker beside other suites, a scheduling stall can be that long. How fast code runs is
# measured in bench/, never asserted in a test, so no property test has a deadline.
settings.register_profile("pointd", deadline=None)
settings.load_profile("pointd")

# Turns of the loop a finished test gets for callbacks that end tasks (done callbacks,
# cancellations being delivered) before what is still pending counts as left behind.
SETTLE_TURNS = 20
# A thread that is stopping may need a moment to end after its join was asked; this bounds it.
THREAD_END_TIMEOUT = 10.0
THREAD_LOOK_INTERVAL = 0.01


def pytest_configure(config: pytest.Config) -> None:
    """Let the processes the tests start be stopped with Ctrl-C (SIGINT), as a technician does.

    A suite started in the background of a non-interactive shell (``cmd &`` in a CI script,
    a job runner) inherits SIGINT ignored, and an ignored signal stays ignored across exec:
    every ``pointctl watch`` the tests then interrupt would run on until its test times out.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slow tests (whole processes, up to a minute each) first.

    pytest-xdist hands tests to its workers in this order; a slow test handed out last
    would leave one worker running it alone while the others have nothing left to do.
    The sort is stable, so each module's tests keep their order.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
async def no_lingering_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves a task of its event loop pending."""
    before = asyncio.all_tasks()
    yield
    mine = asyncio.current_task()
    for _ in range(SETTLE_TURNS):
        lingering = {t for t in asyncio.all_tasks() - before if t is not mine and not t.done()}
        if not lingering:
            return
        await asyncio.sleep(0)
    for task in lingering:
        task.cancel()
    await asyncio.gather(*lingering, return_exceptions=True)
    names = sorted(f"{task.get_name()}: {task.get_coro()!r}" for task in lingering)
    pytest.fail("the test left tasks running:\n  " + "\n  ".join(names), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    _THREADS_BEFORE.setdefault(item.path, frozenset(threading.enumerate()))
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    result = yield
    if nextitem is not None and nextitem.path == item.path:
        return result  # the module's fixtures live on into its next test
    before = _THREADS_BEFORE.pop(item.path, frozenset())
    deadline = time.monotonic() + THREAD_END_TIMEOUT
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left:
            return result
        if time.monotonic() >= deadline:
            names = ", ".join(sorted(thread.name for thread in left))
            pytest.fail(f"the tests of {item.path.name} left threads running: {names}",
                        pytrace=False)
        time.sleep(THREAD_LOOK_INTERVAL)


# The threads alive before each test module's first test, by module path.
_THREADS_BEFORE: dict[Path, frozenset[threading.Thread]] = {}
