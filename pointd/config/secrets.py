"""Secrets: read from systemd credentials or a private file, never from the TOML.

Secrets (access token, webhook secret, store and admin tokens, a DSN with a password)
never live in the TOML. The file names where they are: :func:`read_secret` takes them from
systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``) first, else from a file that
only the service's user may read. A secret travels as a :class:`Secret`, whose repr never
shows it, and every secret read is registered with the log redaction so that it cannot
reach a log line even by accident.
"""

from __future__ import annotations

import hmac
import os
import re
import stat
from pathlib import Path
from typing import Any

from pointd.config.schema import ConfigError
from pointd.logging import register_secret

_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"
_INSECURE_MODE_BITS = 0o077

# systemd credential names (LoadCredential=<name>:<file>), not credentials; the
# configuration guide lists them.
MP_ACCESS_TOKEN = "mp_access_token"  # noqa: S105
MP_WEBHOOK_SECRET = "mp_webhook_secret"  # noqa: S105
RELAY_STORE_TOKEN = "relay_store_token"  # noqa: S105
RELAY_POSTGRES_DSN = "relay_postgres_dsn"
RELAY_ADMIN_TOKEN = "relay_admin_token"  # noqa: S105


class CredentialError(ConfigError):
    """A secret could not be read; the message names the credential, never its value."""


class Secret:
    """A secret value whose repr and str never show it; ``reveal()`` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return _constant_time_equal(self._value, other._value)

    def __hash__(self) -> int:
        return hash(Secret)

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a Secret cannot be pickled")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, _memo: dict[int, Any]) -> Secret:
        return self


def _constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def read_secret(name: str, *, file: Path | None = None) -> Secret:
    """Read credential ``name`` from $CREDENTIALS_DIRECTORY, else from ``file`` (mode 0600).

    Raises CredentialError when neither has it, the file is readable or writable by group
    or others, or the value is empty. The secret is registered with the log redaction.
    """
    if _CREDENTIAL_NAME.fullmatch(name) is None:
        raise ValueError(f"not a credential name: {name!r}")
    directory = os.environ.get(_CREDENTIALS_DIRECTORY)
    if directory:
        candidate = Path(directory) / name
        if candidate.exists():
            # systemd made this file for this unit only; its mode is systemd's business.
            return _secret_from(_read_bytes(name, candidate, check_mode=False), name, candidate)
    if file is None:
        where = f"${_CREDENTIALS_DIRECTORY}/{name}" if directory else f"${_CREDENTIALS_DIRECTORY}"
        raise CredentialError(
            [
                f"credential {name}: not found: {where} does not provide it and no file is "
                "configured for it (use LoadCredential= in the unit, or the *_file key)"
            ]
        )
    return _secret_from(_read_bytes(name, file, check_mode=True), name, file)


def _read_bytes(name: str, path: Path, *, check_mode: bool) -> bytes:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise CredentialError(
            [f"credential {name}: cannot open {path}: {error.strerror or error}"]
        ) from None
    try:
        # Check the mode of the file actually opened, not of whatever the path names later.
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise CredentialError([f"credential {name}: {path} is not a regular file"])
        mode = stat.S_IMODE(status.st_mode)
        if check_mode and mode & _INSECURE_MODE_BITS:
            raise CredentialError(
                [
                    f"credential {name}: {path} has mode {mode:04o}, which lets group or "
                    f"others read or change it; run: chmod 600 {path}"
                ]
            )
        chunks = []
        while chunk := os.read(descriptor, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def _secret_from(data: bytes, name: str, path: Path) -> Secret:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError([f"credential {name}: {path} is not UTF-8 text"]) from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise CredentialError([f"credential {name}: {path} is empty"])
    register_secret(text)
    return Secret(text)


def read_optional_secret(name: str, *, file: Path | None = None) -> Secret | None:
    """Like :func:`read_secret`, but None when neither the credential nor a file is given."""
    directory = os.environ.get(_CREDENTIALS_DIRECTORY)
    provided = bool(directory) and (Path(str(directory)) / name).exists()
    if file is None and not provided:
        return None
    return read_secret(name, file=file)
