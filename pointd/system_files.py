"""``pointd install-system-files``: put the files systemd, udev and people need where they look.

The wheel carries them under ``pointd/data/`` (a source checkout has them at the top of the
tree): the systemd units, the udev rules, a sysusers.d file (the ``pointd`` user and group,
the ``pointd-admin`` group), a tmpfiles.d file (``/etc/pointd`` and its ``credentials/``),
the documentation the units' ``Documentation=`` names, the changelog, and the example
configurations.
Units, sysusers, tmpfiles, docs and examples are replaced on every run, so an upgrade
brings the new ones (local changes to a unit belong in drop-ins, ``systemctl edit``). The
udev rules are the exception: the installed copy names this PC's register adapter, so an
existing one that differs is kept and the new one is written beside it as ``.new``.

Only the standard library is used: the command works before the daemon's dependencies do.
``--root`` installs under another directory (a package build, an image, the docs test).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pointd

REGISTER_SERIAL_PLACEHOLDER = "POINTD-REGISTER-SERIAL"
DOC_DIR = Path("usr/local/share/doc/pointd")
NEXT_STEPS = """\
next, as root:
  systemd-sysusers{root}            # the pointd user and groups
  systemd-tmpfiles --create{root}   # /etc/pointd and /etc/pointd/credentials
  udevadm control --reload && udevadm trigger
  systemctl daemon-reload"""


@dataclass(frozen=True)
class Placed:
    """One file to install: where it comes from (under the data root) and where it goes."""

    source: str
    target: Path
    keep_local: bool = False


def data_root() -> Path:
    """Where the files are: ``pointd/data`` in a wheel, the checkout's top in a source tree."""
    package = Path(pointd.__file__).resolve().parent
    packaged = package / "data"
    if packaged.is_dir():
        return packaged
    return package.parent


def plan(root: Path) -> Iterator[Placed]:
    """Every file to install and its target under ``root``."""
    data = data_root()
    for unit in ("pointd.service", "pointd-relay.service"):
        yield Placed(f"systemd/{unit}", root / "etc/systemd/system" / unit)
    yield Placed("systemd/sysusers.d/pointd.conf", root / "etc/sysusers.d/pointd.conf")
    yield Placed("systemd/tmpfiles.d/pointd.conf", root / "etc/tmpfiles.d/pointd.conf")
    yield Placed("udev/68-pointd.rules", root / "etc/udev/rules.d/68-pointd.rules",
                 keep_local=True)
    for doc in sorted((data / "docs").glob("*.md")):
        yield Placed(f"docs/{doc.name}", root / DOC_DIR / doc.name)
    # The upgrade procedure (operations.md §2) starts by reading it.
    yield Placed("CHANGELOG.md", root / DOC_DIR / "CHANGELOG.md")
    for example in sorted((data / "examples").glob("*.toml")):
        yield Placed(f"examples/{example.name}", root / DOC_DIR / "examples" / example.name)


def install(root: Path, register_serial: str | None, out: TextIO = sys.stdout) -> int:
    """Install every file under ``root``; 0, or 1 when one is missing from this install."""
    data = data_root()
    for placed in plan(root):
        source = data / placed.source
        if not source.is_file():
            print(f"pointd: {source} is missing from this installation", file=sys.stderr)
            return 1
        text = source.read_bytes()
        if register_serial is not None and placed.source.startswith("udev/"):
            text = text.replace(REGISTER_SERIAL_PLACEHOLDER.encode(), register_serial.encode())
        target = placed.target
        target.parent.mkdir(parents=True, exist_ok=True)
        if placed.keep_local and target.exists() and target.read_bytes() != text:
            target = target.with_name(target.name + ".new")
            print(f"kept {placed.target} (it differs: compare it with {target})", file=out)
        _write(target, text)
        print(f"installed {target}", file=out)
    shown = "" if root == Path("/") else f" --root {root}"
    print(NEXT_STEPS.format(root=shown), file=out)
    return 0


def _write(target: Path, content: bytes) -> None:
    staging = target.with_name(f".{target.name}.partial")
    staging.write_bytes(content)
    os.chmod(staging, 0o644)
    os.replace(staging, target)


def main(argv: Sequence[str]) -> int:
    """``pointd install-system-files [--root DIR] [--register-serial SERIAL]``."""
    parser = argparse.ArgumentParser(
        prog="pointd install-system-files",
        description="Install the systemd units, udev rules, sysusers.d and tmpfiles.d files, "
        "the documentation and the example configurations (docs/operations.md).",
    )
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="install under this directory instead of / (default /)")
    parser.add_argument("--register-serial", metavar="SERIAL",
                        help=f"the register adapter's USB serial, written over "
                             f"{REGISTER_SERIAL_PLACEHOLDER} in the udev rules")
    args = parser.parse_args(list(argv))
    return install(args.root, args.register_serial)
