"""The no-lingering-tasks and no-lingering-threads checks of tests/conftest.py catch leaks.

Each case runs a tiny test module under this suite's own conftest in a fresh pytest and
insists that the leak fails it, and that the same module without the leak passes.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"

LEAKS = {
    "task": (
        "import asyncio\n\n"
        "async def test_it():\n"
        "    asyncio.get_running_loop().create_task(asyncio.sleep(3600), name='forgotten')\n",
        "left tasks running",
    ),
    "thread": (
        "import threading\n\n"
        "STOP = threading.Event()\n\n"
        "def test_it():\n"
        "    threading.Thread(target=STOP.wait, name='forgotten', daemon=True).start()\n",
        "left threads running: forgotten",
    ),
}


@pytest.mark.parametrize("kind", sorted(LEAKS))
def test_a_leak_fails_the_test(pytester: pytest.Pytester, kind: str) -> None:
    source, message = LEAKS[kind]
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(test_leak=source)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines([f"*{message}*"])


def test_a_clean_test_passes(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(test_clean="import asyncio\n\nasync def test_it():\n"
                                   "    await asyncio.sleep(0)\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 0


def test_a_suite_started_with_ctrl_c_ignored_still_interrupts_its_children(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(test_child=(
        "import signal, subprocess, sys\n\n"
        "def test_it():\n"
        "    probe = 'import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)'\n"
        "    done = subprocess.run([sys.executable, '-c', probe], capture_output=True,\n"
        "                          text=True, check=True)\n"
        "    assert done.stdout.strip() == 'False'\n"
    ))
    # As `cmd &` in a non-interactive shell starts it: the fresh pytest inherits SIG_IGN.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.ret == 0, result.stdout.str()
