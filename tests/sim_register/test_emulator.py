"""The register emulator: socket mode, scripts, and the ``pointd sim register`` command."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pointd.link.arq import LinkTimers
from pointd.link.driver import LinkDriver
from pointd.register import messages as m
from pointd.register.session import RegisterSession, SaleRequest
from pointd.sim.register import EmulatorError, RegisterEmulator
from pointd.sim.register.cli import _amount_cents
from pointd.sim.register.script import ScriptedSale, ScriptError, load_script
from tests.replay.engine_stub import StubEngine

FAST = LinkTimers(ack_timeout=0.1, max_send_attempts=3, keepalive_interval=30.0)
WAIT = 10.0
MAIN = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def daemon(url: str) -> AsyncIterator[StubEngine]:
    """The daemon's side of one lane, on ``url``, with the stub engine."""
    engine = StubEngine()
    session = RegisterSession(lane=2, language="en", handler=engine)
    engine.attach(session)
    link = LinkDriver(url, timers=FAST, reconnect_min_delay=0.01, reconnect_max_delay=0.05)
    task = asyncio.create_task(session.run(link))
    try:
        yield engine
    finally:
        session.stop()
        await asyncio.wait_for(task, WAIT)
        await engine.close()


async def test_socket_mode_sale() -> None:
    emulator = await RegisterEmulator.open_socket(timers=FAST)
    assert emulator.device_path.startswith("socket://127.0.0.1:")
    try:
        async with daemon(emulator.device_path) as engine:
            outcome = await asyncio.wait_for(emulator.sale(2000, "N-1"), WAIT)
            assert outcome.outcome is m.Outcome.APPROVED
            assert emulator.display == ("PAYMENT APPROVED", "HAND OVER GOODS")
            assert engine.requests == [SaleRequest("N-1", 2000)]
    finally:
        await emulator.close()


async def test_socket_mode_survives_the_daemon_reconnecting() -> None:
    emulator = await RegisterEmulator.open_socket(timers=FAST)
    try:
        async with daemon(emulator.device_path):
            await asyncio.wait_for(emulator.sale(2000, "N-2"), WAIT)
        async with daemon(emulator.device_path) as engine:
            reply = await asyncio.wait_for(emulator.status("N-2"), WAIT)
            assert reply.state == "unknown"  # a new daemon (stub) with an empty journal
            assert engine.requests[0].correlation_id == "N-2"
    finally:
        await emulator.close()


async def test_sale_without_a_daemon_times_out_clearly(tmp_path: Path) -> None:
    emulator = await RegisterEmulator.open_pty(tmp_path / "register", timers=FAST)
    try:
        with pytest.raises(EmulatorError, match="HELLO"):
            await emulator.sale(1500, within=0.5)
    finally:
        await emulator.close()


async def test_unplug_needs_a_pty() -> None:
    emulator = await RegisterEmulator.open_socket(timers=FAST)
    try:
        with pytest.raises(EmulatorError):
            await emulator.unplug()
    finally:
        await emulator.close()


def test_script_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[[sale]]\namount = 1500\nexpect = "approved"\nid = "T-1"\n')
    assert load_script(toml) == [ScriptedSale(1500, m.Outcome.APPROVED, "T-1")]
    json_file = tmp_path / "s.json"
    json_file.write_text('[{"amount": 1501, "expect": "declined", "terminal": "PAX_1"}]')
    assert load_script(json_file) == [ScriptedSale(1501, m.Outcome.DECLINED, None, "PAX_1")]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('[[sale]]\namount = 1500\nexpect = "approved"\ncolour = "red"\n', "unknown key 'colour'"),
        ('[[sale]]\namount = "15.00"\nexpect = "approved"\n', "integer number of cents"),
        ('[[sale]]\namount = 0\nexpect = "approved"\n', "amount must be"),
        ('[[sale]]\namount = 100\nexpect = "paid"\n', "expect must be one of"),
        ('[[sale]]\namount = 100\nexpect = "approved"\nid = "has space"\n', "correlation id"),
        ("[[sale]\n", "s.toml"),
        ("title = 'x'\n", "unknown key 'title'"),
        ("", "no sales"),
    ],
)
def test_bad_scripts_are_explained(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ScriptError, match=complaint):
        load_script(path)


def test_missing_script(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="cannot read"):
        load_script(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "cents"),
    [
        ("1500", 1500),
        ("15.00", 1500),
        ("15.5", 1550),
        ("0", None),
        ("1.001", None),
        ("abc", None),
        ("-3", None),
    ],
)
def test_interactive_amounts(text: str, cents: int | None) -> None:
    assert _amount_cents(text) == cents


async def _start_cli(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    env = {**os.environ, "PYTHONPATH": str(MAIN)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pointd.cli",
        "sim",
        "register",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=MAIN,
        env=env,
    )
    assert process.stdout is not None
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), WAIT)).decode()
        assert line, "the emulator exited before printing its device"
        if line.startswith("register device: "):
            return process, line.removeprefix("register device: ").strip()


@pytest.mark.parametrize(("expect", "exit_code"), [("declined", 0), ("approved", 1)])
async def test_cli_script_exit_code_says_whether_all_matched(
    tmp_path: Path, expect: str, exit_code: int
) -> None:
    script = tmp_path / "sales.toml"
    script.write_text(
        '[[sale]]\namount = 1500\nexpect = "approved"\n'
        f'[[sale]]\namount = 1501\nexpect = "{expect}"\n'
    )
    process, device = await _start_cli("--pty", "--script", str(script), "--ack-timeout", "0.1")
    async with daemon(device) as engine:
        assert await asyncio.wait_for(process.wait(), WAIT) == exit_code
        assert [r.amount_cents for r in engine.requests if isinstance(r, SaleRequest)] == [
            1500,
            1501,
        ]
    assert process.stdout is not None
    out = (await process.stdout.read()).decode()
    assert "[display info] PAYMENT APPROVED | HAND OVER GOODS" in out
    assert ("MISMATCH" in out) is (exit_code == 1)


async def test_cli_interactive_sale_over_a_socket(tmp_path: Path) -> None:
    process, device = await _start_cli("--listen", "0", "--ack-timeout", "0.1")
    assert device.startswith("socket://127.0.0.1:")
    assert process.stdin is not None
    assert process.stdout is not None
    async with daemon(device):
        process.stdin.write(b"15.00\n")
        await process.stdin.drain()
        seen = ""
        while "approved" not in seen:
            line = await asyncio.wait_for(process.stdout.readline(), WAIT)
            assert line, seen
            seen += line.decode()
        process.stdin.write(b"quit\n")
        await process.stdin.drain()
        assert await asyncio.wait_for(process.wait(), WAIT) == 0
    assert "1500 cents" in seen
    assert "payment=P1500 card=4242" in seen


async def test_cli_rejects_a_bad_script_with_usage_exit(tmp_path: Path) -> None:
    script = tmp_path / "bad.toml"
    script.write_text('[[sale]]\namount = 1\nexpect = "nope"\n')
    env = {**os.environ, "PYTHONPATH": str(MAIN)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pointd.cli",
        "sim",
        "register",
        "--pty",
        "--script",
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=MAIN,
        env=env,
    )
    _out, err = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 2
    assert b"expect must be one of" in err
