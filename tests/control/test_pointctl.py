"""pointctl against a real control server: subcommand → method and params, output, exit codes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pointd.control import cli
from pointd.control.server import ControlServer
from tests.control.conftest import IO_TIMEOUT
from tests.control.fake_daemon import ACCESS_TOKEN, WEBHOOK_SECRET, FakeDaemon

REPO = Path(__file__).resolve().parents[2]


async def until_subscribed(server: ControlServer) -> None:
    """Wait until some connection has subscribed (the server exposes no event for it)."""
    async with asyncio.timeout(IO_TIMEOUT):
        while not any(c["subscribed"] for c in server.connection_report()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def pointctl(server: ControlServer, *argv: str) -> int:
    # main() runs its own event loop, so it runs in a thread beside the server's loop.
    return await asyncio.to_thread(cli.main, ["--socket", str(server.path), *argv])


@pytest.mark.parametrize(
    ("argv", "call"),
    [
        (["status"], ("status", {})),
        (
            ["sales", "--lane", "1", "--state", "held", "--limit", "3"],
            ("sales", {"lane": "1", "state": "held", "limit": 3}),
        ),
        (["sales", "--since", "2026-11-22"], ("sales", {"since": "2026-11-22"})),
        (["sale", "S-1"], ("sale", {"sale_id": "S-1"})),
        (["holds"], ("holds", {})),
        (["terminals"], ("terminals", {})),
        (["relay"], ("relay", {})),
        (["verify", "1234567890"], ("verify", {"payment_id": "1234567890"})),
        (["cancel", "S-1"], ("cancel", {"sale_id": "S-1"})),
        (["cancel", "--lane", "2"], ("cancel", {"lane": "2"})),
        (["reconcile"], ("reconcile", {})),
        (["refund", "S-1"], ("refund", {"sale_id": "S-1"})),
        (
            ["refund", "S-1", "--amount", "12.5"],
            ("refund", {"sale_id": "S-1", "amount_cents": 1250}),
        ),
        (["refund", "S-1", "--amount", "0.01"], ("refund", {"sale_id": "S-1", "amount_cents": 1})),
    ],
)
async def test_each_subcommand_calls_its_method(
    server: ControlServer,
    daemon: FakeDaemon,
    argv: list[str],
    call: tuple[str, dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await pointctl(server, *argv) == cli.EXIT_OK
    assert daemon.calls() == [call]
    out = capsys.readouterr().out
    assert out.strip()
    assert "Traceback" not in out


async def test_override_is_audited_with_the_callers_uid(
    server: ControlServer, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.hold("S-7")
    code = await pointctl(server, "override", "S-7", "--release", "--reason", "saw the slip")
    assert code == cli.EXIT_OK
    params = {"sale_id": "S-7", "decision": "release", "reason": "saw the slip"}
    assert daemon.audits() == [(0, "override", params)]
    assert "overridden" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        [],
        ["sale"],
        ["override", "S-1", "--release"],
        ["override", "S-1", "--release", "--void", "--reason", "x"],
        ["cancel"],
        ["cancel", "S-1", "--lane", "1"],
        ["refund", "S-1", "--amount", "12.345"],
        ["refund", "S-1", "--amount", "abc"],
        ["refund", "S-1", "--amount", "-5"],
        ["refund", "S-1", "--amount", "NaN"],
        ["sales", "--limit", "ten"],
        ["sales", "--since", "yesterday"],
        ["bundle"],
    ],
)
async def test_usage_errors_exit_2_and_send_nothing(
    server: ControlServer,
    daemon: FakeDaemon,
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await pointctl(server, *argv) == cli.EXIT_USAGE
    assert daemon.timeline == []
    assert "usage" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    for command in ("status", "override", "bundle", "watch", "methods"):
        assert command in out


def test_no_daemon_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--socket", str(tmp_path / "none.sock"), "status"]) == cli.EXIT_UNREACHABLE
    assert "cannot connect" in capsys.readouterr().err


async def test_socket_path_comes_from_the_environment(
    server: ControlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.SOCKET_ENV, str(server.path))
    assert await asyncio.to_thread(cli.main, ["holds"]) == cli.EXIT_OK


async def test_daemon_error_exits_1_with_its_message(
    server: ControlServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await pointctl(server, "sale", "S-404") == cli.EXIT_DAEMON_ERROR
    assert "not_found: no sale 'S-404'" in capsys.readouterr().err


async def test_refused_params_say_nothing_was_done(
    server: ControlServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await pointctl(server, "sales", "--state", "paid") == cli.EXIT_DAEMON_ERROR
    assert "(nothing was done)" in capsys.readouterr().err


async def test_status_exit_code_tells_monitoring_about_problems(
    server: ControlServer, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await pointctl(server, "status") == cli.EXIT_OK
    assert "no problems" in capsys.readouterr().out
    daemon.hold("S-5")
    assert await pointctl(server, "status") == cli.EXIT_PROBLEM
    out = capsys.readouterr().out
    # The daemon's list, each problem once (not also as "lane 1: sale held", "1 held").
    assert out.count("S-5") == 2, out  # its lane row, and its one problem line
    assert "sale S-5 on lane 1 is held: do not hand over" in out
    assert await pointctl(server, "--json", "status") == cli.EXIT_PROBLEM
    assert json.loads(capsys.readouterr().out)["holds"] == 1


async def test_lane_down_is_a_problem(
    server: ControlServer, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.lane_condition = "terminal_not_connected"
    assert await pointctl(server, "status") == cli.EXIT_PROBLEM
    assert "lane 1: terminal_not_connected" in capsys.readouterr().out


async def test_json_output_is_the_raw_result(
    server: ControlServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await pointctl(server, "--json", "sales") == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["sales"][0]["sale_id"] == "S-1"


async def test_tables_are_readable(
    server: ControlServer, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.hold("S-5")
    await pointctl(server, "holds")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["SALE", "RECEIPT", "LANE", "STATE", "AMOUNT"]
    assert lines[1].split()[:5] == ["S-5", "-", "1", "held", "25.99"]
    await pointctl(server, "methods")
    out = capsys.readouterr().out
    assert "override" in out
    assert "admin" in out
    assert "[amount_cents]" in out


async def test_bundle_is_written_private_and_redacted(
    server: ControlServer, sock_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = sock_dir / "bundle.tar.gz"
    assert await pointctl(server, "bundle", "-o", str(target)) == cli.EXIT_OK
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    data = target.read_bytes()
    assert hashlib.sha256(data).hexdigest() in capsys.readouterr().out
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        texts = [tar.extractfile(m).read().decode() for m in tar.getmembers()]  # type: ignore[union-attr]
    assert "pointd-bundle/status.json" in names
    assert "pointd-bundle/logs.txt" in names
    for text in texts:
        assert ACCESS_TOKEN not in text
        assert WEBHOOK_SECRET not in text


async def test_bundle_to_an_unwritable_path_is_a_usage_error(
    server: ControlServer, sock_dir: Path, daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await pointctl(server, "bundle", "-o", str(sock_dir)) == cli.EXIT_USAGE
    assert "cannot write" in capsys.readouterr().err
    assert daemon.timeline == []


async def test_failed_bundle_leaves_no_empty_file(
    server: ControlServer, sock_dir: Path, daemon: FakeDaemon
) -> None:
    async def broken() -> dict[str, Any]:
        return {"content_b64": "not base64!", "sha256": "0"}

    daemon.do_bundle = broken  # type: ignore[method-assign]
    target = sock_dir / "b.tar.gz"
    assert await pointctl(server, "bundle", "-o", str(target)) == cli.EXIT_DAEMON_ERROR
    assert not target.exists()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


async def test_watch_redraws_on_events_and_ctrl_c_exits_0(server: ControlServer) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pointd.control.cli",
        "--socket",
        str(server.path),
        "watch",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=REPO,
    )
    assert process.stdout is not None
    try:
        first = await asyncio.wait_for(process.stdout.readuntil(b"to exit)\n"), IO_TIMEOUT)
        assert first.startswith(cli.CLEAR_SCREEN.encode())
        assert b"no problems" in first
        await until_subscribed(server)
        server.publish("sale", {"sale_id": "S-1", "state": "held"})
        second = await asyncio.wait_for(process.stdout.readuntil(b"to exit)\n"), IO_TIMEOUT)
        assert second.startswith(cli.CLEAR_SCREEN.encode())
        assert re.search(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  sale S-1 lane -: held", second)
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), IO_TIMEOUT)
    assert code == cli.EXIT_OK


async def test_watch_json_streams_events(server: ControlServer) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pointd.control.cli",
        "--socket",
        str(server.path),
        "--json",
        "watch",
        stdout=subprocess.PIPE,
        env=_env(),
        cwd=REPO,
    )
    assert process.stdout is not None
    try:
        first = json.loads(await asyncio.wait_for(process.stdout.readline(), IO_TIMEOUT))
        assert first["event"] == "status"  # the state before any change
        assert first["data"]["ready"] is True
        await until_subscribed(server)
        server.publish("relay", {"connected": False})
        line = await asyncio.wait_for(process.stdout.readline(), IO_TIMEOUT)
        assert json.loads(line) == {"event": "relay", "data": {"connected": False}}
        await server.close()
        code = await asyncio.wait_for(process.wait(), IO_TIMEOUT)
        assert code == cli.EXIT_DAEMON_ERROR  # the daemon went away under the watcher
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
