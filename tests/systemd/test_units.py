"""The shipped unit files: systemd-analyze verify, exposure scores, and the hardening traps."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = ("pointd.service", "pointd-relay.service")
SHIPPED_EXEC = "/opt/pointd/venv/bin/pointd"
OPERATIONS_DOC = REPO / "docs" / "operations.md"


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing in CI: .ci/run installs the systemd package")
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return found


def _entries(unit: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, repeated keys kept in order."""
    section = ""
    out = []
    for raw in (REPO / "systemd" / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key, value))
    return out


def _values(unit: str, key: str) -> list[str]:
    return [value for _, k, value in _entries(unit) if k == key]


def _one(unit: str, key: str) -> str:
    (value,) = _values(unit, key)
    return value


def _staged(unit: str, tmp_path: Path, edit: tuple[str, str] | None = None) -> Path:
    # verify needs ExecStart's binary to exist; point it at a stand-in instead of /opt.
    binary = tmp_path / "bin" / "pointd"
    binary.parent.mkdir(exist_ok=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    text = (REPO / "systemd" / unit).read_text().replace(SHIPPED_EXEC, str(binary))
    if edit:
        assert edit[0] in text
        text = text.replace(*edit)
    staged = tmp_path / unit
    staged.write_text(text)
    return staged


def _verify(path: Path) -> tuple[int, str]:
    result = subprocess.run(
        [_analyze(), "verify", str(path)], capture_output=True, text=True, check=False
    )
    # Unknown keys and bad values are only warnings (exit 0): any line naming the file fails.
    noise = [line for line in (result.stdout + result.stderr).splitlines() if path.name in line]
    return result.returncode, "\n".join(noise)


def _exposure(path: Path) -> float:
    result = subprocess.run(
        [_analyze(), "security", "--offline=yes", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def _recorded_exposure(unit: str) -> float:
    # docs/operations.md holds the table "| `unit` | score | ... |" that this test enforces.
    row = rf"\|\s*`{re.escape(unit)}`\s*\|\s*(\d+\.\d)\s*\|"
    match = re.search(row, OPERATIONS_DOC.read_text())
    assert match, f"docs/operations.md records no exposure score for {unit}"
    return float(match.group(1))


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_cleanly(unit: str, tmp_path: Path) -> None:
    code, noise = _verify(_staged(unit, tmp_path))
    assert code == 0
    assert noise == ""


@pytest.mark.parametrize(
    "edit",
    [("ProtectSystem=strict", "ProtectSytem=strict"), ("RestartSec=2s", "RestartSec=two")],
)
def test_the_verify_gate_catches_typos(edit: tuple[str, str], tmp_path: Path) -> None:
    code, noise = _verify(_staged("pointd.service", tmp_path, edit))
    assert code != 0 or noise


@pytest.mark.parametrize("unit", UNITS)
def test_exposure_does_not_regress_past_the_recorded_score(unit: str, tmp_path: Path) -> None:
    staged = _staged(unit, tmp_path)
    recorded = _recorded_exposure(unit)
    assert _exposure(staged) <= recorded
    threshold = round(recorded * 10)  # --threshold is exposure x 10
    gate = subprocess.run(
        [_analyze(), "security", "--offline=yes", f"--threshold={threshold}", str(staged)],
        capture_output=True,
        check=False,
    )
    assert gate.returncode == 0


def test_the_exposure_gate_catches_a_weakened_unit(tmp_path: Path) -> None:
    weakened = _staged("pointd.service", tmp_path, ("ProtectSystem=strict", "ProtectSystem=no"))
    assert _exposure(weakened) > _recorded_exposure("pointd.service")


def test_daemon_unit_keeps_the_notify_and_restart_contract() -> None:
    unit = "pointd.service"
    assert _one(unit, "Type") == "notify"
    assert _one(unit, "NotifyAccess") == "main"
    assert _one(unit, "WatchdogSec").endswith("s")
    assert _one(unit, "Restart") == "on-failure"
    assert _one(unit, "StartLimitBurst")
    assert _one(unit, "StartLimitIntervalSec")
    assert int(_one(unit, "TimeoutStopSec").rstrip("s")) >= 45  # outlasts one HTTP attempt
    assert _one(unit, "ExecStart") == f"{SHIPPED_EXEC} run --config /etc/pointd/pointd.toml"
    assert (_one(unit, "User"), _one(unit, "Group")) == ("pointd", "pointd")
    assert _one(unit, "SupplementaryGroups") == "dialout"
    for directory in ("StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"):
        assert _one(unit, directory) == "pointd"


def test_daemon_unit_avoids_the_hardening_traps() -> None:
    unit = "pointd.service"
    keys = {key for _, key, _ in _entries(unit)}
    assert "PrivateDevices" not in keys  # would hide serial/USB nodes and ptys
    assert "PrivateUsers" not in keys  # would unmap dialout
    assert "MemoryDenyWriteExecute" not in keys  # untested with cffi/ctypes callbacks
    assert _one(unit, "DevicePolicy") == "closed"
    assert set(_values(unit, "DeviceAllow")) == {
        "char-ttyUSB rw",
        "char-ttyACM rw",
        "char-usb_device rw",
    }
    for module in ("modprobe@usbserial.service", "modprobe@cdc_acm.service"):
        assert module in _one(unit, "Wants")
        assert module in _one(unit, "After")
    assert "AF_NETLINK" in _one(unit, "RestrictAddressFamilies").split()
    assert _one(unit, "ProtectSystem") == "strict"
    assert _one(unit, "NoNewPrivileges") == "yes"


def test_secrets_arrive_as_credentials_only() -> None:
    credentials = {v.split(":")[0] for v in _values("pointd.service", "LoadCredential")}
    assert credentials == {"mp_access_token", "mp_webhook_secret", "relay_store_token"}
    assert {v.split(":")[0] for v in _values("pointd-relay.service", "LoadCredential")} == {
        "mp_webhook_secret"
    }
    for unit in UNITS:
        for value in _values(unit, "Environment"):
            assert not re.search(r"token|secret|password", value, re.IGNORECASE)


def test_relay_unit_is_stricter() -> None:
    unit = "pointd-relay.service"
    assert _one(unit, "DynamicUser") == "yes"
    assert _one(unit, "PrivateDevices") == "yes"
    assert "DeviceAllow" not in {key for _, key, _ in _entries(unit)}
    assert "AF_NETLINK" not in _one(unit, "RestrictAddressFamilies")
    assert _one(unit, "ExecStart").startswith(f"{SHIPPED_EXEC} relay ")
    assert _recorded_exposure(unit) < _recorded_exposure("pointd.service")
