"""``pointd run --check`` on a real store: each line ok or fail with the fix, honest exit codes.

Rules under test (docs/operations.md, "Check an installation"): with everything right
every line is ``ok`` and the exit code is 0; a credential file others can read, or any
configuration problem, is a ``fail`` line with the fix and exit 78, the exit code of
``pointd relay --check`` (which refuses the example relay.toml's all-zero token hash) and
of ``pointd run`` itself; a store token the relay does not know, an access token Mercado
Pago refuses or a register port that cannot be opened fail with exit 1. The relay logs
the store that polled with the wrong token.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from pointd.app import selfcheck
from pointd.config import EXIT_CONFIG
from pointd.rig import PACKAGE_ROOT, toml_text
from tests.technician.conftest import DEVICE, OpenShop, Shop


async def _check(shop: Shop, config: Path | None = None) -> tuple[int, str]:
    code, out, err = await shop.command(
        "pointd.cli", "run", "--config", str(config or shop.rig.config_path), "--check")
    assert err == "", err
    for line in out.splitlines():
        assert re.match(r"(ok  |fail) \S.*: |     fix: \S", line), line
    return code, out


def _fails(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("fail")]


@pytest.mark.slow
async def test_check_passes_on_a_sound_store_and_names_each_fault_with_its_fix(
    open_shop: OpenShop, tmp_path: Path
) -> None:
    async with open_shop(relay="process", start=False) as shop:
        rig = shop.rig
        rig.config_path.write_text(toml_text(rig.config_document()), encoding="utf-8")

        code, out = await _check(shop)
        assert code == 0, out
        assert _fails(out) == []
        assert f"ok   lane 1 register {rig.registers[1].device_path}: opens" in out
        assert "the access token works (1 terminals on the account)" in out
        assert f"ok   lane 1 terminal: {DEVICE} in PDV mode" in out
        assert "store tech-shop is served with this store token" in out

        token_file = rig.state_dir / "mp_access_token"
        token_file.chmod(0o644)
        code, out = await _check(shop)
        assert code == EXIT_CONFIG
        [fail] = _fails(out)
        assert "has mode 0644" in fail
        assert f"chmod 600 {token_file}" in fail
        token_file.chmod(0o600)

        token_file.write_text("TEST-not-the-accounts-token")
        store_file = rig.state_dir / "relay_store_token"
        store_file.write_text("not-this-stores-token")
        code, out = await _check(shop)
        assert code == 1
        mercado_pago, relay = _fails(out)
        assert "the access token was refused (401)" in mercado_pago
        assert "refused store tech-shop's token (404)" in relay
        assert 'token_sha256 = the sha256 of this PC\'s relay_store_token' in out
        relay_log = (rig.state_dir / "relay.log").read_text()
        assert '"event": "store_token_refused"' in relay_log
        assert '"store": "tech-shop"' in relay_log
        assert "not-this-stores-token" not in relay_log

        os.unlink(rig.registers[1].device_path)
        code, out = await _check(shop)
        assert re.search(r"^fail lane 1 register .*: cannot be opened: .*\n +fix: is the "
                         r"register's USB adapter plugged in", out, re.MULTILINE), out


@pytest.mark.slow
async def test_a_bad_configuration_is_exit_78_for_the_daemon_and_the_relay_alike(
    open_shop: OpenShop, tmp_path: Path
) -> None:
    async with open_shop(start=False) as shop:
        bad = tmp_path / "bad.toml"
        bad.write_text('[store]\nid = "x"\nsite = "MLA"\ncollector_id = 1\nsurprise = 1\n')
        code, out = await _check(shop, bad)
        assert code == EXIT_CONFIG
        assert "store.surprise: unknown key" in out
        run_code, _out, err = await shop.command("pointd.cli", "run", "--config", str(bad))
        assert run_code == EXIT_CONFIG
        assert "store.surprise" in err

        example = PACKAGE_ROOT / "examples" / "relay.toml"
        relay_code, _out, err = await shop.command(
            "pointd.cli", "relay", "--config", str(example), "--check")
        assert relay_code == EXIT_CONFIG
        assert "token_sha256: is the example's placeholder (all zeros)" in err


async def test_by_hand_the_check_reads_the_files_the_units_credentials_come_from(
    tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # The check's fallback is a system path (/etc/pointd/credentials); a patch of that one
    # constant points it at a scratch directory, and the check itself runs for real.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    token = credentials / "mp_access_token"
    token.write_text("TEST-some-token")
    token.chmod(0o600)
    mocker.patch.object(selfcheck, "UNIT_CREDENTIALS", credentials)
    config = tmp_path / "pointd.toml"
    config.write_text(
        '[store]\nid = "x"\nsite = "MLA"\ncollector_id = 1\n'
        '[cloud]\nbase_url = "http://127.0.0.1:9"\nconnect_timeout = 0.5\n'
        f'[journal]\npath = "{tmp_path / "journal.sqlite3"}"\n'
        f'[[lanes]]\nnumber = 1\nregister = "{tmp_path / "absent"}"\n'
    )
    code = await selfcheck.SelfCheck(config, sys.stdout).run()
    out = capsys.readouterr().out
    assert (f"ok   credential mp_access_token: from {token} (what the unit's "
            "LoadCredential= loads; mode 0600)") in out
    assert "fail Mercado Pago http://127.0.0.1:9: cannot be reached" in out
    assert code == 1
