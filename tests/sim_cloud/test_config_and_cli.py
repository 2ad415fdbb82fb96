"""The simulator's TOML configuration and the ``pointd sim cloud`` command."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import httpx
import pytest

from pointd.cloud.sites import Site
from pointd.sim.cloud.cli import read_or_create_secret
from pointd.sim.cloud.config import SimConfigError, load_config, parse_device_spec

REPO = Path(__file__).resolve().parents[2]
# Bound for the child process to print its URL or to exit; not a timing rule.
PROCESS_WAIT = 20.0
GOOD_TOML = """
site = "MLB"
time_scale = 0
webhook_url = "http://127.0.0.1:8080/hooks"
notify_all_states = true

[delays]
take = 1.5

[[devices]]
id = "PAX_A910__SMARTPOS0001"
store_id = "42"
pos_id = 3
operating_mode = "STANDALONE"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sim.toml"
    path.write_text(text)
    return path


def test_toml_is_loaded(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD_TOML), access_token="TEST-a", webhook_secret="s")
    assert config.site is Site.MLB
    assert config.delays.take == 1.5
    assert config.delays.close == 1.0
    (device,) = config.devices
    assert (device.store_id, device.pos_id, device.operating_mode) == ("42", 3, "STANDALONE")
    assert "TEST-a" not in repr(config)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("colour = 'red'", "colour"),
        ("[delays]\nnap = 1", "delays.nap"),
        ("[[devices]]\nid = 'PAX_A910__S1'\nserial = 'x'", "devices.serial"),
        ("access_token = 'leak'", "access_token"),
        ("site = 'MLU'", "site"),
        ("[[devices]]\nid = 'no-model'", "MODEL__SERIAL"),
        ("[delays]\ntake = -1", "delays.take"),
        ("time_scale = -2", "time_scale"),
        ("webhook_url = 'ftp://x'", "webhook_url"),
        ("create_status = 202", "create_status"),
        ("devices = 3", "devices"),
        ("site = ", "sim.toml"),
    ],
)
def test_bad_toml_names_the_problem(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(SimConfigError, match=names):
        load_config(write(tmp_path, text), access_token="TEST-a", webhook_secret="s")


def test_device_spec() -> None:
    device = parse_device_spec("GERTEC_MP35P__8701016695109435,store=s-1,pos=7,mode=STANDALONE")
    assert (device.store_id, device.pos_id, device.operating_mode) == ("s-1", 7, "STANDALONE")
    for bad in ("PAX__1,colour=red", "PAX__1,pos=x", "PAX__1,store", "lowercase__1"):
        with pytest.raises(SimConfigError):
            parse_device_spec(bad)


def test_secrets_are_created_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "access_token"
    first = read_or_create_secret(path, prefix="TEST-")
    assert first.startswith("TEST-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_or_create_secret(path) == first
    path.write_text("\n")
    with pytest.raises(SimConfigError, match="empty"):
        read_or_create_secret(path)


async def test_the_command_serves_until_interrupted(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pointd.cli",
        "sim",
        "cloud",
        "--port",
        "0",
        "--time-scale",
        "0",
        "--secrets-dir",
        str(tmp_path / "secrets"),
        "--devices",
        "PAX_A910__SMARTPOS0009,store=77,pos=9",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        lines: dict[str, str] = {}
        while "access token file" not in lines:
            line = (await asyncio.wait_for(process.stdout.readline(), PROCESS_WAIT)).decode()
            assert line, "the simulator exited before printing its settings"
            key, _, value = line.partition(": ")
            lines[key.strip()] = value.strip()
        url = lines["pointd sim cloud"].removeprefix("listening on ")
        token = await asyncio.to_thread(
            lambda: Path(lines["access token file"]).read_text().strip()
        )
        assert token not in "".join(lines.values())
        async with httpx.AsyncClient(base_url=url) as http:
            answer = await http.get(
                "/point/integration-api/devices", headers={"authorization": f"Bearer {token}"}
            )
        assert [d["id"] for d in answer.json()["devices"]] == ["PAX_A910__SMARTPOS0009"]
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), PROCESS_WAIT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_command_refuses_a_bad_config(tmp_path: Path) -> None:
    config = write(tmp_path, "colour = 'red'")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pointd.cli",
        "sim",
        "cloud",
        "--config",
        str(config),
        "--secrets-dir",
        str(tmp_path / "secrets"),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(process.communicate(), PROCESS_WAIT)
    assert process.returncode == 2
    assert b"colour" in err
