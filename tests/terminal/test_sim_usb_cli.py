"""``pointd sim usb`` through the real dispatcher: listing, lsusb lines, JSON, bad fixtures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pointd import cli


def test_lists_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "usb"]) == 0
    out = capsys.readouterr().out
    for model in ("pax-a910", "gertec-mp35p", "ingenico-move2500", "ftdi-ft232r", "ch340"):
        assert model in out
    assert "2fb8:2201" in out


def test_lsusb_lines_are_read_back_through_pyusb(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "usb", "--lsusb"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "Bus 001 Device 002: ID 1a86:7523 USB2.0-Serial (no serial)" in lines
    assert any("ID 1753:c902 GERTEC MP35P serial=8701016695109435" in line for line in lines)


def test_json_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "usb", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {item["model"] for item in listing} >= {"pax-a910", "ch340"}
    assert next(i for i in listing if i["model"] == "ch340")["default_serial"] is None


def test_a_broken_fixture_directory_is_a_clear_error(
    tmp_path: Path, usb_fixtures: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(usb_fixtures / "pax-a910.json", tmp_path)
    (tmp_path / "bad.json").write_text('{"format": "pointd-usb-descriptor/1"}', encoding="utf-8")
    assert cli.main(["sim", "usb", "--fixtures", str(tmp_path)]) == 1
    assert "bad.json.model" in capsys.readouterr().err


def test_runs_as_a_process() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "pointd.cli", "sim", "usb", "--lsusb"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ID 2fb8:2201 PAX A910 serial=1234345545" in done.stdout
