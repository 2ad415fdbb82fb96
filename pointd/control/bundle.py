"""The support bundle: a tar.gz of status, recent sales, redacted config, logs and versions.

Theory of operation: every member is built from data the daemon hands in and redacted
without breaking its format, so that support can parse what it receives. A JSON member is
first reduced to plain JSON values (an object the encoder would turn into text becomes that
text *before* redaction, not after), then every key and string is scrubbed, every value
under a key that names a secret (``access_token``, …) is replaced and integers that are card
numbers are masked; only then is it written, so each ``.json`` file is valid JSON. Each line
of ``logs.txt`` that is a JSON log line is scrubbed the same way, any other line as text.
Scrubbing a string removes the secret values passed in (longest first) and Mercado Pago
access tokens (``APP_USR-…``/``TEST-…``), then applies the log redaction of
:mod:`pointd.logging` (every secret registered there, ``Bearer``/``Basic`` credentials,
``key=value`` secrets, URL passwords, card numbers masked to first six and last four digits).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import platform
import re
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

import pointd
from pointd import logging as pointd_logging

REDACTED = pointd_logging.REDACTED

_SECRET_KEY = re.compile(
    r"token|secret|passw|authorization|api_?key|credential|private|signature", re.IGNORECASE
)
_MP_TOKEN = re.compile(r"\b(?:APP_USR|TEST)-[A-Za-z0-9-]{8,}")

# Libraries whose versions matter when reading a field report.
_REPORTED_DISTRIBUTIONS = (
    "httpx",
    "structlog",
    "pyserial",
    "pyusb",
    "pyudev",
    "apscheduler",
    "prometheus_client",
)


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """Remove the given secrets, Mercado Pago tokens, and all that log redaction removes."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return pointd_logging.redact_text(_MP_TOKEN.sub(REDACTED, text))


def redact_value(value: Any, secrets: Sequence[str]) -> Any:
    """Redact a JSON-like value: strings scrubbed, values under secret-named keys replaced."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            clean_key = redact_text(str(key), secrets)
            # A *_file setting names where a secret lives, which support needs to know.
            secret_named = (_SECRET_KEY.search(str(key)) and not str(key).endswith("_file")
                            and not isinstance(item, Mapping | list))
            out[clean_key] = REDACTED if secret_named and item else redact_value(item, secrets)
        return out
    if isinstance(value, list | tuple):
        return [redact_value(item, secrets) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        masked = pointd_logging.redact_text(str(value))
        return value if masked == str(value) else masked
    return value


def collect_versions() -> dict[str, str]:
    """pointd, Python, the OS and the main libraries' versions."""
    versions = {
        "pointd": pointd.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in _REPORTED_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_support_bundle(
    *,
    status: Any,
    sales: Any,
    config: Mapping[str, Any],
    now: float,
    secrets: Sequence[str] = (),
    logs: Iterable[str] | None = None,
    versions: Mapping[str, str] | None = None,
    connections: Any = None,
) -> bytes:
    """Build the redacted tar.gz; ``now`` (epoch seconds) stamps it so output is reproducible."""
    secrets = [s for s in secrets if s]
    members: dict[str, str] = {
        "status.json": _json(status, secrets),
        "sales.json": _json(sales, secrets),
        "config.json": _json(config, secrets),
        "versions.json": _json(dict(versions or collect_versions()), secrets),
    }
    if connections is not None:
        members["connections.json"] = _json(connections, secrets)
    if logs is not None:
        members["logs.txt"] = "".join(_log_line(line, secrets) + "\n" for line in logs)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    members = {"README.txt": redact_text(_readme(stamp, members), secrets), **members}

    raw = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=int(now)) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"pointd-bundle/{name}")
            info.size = len(data)
            info.mtime = int(now)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def bundle_answer(content: bytes, now: float) -> dict[str, Any]:
    """The ``bundle`` method's result for pointctl: name, size, sha256 and base64 content."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return {
        "filename": f"pointd-bundle-{stamp}.tar.gz",
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "content_b64": base64.b64encode(content).decode("ascii"),
    }


def _json(value: Any, secrets: Sequence[str]) -> str:
    plain = json.loads(json.dumps(value, ensure_ascii=False, default=str))
    return json.dumps(redact_value(plain, secrets), indent=2, ensure_ascii=False)


def _log_line(line: str, secrets: Sequence[str]) -> str:
    line = line.rstrip("\n")
    try:
        entry = json.loads(line)
    except ValueError:
        return redact_text(line, secrets)
    if not isinstance(entry, dict):
        return redact_text(line, secrets)
    return json.dumps(redact_value(entry, secrets), ensure_ascii=False)


def _readme(stamp: str, members: Mapping[str, str]) -> str:
    lines = [
        f"pointd support bundle, generated {stamp}.",
        f"Secrets and tokens were replaced by {REDACTED}; card numbers show only their first",
        "six and last four digits.",
        "",
        "members:",
        *(f"  {name}" for name in members),
    ]
    return "\n".join(lines) + "\n"
