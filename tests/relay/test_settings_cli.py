"""The relay's one configuration and ``pointd relay``: bad values are refused clearly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pointd.config import ConfigError, RelayConfig, config_from_mapping, load_relay_config
from pointd.relay.cli import CONFIG_ERROR_EXIT, main

DIGEST = hashlib.sha256(b"t").hexdigest()


def _write(tmp_path: Path, text: str, secret_mode: int = 0o600) -> Path:
    secret = tmp_path / "secret"
    secret.write_text("the-webhook-secret\n")
    secret.chmod(secret_mode)
    config = tmp_path / "relay.toml"
    config.write_text(text)
    return config


def test_a_valid_file_loads(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        '[intake]\nwebhook_secret_file = "./secret"\n[storage]\nsqlite_path = "./r.db"\n'
        f'[[stores]]\nid = "centro-01"\ntoken_sha256 = "{DIGEST}"\n',
    )
    loaded, secrets = load_relay_config(config)
    assert secrets.webhook_secret is not None
    assert secrets.webhook_secret.reveal() == "the-webhook-secret"
    assert "the-webhook-secret" not in repr(secrets)
    assert [(store.id, store.token_sha256) for store in loaded.stores] == [("centro-01", DIGEST)]
    assert main(["--config", str(config), "--check"]) == 0


@pytest.mark.parametrize(
    ("text", "mode", "needle"),
    [
        ('[intake]\nwebhook_secret_file = "./secret"\nbogus = 1\n', 0o600, "bogus"),
        ('[intake]\nwebhook_secret_file = "./secret"\n', 0o644, "secret"),
        ("[intake]\nsignature_required = true\n", 0o600, "webhook secret"),
        (
            '[intake]\nwebhook_secret_file = "./secret"\n[storage]\nbackend = "redis"\n',
            0o600,
            "backend",
        ),
        ("not toml [", 0o600, "relay.toml"),
    ],
)
def test_bad_files_exit_with_a_reason(
    tmp_path: Path, text: str, mode: int, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path, text, mode)
    assert main(["--config", str(config), "--check"]) == CONFIG_ERROR_EXIT
    err = capsys.readouterr().err
    assert needle in err
    assert "the-webhook-secret" not in err


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"storage": {"backend": "postgres"}}, None),  # valid: its DSN is read at start
        ({"storage": {"batch_max": 0}}, "storage.batch_max"),
        ({"intake": {"ts_window": -1.0}}, "intake.ts_window"),
        # The relay once took any wait above 0 and any body limit above 1 KiB while the file
        # refused them: one schema now decides, and a long-poll under a second or a body
        # limit past 16 MiB is refused wherever the value comes from.
        ({"delivery": {"long_poll_timeout": 0.5}}, "delivery.long_poll_timeout"),
        ({"delivery": {"long_poll_timeout": 301}}, "delivery.long_poll_timeout"),
        ({"intake": {"body_limit": 1023}}, "intake.body_limit"),
        ({"intake": {"body_limit": 16 * 1024 * 1024 + 1}}, "intake.body_limit"),
        ({"delivery": {"retention_days": 0}}, "delivery.retention_days"),
        ({"stores": [{"id": "a", "token_sha256": DIGEST}, {"id": "a", "token_sha256": DIGEST}]},
         "stores[1].id"),
        ({"stores": [{"id": "Bad Store", "token_sha256": DIGEST}]}, "stores[0].id"),
        ({"stores": [{"id": "ok", "token_sha256": "not-a-digest"}]}, "stores[0].token_sha256"),
    ],
)
def test_the_one_relay_schema_decides_every_value(
    table: dict[str, object], needle: str | None
) -> None:
    if needle is None:
        config_from_mapping(table, RelayConfig)
        return
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(table, RelayConfig)
    assert needle in str(caught.value)


def test_a_required_signature_without_a_secret_is_refused(tmp_path: Path) -> None:
    config = _write(tmp_path, "[intake]\nsignature_required = true\n")
    with pytest.raises(ConfigError, match="webhook secret"):
        load_relay_config(config)
