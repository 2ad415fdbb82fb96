"""read_secret: systemd credentials first, then a private file; secrets never leak."""

from __future__ import annotations

import os
import pickle
import secrets
from pathlib import Path

import pytest

from pointd.config import (
    CredentialError,
    Secret,
    read_optional_secret,
    read_secret,
)
from pointd.logging import REDACTED, redact_text


@pytest.fixture(autouse=True)
def no_credentials_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def fresh_secret() -> str:
    return f"APP_USR-{secrets.token_hex(16)}"


def write(path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    os.chmod(path, mode)
    return path


def test_a_private_file_is_read_and_one_trailing_newline_stripped(tmp_path: Path) -> None:
    value = fresh_secret()
    token = read_secret("mp_access_token", file=write(tmp_path / "t", value + "\n"))
    assert token.reveal() == value


@pytest.mark.parametrize(
    ("content", "expected"),
    [("abcd\n\n", "abcd\n"), ("abcd\r\n", "abcd"), ("abcd", "abcd"), (" abcd \n", " abcd ")],
)
def test_only_one_trailing_newline_is_stripped(tmp_path: Path, content: str, expected: str) -> None:
    assert read_secret("x", file=write(tmp_path / "t", content)).reveal() == expected


@pytest.mark.parametrize("mode", [0o400, 0o600, 0o700])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    assert read_secret("x", file=write(tmp_path / "t", "abcdef", mode)).reveal() == "abcdef"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o606, 0o777])
def test_group_or_world_access_is_refused(tmp_path: Path, mode: int) -> None:
    value = fresh_secret()
    path = write(tmp_path / "t", value, mode)
    with pytest.raises(CredentialError) as caught:
        read_secret("mp_access_token", file=path)
    message = str(caught.value)
    assert f"credential mp_access_token: {path} has mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message
    assert value not in message


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(CredentialError, match=f"cannot open {path}: No such file"):
        read_secret("mp_access_token", file=path)


@pytest.mark.parametrize("content", ["", "\n", "\r\n"])
def test_an_empty_secret_is_refused(tmp_path: Path, content: str) -> None:
    with pytest.raises(CredentialError, match="is empty"):
        read_secret("mp_access_token", file=write(tmp_path / "t", content))


def test_a_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(CredentialError, match="is not a regular file"):
        read_secret("x", file=directory)


def test_bytes_that_are_not_utf8_are_refused_without_echo(tmp_path: Path) -> None:
    with pytest.raises(CredentialError) as caught:
        read_secret("x", file=write(tmp_path / "t", b"\xffsecret-bytes"))
    assert "is not UTF-8 text" in str(caught.value)
    assert "secret-bytes" not in str(caught.value)


def test_no_credential_and_no_file_is_an_error_saying_where_secrets_go() -> None:
    with pytest.raises(CredentialError, match="LoadCredential="):
        read_secret("mp_access_token")


def test_the_credentials_directory_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    from_systemd, from_file = fresh_secret(), fresh_secret()
    # systemd's copy may be readable by the group it chose; that is not refused.
    write(credentials / "mp_access_token", from_systemd + "\n", 0o440)
    file = write(tmp_path / "file", from_file)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert read_secret("mp_access_token", file=file).reveal() == from_systemd


def test_the_file_is_used_when_the_credentials_directory_lacks_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    value = fresh_secret()
    assert read_secret("mp_access_token", file=write(tmp_path / "f", value)).reveal() == value
    with pytest.raises(CredentialError, match=r"\$CREDENTIALS_DIRECTORY/mp_access_token"):
        read_secret("mp_access_token")


def test_the_file_mode_is_still_checked_when_falling_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(CredentialError, match="has mode 0644"):
        read_secret("other_name", file=write(tmp_path / "f", "abcdef", 0o644))


def test_an_optional_secret_is_none_when_nothing_provides_it(tmp_path: Path) -> None:
    assert read_optional_secret("mp_webhook_secret") is None
    value = fresh_secret()
    secret = read_optional_secret("mp_webhook_secret", file=write(tmp_path / "s", value))
    assert secret is not None
    assert secret.reveal() == value


def test_an_optional_secret_still_refuses_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="has mode 0666"):
        read_optional_secret("mp_webhook_secret", file=write(tmp_path / "s", "abcdef", 0o666))


def test_an_optional_secret_comes_from_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = fresh_secret()
    write(tmp_path / "mp_webhook_secret", value)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    secret = read_optional_secret("mp_webhook_secret")
    assert secret is not None
    assert secret.reveal() == value


@pytest.mark.parametrize("name", ["", "../etc/passwd", "a/b", "x" * 65])
def test_credential_names_cannot_escape_the_directory(name: str) -> None:
    with pytest.raises(ValueError, match="not a credential name"):
        read_secret(name)


def test_every_secret_read_is_registered_for_log_redaction(tmp_path: Path) -> None:
    value = fresh_secret()
    read_secret("x", file=write(tmp_path / "t", value))
    assert redact_text(f"calling with {value}!") == f"calling with {REDACTED}!"


def test_a_secret_never_shows_itself() -> None:
    value = fresh_secret()
    secret = Secret(value)
    shown = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        repr([secret]),
        repr({"k": secret}),
    ]
    assert all(value not in text for text in shown)
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "Secret('***')"


def test_a_secret_cannot_be_pickled() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret(fresh_secret()))


def test_a_secret_survives_copying_unchanged() -> None:
    import copy

    secret = Secret(fresh_secret())
    assert copy.copy(secret) is secret
    assert copy.deepcopy({"s": secret})["s"] is secret


def test_secrets_compare_by_value() -> None:
    value = fresh_secret()
    assert Secret(value) == Secret(value)
    assert Secret(value) != Secret(value + "x")
    assert Secret(value) != value
    assert hash(Secret(value)) == hash(Secret("other"))
