"""A store PC installs pointd without the ``relay`` extra: the daemon needs no web server.

Rules under test (README, docs/operations.md): starlette and uvicorn come only with
``pip install 'pointd[relay]'``; ``pointd run`` starts, serves the register and sells with
neither installed; ``pointd relay`` (and the simulators) then say which extra to install
instead of a traceback.

The store PC is a real virtual environment made for the test: every distribution of the
test's own environment is linked into it except starlette and uvicorn, so those imports
fail the way they fail on a PC that never installed them (no import hook in the way).
"""

from __future__ import annotations

import sysconfig
import venv
from pathlib import Path

import pytest

from pointd.cli import MISSING_EXTRA_EXIT
from pointd.rig import PACKAGE_ROOT, child_environment, spawn_daemon, toml_text
from tests.support.subprocesses import run_to_exit
from tests.technician.conftest import POINTCTL_TIMEOUT, OpenShop

pytestmark = pytest.mark.slow

WEB_SERVER = ("starlette", "uvicorn")


def _is_web_server(entry: Path) -> bool:
    name = entry.name.lower().replace("-", "_")
    return any(name == package or name.startswith((f"{package}.", f"{package}_", f"{package}-"))
               for package in WEB_SERVER)


def store_pc_python(root: Path) -> str:
    """A virtual environment with what pointd needs and no web server: its interpreter."""
    venv.create(root, with_pip=False)
    [site_packages] = root.glob("lib/python3*/site-packages")
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if not _is_web_server(entry):
            (site_packages / entry.name).symlink_to(entry)
    return str(root / "bin" / "python")


async def test_the_daemon_sells_with_no_web_server_installed(open_shop: OpenShop,
                                                             tmp_path: Path) -> None:
    python = store_pc_python(tmp_path / "store-pc")
    for package in WEB_SERVER:
        code, _out, err = await run_to_exit([python, "-c", f"import {package}"],
                                            env=child_environment(), cwd=PACKAGE_ROOT,
                                            within=POINTCTL_TIMEOUT)
        assert code == 1, err
        assert "ModuleNotFoundError" in err
    async with open_shop(start=False) as shop:
        rig = shop.rig
        rig.config_path.write_text(toml_text(rig.config_document()), encoding="utf-8")
        run = await spawn_daemon(rig.config_path, rig.state_dir / "daemon-no-web.log",
                                 rig.notify, python=python)
        rig.runs.append(run)
        await run.wait_ready()
        await rig.hello_all()
        await shop.lane_ready()
        await shop.approved_sale("no-web-1")
        assert "ModuleNotFoundError" not in run.child.log_text()

        for command in (["relay", "--config", "relay.toml"], ["demo"]):
            code, _out, err = await run_to_exit([python, "-m", "pointd.cli", *command],
                                                env=child_environment(), cwd=PACKAGE_ROOT,
                                                within=POINTCTL_TIMEOUT)
            assert code == MISSING_EXTRA_EXIT, err
            assert "pip install 'pointd[relay]'" in err
            assert "Traceback" not in err
