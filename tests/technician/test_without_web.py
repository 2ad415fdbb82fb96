"""A store PC installs pointd without the ``relay`` extra: the daemon needs no web server.

Rules under test (README, docs/operations.md): starlette and uvicorn come only with
``pip install 'pointd[relay]'``; ``pointd run`` starts, serves the register and sells with
neither importable; ``pointd relay`` (and the simulators) then say which extra to install
instead of a traceback.
"""

from __future__ import annotations

import pytest

from pointd.cli import MISSING_EXTRA_EXIT
from pointd.rig import spawn_daemon, toml_text
from tests.technician.conftest import OpenShop

pytestmark = pytest.mark.slow

WITHOUT_WEB = "tests.technician.without_web"


async def test_the_daemon_sells_with_no_web_server_importable(open_shop: OpenShop) -> None:
    async with open_shop(start=False) as shop:
        rig = shop.rig
        rig.config_path.write_text(toml_text(rig.config_document()), encoding="utf-8")
        run = await spawn_daemon(rig.config_path, rig.state_dir / "daemon-no-web.log",
                                 rig.notify,
                                 command=(WITHOUT_WEB, ["run", "--config", str(rig.config_path)]))
        rig.runs.append(run)
        await run.wait_ready()
        await rig.hello_all()
        await shop.lane_ready()
        await shop.approved_sale("no-web-1")
        assert "ModuleNotFoundError" not in run.child.log_text()

        code, _out, err = await shop.command(WITHOUT_WEB, "relay", "--config", "relay.toml")
        assert code == MISSING_EXTRA_EXIT
        assert "pip install 'pointd[relay]'" in err
        assert "Traceback" not in err
        code, _out, err = await shop.command(WITHOUT_WEB, "demo")
        assert code == MISSING_EXTRA_EXIT
        assert "pip install 'pointd[relay]'" in err
