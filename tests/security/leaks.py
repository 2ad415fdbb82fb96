"""Finding configured secrets and bearer credentials in whatever a run printed or wrote.

A secret is looked for in several spellings (as is, its random core, base64, URL-quoted,
hex) so that a partial redaction or an encoded copy is caught too. SQLite files are read
twice: as raw bytes (free pages and the WAL keep old rows) and cell by cell, with blobs
also read through gzip/zlib in case a writer compressed what it stored.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import re
import sqlite3
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

# "Bearer <credential>" with anything but the redaction marker after it.
BEARER = re.compile(rb"bearer\s+(?!\[redacted\])[A-Za-z0-9\-._~+/]{6,}=*", re.IGNORECASE)


@dataclass(frozen=True)
class Leak:
    """One secret (or bearer credential) found in one place."""

    where: str
    what: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.what} in {self.where}: ...{self.excerpt}..."


def spellings(secret: str, core: str) -> dict[str, bytes]:
    """The byte strings that would reveal ``secret``; ``core`` is its random part."""
    raw = secret.encode()
    forms = {
        "as is": raw,
        "random core": core.encode(),
        "base64": base64.b64encode(raw).rstrip(b"="),
        "urlsafe base64": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "url-quoted": quote(secret, safe="").encode(),
        "hex": raw.hex().encode(),
    }
    return {name: value for name, value in forms.items() if len(value) >= 8}


class LeakScanner:
    """Scans bytes, files, SQLite databases and tarballs for a fixed set of secrets."""

    def __init__(self, secrets: Mapping[str, tuple[str, str]]) -> None:
        self._needles = [
            (f"{name} ({form})", needle)
            for name, (secret, core) in secrets.items()
            for form, needle in spellings(secret, core).items()
        ]
        self.leaks: list[Leak] = []
        self.scanned: list[str] = []

    def bytes(self, where: str, data: bytes) -> None:
        """Scan one blob of output."""
        self.scanned.append(where)
        lowered = data.lower()
        for what, needle in self._needles:
            for found in _offsets(lowered, needle.lower()):
                self.leaks.append(Leak(where, what, _excerpt(data, found, len(needle))))
        for match in BEARER.finditer(data):
            self.leaks.append(Leak(where, "bearer credential", _excerpt(data, match.start(), 0)))

    def text(self, where: str, text: str) -> None:
        """Scan one piece of text output."""
        self.bytes(where, text.encode("utf-8", "surrogateescape"))

    def file(self, path: Path, where: str | None = None) -> None:
        """Scan a file's bytes, if it exists."""
        if path.exists():
            self.bytes(where or str(path), path.read_bytes())

    def sqlite(self, path: Path) -> None:
        """Scan a database's file, its WAL and journal, then every cell of every table."""
        for suffix in ("", "-wal", "-journal", "-shm"):
            self.file(path.with_name(path.name + suffix))
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )]
            for table in tables:
                cells = bytearray()
                for row in connection.execute(f'SELECT * FROM "{table}"'):  # noqa: S608
                    for cell in row:
                        cells += b"\n" + _cell_bytes(cell)
                self.bytes(f"{path.name} table {table}", bytes(cells))
        finally:
            connection.close()

    def tarball(self, path: Path) -> list[str]:
        """Scan every member of a .tar.gz after gunzip and untar; return the member names."""
        self.bytes(f"{path.name} (gunzipped)", gzip.decompress(path.read_bytes()))
        names = []
        with tarfile.open(path, "r:gz") as archive:
            for member in archive.getmembers():
                names.append(member.name)
                extracted = archive.extractfile(member)
                if extracted is not None:
                    self.bytes(f"{path.name}:{member.name}", extracted.read())
        return names

    def tree(self, root: Path) -> None:
        """Scan every regular file under a directory."""
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.file(path)

    def report(self) -> str:
        """Every leak, one a line."""
        return "\n".join(str(leak) for leak in self.leaks)


def _offsets(haystack: bytes, needle: bytes) -> Iterator[int]:
    start = haystack.find(needle)
    while start != -1:
        yield start
        start = haystack.find(needle, start + 1)


def _excerpt(data: bytes, at: int, length: int) -> str:
    return data[max(0, at - 60) : at + length + 20].decode("utf-8", "replace")


def _cell_bytes(cell: object) -> bytes:
    if cell is None:
        return b""
    if isinstance(cell, bytes):
        return b"\n".join(_unpacked(cell))
    return str(cell).encode("utf-8", "surrogateescape")


def _unpacked(blob: bytes) -> Iterable[bytes]:
    yield blob
    for inflate in (gzip.decompress, zlib.decompress):
        with contextlib.suppress(Exception):
            yield inflate(blob)
    with contextlib.suppress(Exception), tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        for member in archive.getmembers():
            extracted = archive.extractfile(member)
            if extracted is not None:
                yield extracted.read()
