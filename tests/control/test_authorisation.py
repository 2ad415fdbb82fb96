"""Who may call what: SO_PEERCRED checked with real second users, not mocks.

The tests run as root and fork children that drop to another uid (nobody, or a throw-away
user with a supplementary group) before connecting, so the kernel reports a real peer.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pointd.control import cli
from pointd.control.client import ControlClient
from pointd.control.server import Access, ControlServer, access_for, groups_of
from tests.control.conftest import IO_TIMEOUT
from tests.control.fake_daemon import FakeDaemon, serve

NOBODY_UID = 65534
NOGROUP_GID = 65534
REPO = Path(__file__).resolve().parents[2]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching to a second uid needs root (the CI container is root)"
)

STATUS = {"id": 1, "method": "status"}
OVERRIDE = {
    "id": 2,
    "method": "override",
    "params": {"sale_id": "S-1", "decision": "release", "reason": "test it"},
}


async def as_user(
    path: Path, uid: int, gid: int, groups: list[int], requests: list[dict[str, Any]]
) -> dict[str, Any]:
    """Fork, drop to uid/gid/groups, connect and send the requests; return what happened."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: blocking stdlib calls only, then _exit without cleanup
        status = 0
        try:
            os.close(read_fd)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            outcome: dict[str, Any] = {"uid": os.getuid()}
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(IO_TIMEOUT)
            try:
                sock.connect(str(path))
            except OSError as exc:
                outcome["connect_errno"] = exc.errno
            else:
                stream = sock.makefile("rwb")
                outcome["responses"] = []
                for request in requests:
                    stream.write(json.dumps(request).encode() + b"\n")
                    stream.flush()
                    outcome["responses"].append(json.loads(stream.readline()))
            os.write(write_fd, json.dumps(outcome).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    _, wait_status = await asyncio.wait_for(asyncio.to_thread(os.waitpid, pid, 0), IO_TIMEOUT * 2)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    assert os.waitstatus_to_exitcode(wait_status) == 0, "the child failed before reporting"
    result: dict[str, Any] = json.loads(data)
    return result


def _codes(outcome: dict[str, Any]) -> list[str]:
    return [r["error"]["code"] if "error" in r else "ok" for r in outcome["responses"]]


@pytest.mark.parametrize(
    ("uid", "gids", "expected"),
    [
        (0, frozenset({0}), Access.ADMIN),
        (1000, frozenset({1000, 20}), Access.ADMIN),  # in the admin group
        (1000, frozenset({1000, 10}), Access.READ),  # in the read group
        (999, frozenset({999}), Access.READ),  # the daemon's own uid
        (1000, frozenset({1000}), Access.NONE),
    ],
)
def test_access_table(uid: int, gids: frozenset[int], expected: Access) -> None:
    assert access_for(uid, gids, daemon_uid=999, read_gid=10, admin_gid=20) is expected


def test_missing_groups_grant_nothing() -> None:
    assert (
        access_for(1000, frozenset({1000}), daemon_uid=999, read_gid=None, admin_gid=None)
        is Access.NONE
    )


def test_groups_of_a_uid_without_passwd_entry_is_just_its_gid() -> None:
    assert groups_of(4_000_000, 4_000_000) == frozenset({4_000_000})
    assert NOGROUP_GID in groups_of(NOBODY_UID, NOGROUP_GID)


@needs_root
async def test_read_group_member_reads_but_cannot_mutate(
    sock_dir: Path, daemon: FakeDaemon
) -> None:
    server = serve(
        daemon, str(sock_dir / "c.sock"), read_group="nogroup", admin_group="pointd-test-absent"
    )
    await server.start()
    try:
        outcome = await as_user(server.path, NOBODY_UID, NOGROUP_GID, [], [STATUS, OVERRIDE])
    finally:
        await server.close()
    assert outcome["uid"] == NOBODY_UID
    assert _codes(outcome) == ["ok", "forbidden"]
    assert "pointd-test-absent" in outcome["responses"][1]["error"]["message"]
    assert daemon.timeline == [("call", (NOBODY_UID, "status", {}))]  # no audit, no override


@needs_root
async def test_outsider_is_refused_even_when_the_file_mode_lets_it_in(
    sock_dir: Path, daemon: FakeDaemon
) -> None:
    # Mode 0666 takes the file permission out of the way: SO_PEERCRED alone must refuse.
    server = serve(
        daemon,
        str(sock_dir / "c.sock"),
        read_group="pointd-test-absent",
        admin_group="pointd-test-absent",
        socket_mode=0o666,
    )
    await server.start()
    try:
        outcome = await as_user(
            server.path, NOBODY_UID, NOGROUP_GID, [], [STATUS, {"id": 3, "method": "methods"}]
        )
    finally:
        await server.close()
    assert _codes(outcome) == ["forbidden", "forbidden"]
    assert daemon.timeline == []


@needs_root
async def test_socket_file_mode_keeps_outsiders_out(sock_dir: Path, daemon: FakeDaemon) -> None:
    server = serve(daemon, str(sock_dir / "c.sock"), read_group="pointd-test-absent")
    await server.start()
    try:
        outcome = await as_user(server.path, NOBODY_UID, NOGROUP_GID, [], [STATUS])
    finally:
        await server.close()
    assert outcome["connect_errno"] == errno.EACCES


@needs_root
async def test_admin_group_member_may_mutate_and_is_audited_by_uid(
    sock_dir: Path, daemon: FakeDaemon
) -> None:
    daemon.hold("S-1")
    server = serve(daemon, str(sock_dir / "c.sock"), read_group="nogroup", admin_group="nogroup")
    await server.start()
    try:
        outcome = await as_user(server.path, NOBODY_UID, NOGROUP_GID, [], [OVERRIDE])
    finally:
        await server.close()
    assert _codes(outcome) == ["ok"]
    assert daemon.audits() == [(NOBODY_UID, "override", OVERRIDE["params"])]


@pytest.fixture
def throwaway_user() -> Iterator[tuple[int, int]]:
    """A system user whose only link to the read group is a supplementary membership."""
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root (the CI container is root)")
    if not (shutil.which("useradd") and shutil.which("groupadd")):
        pytest.skip("useradd/groupadd are not installed (Debian package passwd)")
    name = f"pctl{secrets.token_hex(4)}"
    subprocess.run(["groupadd", "--system", name], check=True)
    try:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--gid",
                "nogroup",
                "--groups",
                name,
                name,
            ],
            check=True,
        )
        try:
            yield pwd.getpwnam(name).pw_uid, grp.getgrnam(name).gr_gid
        finally:
            subprocess.run(["userdel", name], check=True)
    finally:
        subprocess.run(["groupdel", name], check=True)


@needs_root
async def test_supplementary_group_membership_counts(
    sock_dir: Path, daemon: FakeDaemon, throwaway_user: tuple[int, int]
) -> None:
    uid, group = throwaway_user
    server = serve(daemon, str(sock_dir / "c.sock"), read_group=grp.getgrgid(group).gr_name)
    await server.start()
    try:
        assert server.path.stat().st_gid == group
        # The kernel only reports the primary gid (nogroup); the server must look the
        # supplementary membership up itself.
        outcome = await as_user(server.path, uid, NOGROUP_GID, [group], [STATUS, OVERRIDE])
    finally:
        await server.close()
    assert _codes(outcome) == ["ok", "forbidden"]


def _world_runnable_python() -> str | None:
    for candidate in (sys.executable, "/usr/bin/python3"):
        path = Path(candidate).resolve()
        if not path.exists():
            continue
        chain = [path, *path.parents]
        if all(p.stat().st_mode & stat.S_IXOTH for p in chain):
            version = subprocess.run(
                [str(path), "-c", "import sys; print(sys.version_info >= (3, 11))"],
                capture_output=True,
                text=True,
                check=False,
            )
            if version.stdout.strip() == "True":
                return str(path)
    return None


def readable_copy_of_pointd(directory: Path) -> Path:
    """A copy of the pointd package that any user may read; returns the directory to import from.

    The checkout may sit in a private (mode 0700) directory, as a fresh clone in a temporary
    directory does, and the outsider must still be able to import pointctl (which needs
    nothing beyond the standard library and pointd itself).
    """
    shutil.copytree(REPO / "pointd", directory / "pointd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in (directory, *directory.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return directory


@needs_root
async def test_pointctl_run_by_an_outsider_exits_3(sock_dir: Path, daemon: FakeDaemon) -> None:
    python = _world_runnable_python()
    if python is None:
        pytest.skip("no Python >= 3.11 that the nobody user may execute")
    library = readable_copy_of_pointd(sock_dir / "lib")
    server = serve(
        daemon, str(sock_dir / "c.sock"), read_group="nogroup", admin_group="pointd-test-absent"
    )
    await server.start()
    results: dict[str, tuple[int | None, str, str]] = {}
    try:
        for argv in (["--json", "status"], ["override", "S-1", "--void", "--reason", "test"]):
            process = await asyncio.create_subprocess_exec(
                python,
                "-m",
                "pointd.control.cli",
                "--socket",
                str(server.path),
                *argv,
                user=NOBODY_UID,
                group=NOGROUP_GID,
                extra_groups=[],
                cwd="/",
                env={"PYTHONPATH": str(library), "PATH": "/usr/bin:/bin"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(process.communicate(), IO_TIMEOUT * 2)
            results[argv[-1]] = (process.returncode, stdout.decode(), stderr.decode())
    finally:
        await server.close()
    code, out, _ = results["status"]
    assert code == cli.EXIT_OK
    assert json.loads(out)["holds"] == 0
    code, _, err = results["test"]
    assert code == cli.EXIT_UNREACHABLE
    assert "forbidden" in err
    assert daemon.audits() == []


async def test_server_reports_root_as_admin(server: ControlServer) -> None:
    async with await ControlClient.connect(server.path) as client:
        assert (await client.call("methods"))["access"] == "admin"
