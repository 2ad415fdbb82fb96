"""The wheel as an installer gets it: built with pip, unpacked, its system files installed.

Rules under test (docs/operations.md, "Install on a store PC"): the wheel declares
starlette and uvicorn only under the ``relay`` extra and carries the systemd units, the
udev rules, a sysusers.d file, a tmpfiles.d file, the docs and the examples; ``pointd
install-system-files`` from that wheel puts them in place, and the real systemd tools
accept them: systemd-sysusers creates the pointd user and groups, systemd-tmpfiles the
configuration directories, systemd-analyze verifies the units, whose Documentation= files
exist. An edited udev rules file survives a second install.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from pointd.rig import PACKAGE_ROOT

pytestmark = pytest.mark.slow

DATA = "pointd/data"
SHIPPED = (
    f"{DATA}/systemd/pointd.service",
    f"{DATA}/systemd/pointd-relay.service",
    f"{DATA}/systemd/sysusers.d/pointd.conf",
    f"{DATA}/systemd/tmpfiles.d/pointd.conf",
    f"{DATA}/udev/68-pointd.rules",
    f"{DATA}/docs/operations.md",
    f"{DATA}/examples/pointd.toml",
    f"{DATA}/CHANGELOG.md",
)
SHIPPED_EXEC = "/opt/pointd/venv/bin/pointd"
TOOL_TIMEOUT = 120


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing in CI: .ci/run installs systemd")
        pytest.skip(f"{name} is not installed (Debian package systemd)")
    return found


def _run(*command: str | Path, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True,
                          check=False, env=env, cwd=cwd, timeout=TOOL_TIMEOUT)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "-q", "-w", out, PACKAGE_ROOT)
    assert built.returncode == 0, built.stderr
    [found] = out.glob("pointd-*.whl")
    return found


def test_the_wheel_carries_the_system_files_and_keeps_the_web_server_optional(
    wheel: Path,
) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert set(SHIPPED) <= names
    assert not any(name.startswith("tests/") for name in names)
    requires = metadata.get_all("Requires-Dist") or []
    web = [r for r in requires if r.split(">")[0].split("[")[0].strip() in ("starlette",
                                                                            "uvicorn")]
    assert web, requires
    assert all("extra == 'relay'" in r or "extra == 'test'" in r for r in web), web
    assert "relay" in (metadata.get_all("Provides-Extra") or [])
    assert any(r.startswith("prometheus-client") and "extra" not in r for r in requires)


def test_install_system_files_from_the_wheel_passes_systemds_own_tools(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    root = tmp_path / "root"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site)}
    where = _run(sys.executable, "-c", "import pointd; print(pointd.__file__)", env=env,
                 cwd=tmp_path)
    assert where.stdout.startswith(str(site)), where  # the wheel's pointd, not the checkout's
    installed = _run(sys.executable, "-m", "pointd.cli", "install-system-files", "--root", root,
                     "--register-serial", "FT4ABC12", env=env, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    assert f"systemd-sysusers --root {root}" in installed.stdout

    units = root / "etc/systemd/system"
    assert (root / "usr/local/share/doc/pointd/CHANGELOG.md").is_file()
    rules = root / "etc/udev/rules.d/68-pointd.rules"
    assert 'ATTRS{serial}=="FT4ABC12"' in rules.read_text()
    assert "POINTD-REGISTER-SERIAL" not in rules.read_text()

    sysusers = _run(_tool("systemd-sysusers"), "--root", root)
    assert sysusers.returncode == 0, sysusers.stderr
    passwd = (root / "etc/passwd").read_text()
    group = (root / "etc/group").read_text()
    assert re.search(r"^pointd:x:\d+:\d+:pointd checkout daemon:/var/lib/pointd:", passwd,
                     re.MULTILINE)
    assert re.search(r"^pointd-admin:x:\d+:", group, re.MULTILINE)

    tmpfiles = _run(_tool("systemd-tmpfiles"), "--create", "--root", root)
    assert tmpfiles.returncode == 0, tmpfiles.stderr
    assert stat.S_IMODE((root / "etc/pointd").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "etc/pointd/credentials").stat().st_mode) == 0o700

    binary = tmp_path / "bin" / "pointd"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    for unit in ("pointd.service", "pointd-relay.service"):
        text = (units / unit).read_text()
        for documentation in re.findall(r"^Documentation=file:(\S+)$", text, re.MULTILINE):
            assert (root / documentation.lstrip("/")).is_file(), documentation
        # verify needs ExecStart's binary to exist: a stand-in for /opt/pointd/venv.
        staged = tmp_path / unit
        staged.write_text(text.replace(SHIPPED_EXEC, str(binary)))
        verify = _run(_tool("systemd-analyze"), "verify", staged)
        noise = [line for line in (verify.stdout + verify.stderr).splitlines() if unit in line]
        assert verify.returncode == 0, verify.stderr
        assert noise == []


def test_a_second_install_keeps_the_edited_udev_rules(tmp_path: Path) -> None:
    root = tmp_path / "root"
    command = (sys.executable, "-m", "pointd.cli", "install-system-files", "--root", root)
    assert _run(*command, cwd=PACKAGE_ROOT).returncode == 0
    rules = root / "etc/udev/rules.d/68-pointd.rules"
    edited = rules.read_text().replace("POINTD-REGISTER-SERIAL", "A12345")
    rules.write_text(edited)
    again = _run(*command, cwd=PACKAGE_ROOT)
    assert again.returncode == 0
    assert f"kept {rules}" in again.stdout
    assert rules.read_text() == edited
    assert "POINTD-REGISTER-SERIAL" in Path(f"{rules}.new").read_text()
