"""The leak scanner finds a secret in every spelling and container it is meant to search."""

from __future__ import annotations

import base64
import gzip
import io
import sqlite3
import tarfile
import zlib
from pathlib import Path

from tests.security.leaks import LeakScanner

SECRET = ("APP_USR-0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef")


def scanner() -> LeakScanner:
    return LeakScanner({"access token": SECRET})


def test_each_spelling_is_found_and_clean_text_is_not() -> None:
    found = scanner()
    found.text("plain", f"token={SECRET[0]}")
    found.text("tail only", f"APP_USR-[redacted]{SECRET[1]}")
    found.bytes("base64", base64.b64encode(SECRET[0].encode()))
    found.text("bearer", "authorization: Bearer sk_live_abcdef")
    assert {leak.where for leak in found.leaks} == {"plain", "tail only", "base64", "bearer"}
    clean = scanner()
    clean.text("redacted", "authorization: Bearer [redacted] token=[redacted]")
    clean.text("challenge", "www-authenticate: Bearer")
    assert clean.leaks == []


def test_sqlite_cells_compressed_blobs_and_tar_members_are_searched(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite3"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (a BLOB)")
        connection.execute("INSERT INTO t VALUES (?)", (zlib.compress(SECRET[0].encode()),))
    member = io.BytesIO()
    with tarfile.open(fileobj=member, mode="w:gz") as archive:
        data = f"x {SECRET[0]}".encode()
        info = tarfile.TarInfo("b/status.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(member.getvalue())
    found = scanner()
    found.sqlite(database)
    found.tarball(bundle)
    assert any(leak.where == "db.sqlite3 table t" for leak in found.leaks)
    assert any(leak.where == "bundle.tar.gz:b/status.json" for leak in found.leaks)
    assert gzip.decompress(bundle.read_bytes())
