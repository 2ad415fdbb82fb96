"""Running a command to its exit from a test, with a ceiling on how long that may take."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path


async def run_to_exit(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, within: float,
) -> tuple[int, str, str]:
    """Run ``argv``; its exit code, stdout and stderr. AssertionError after ``within`` s."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=dict(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(argv)[:200]} did not exit within {within} s") from None
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")
