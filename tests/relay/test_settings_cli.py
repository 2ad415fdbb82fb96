"""Relay settings and the ``pointd relay`` command: bad configuration is refused clearly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pointd.config import Secret
from pointd.relay.cli import CONFIG_ERROR_EXIT, main
from pointd.relay.errors import ConfigurationError
from pointd.relay.settings import RelaySettings, StoreCredential, load_settings

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
    settings = load_settings(config)
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.reveal() == "the-webhook-secret"
    assert "the-webhook-secret" not in repr(settings)
    assert settings.stores == (StoreCredential("centro-01", DIGEST),)
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
    "overrides",
    [
        {"backend": "postgres"},
        {"batch_max": 0},
        {"ts_window": -1.0},
        {"stores": (StoreCredential("a", DIGEST), StoreCredential("a", DIGEST))},
    ],
)
def test_settings_refuse_inconsistent_values(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RelaySettings(webhook_secret=Secret("s"), **overrides)  # type: ignore[arg-type]


def test_store_credentials_are_validated() -> None:
    with pytest.raises(ConfigurationError):
        StoreCredential("Bad Store", DIGEST)
    with pytest.raises(ConfigurationError):
        StoreCredential("ok", "not-a-digest")
