"""``pointctl bundle`` from the real ``pointd run``: every file parses, and holds no secret.

Rules under test (docs/control-socket.md, "Support bundle"): the tar.gz holds README.txt,
status.json, sales.json, config.json, versions.json, connections.json and logs.txt; each
``.json`` member is valid JSON (a null setting stays null), each line of logs.txt is one of
the daemon's JSON log lines, and no secret the daemon knows appears anywhere.
"""

from __future__ import annotations

import json
import re
import stat
import tarfile
from pathlib import Path

import pytest

from tests.technician.conftest import OpenShop

pytestmark = pytest.mark.slow

MEMBERS = {"README.txt", "status.json", "sales.json", "config.json", "versions.json",
           "connections.json", "logs.txt"}


async def test_a_real_daemons_bundle_parses_and_holds_no_secret(
    open_shop: OpenShop, tmp_path: Path
) -> None:
    async with open_shop(relay="process") as shop:
        await shop.lane_ready()
        await shop.approved_sale("bundle-1")
        target = tmp_path / "bundle.tar.gz"
        code, out, err = await shop.pointctl_text("bundle", "-o", str(target))
        assert code == 0, err
        assert f"written_to: {target}" in out
        secrets = shop.rig.secrets

    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with tarfile.open(target) as tar:
        contents = {
            Path(member.name).name: tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in tar.getmembers()
        }
    assert set(contents) == MEMBERS
    for name, data in contents.items():
        text = data.decode()
        for secret in (secrets.access_token, secrets.webhook_secret, secrets.store_token):
            assert secret not in text, f"{name} holds a secret"
        assert not re.search(r"\b(?:APP_USR|TEST)-[A-Za-z0-9-]{8,}", text), name
        if name.endswith(".json"):
            json.loads(text)  # raises on the old unquoted [redacted] for null

    config = json.loads(contents["config.json"])
    assert config["store"]["id"] == "tech-shop"
    assert config["metrics"]["listen"] is None  # a null stays a JSON null
    assert config["cloud"]["access_token_file"].endswith("mp_access_token")
    sales = json.loads(contents["sales.json"])
    assert [s["correlation_id"] for s in sales["sales"]] == ["bundle-1"]
    lines = [json.loads(line) for line in contents["logs.txt"].decode().splitlines()]
    events = {line["event"] for line in lines}
    assert {"daemon.ready", "journal.replayed"} <= events
    assert all(line["timestamp"].endswith("Z") for line in lines)
