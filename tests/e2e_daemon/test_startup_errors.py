"""``pointd run`` refuses to start on a bad configuration or an unsafe secret, and says why.

Rules under test (docs/configuration.md): every configuration problem is named by its key
path and the exit code is 78 (EX_CONFIG); a missing access token file or one open to other
users stops the start with a message naming the file (and the fix), never the secret, and
no journal is created.
"""

from __future__ import annotations

from pathlib import Path

from pointd.config import EXIT_CONFIG
from tests.e2e_daemon.harness import TOKEN, daemon_toml, run_pointd, write_token

EXIT_FAILED = 1
SIM_URL = "http://127.0.0.1:9"  # never contacted: the daemon stops before any request


def _config(tmp: Path, token_file: Path, extra: str = "") -> Path:
    path = tmp / "pointd.toml"
    path.write_text(
        daemon_toml(
            tmp=tmp, base_url=SIM_URL, register=str(tmp / "register"), token_file=token_file,
            extra=extra,
        ),
        encoding="utf-8",
    )
    return path


async def test_bad_configuration_exits_2_naming_every_key(tmp_path: Path) -> None:
    token = write_token(tmp_path / "mp_access_token")
    config = _config(tmp_path, token, extra="[terminals]\nswitch_to_pdv = 1\nrefresh = 60\n")
    config.write_text(
        config.read_text(encoding="utf-8").replace("number = 1", "number = 1\nbaud = 1234"),
        encoding="utf-8",
    )

    code, out, err = await run_pointd(config)

    assert code == EXIT_CONFIG, (out, err)
    assert "terminals.switch_to_pdv" in err
    assert "terminals.refresh" in err
    assert "lanes[0].baud" in err
    assert str(config) in err
    assert not (tmp_path / "journal.sqlite3").exists()


async def test_toml_syntax_error_exits_2_naming_the_line(tmp_path: Path) -> None:
    config = tmp_path / "pointd.toml"
    config.write_text('[store]\nid = "x\n', encoding="utf-8")

    code, _out, err = await run_pointd(config)

    assert code == EXIT_CONFIG
    assert "pointd.toml:2:" in err


async def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    code, _out, err = await run_pointd(tmp_path / "absent.toml")

    assert code == EXIT_CONFIG
    assert "absent.toml" in err


async def test_missing_token_file_stops_the_start(tmp_path: Path) -> None:
    absent = tmp_path / "credentials" / "mp_access_token"
    config = _config(tmp_path, absent)

    code, out, err = await run_pointd(config)

    assert code == EXIT_CONFIG, (out, err)
    assert f"credential mp_access_token: cannot open {absent}: No such file" in err
    assert not (tmp_path / "journal.sqlite3").exists()


async def test_world_readable_token_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    token = write_token(tmp_path / "mp_access_token", mode=0o644)
    config = _config(tmp_path, token)

    code, out, err = await run_pointd(config)

    assert code == EXIT_CONFIG, (out, err)
    assert f"credential mp_access_token: {token} has mode 0644" in err
    assert f"chmod 600 {token}" in err
    assert TOKEN not in out + err, "the refused secret must not be printed"
    assert not (tmp_path / "journal.sqlite3").exists()


async def test_unusable_journal_directory_is_named_without_a_traceback(tmp_path: Path) -> None:
    token = write_token(tmp_path / "mp_access_token")
    config = _config(tmp_path, token)
    missing = tmp_path / "state-not-created"
    config.write_text(
        config.read_text(encoding="utf-8").replace(
            str(tmp_path / "journal.sqlite3"), str(missing / "journal.sqlite3")
        ),
        encoding="utf-8",
    )

    code, out, err = await run_pointd(config)

    assert code == EXIT_FAILED, (out, err)
    assert str(missing) in err
    assert "Traceback" not in err
