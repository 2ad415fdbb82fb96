"""The method catalogue, the daemon's handler set and docs/control-socket.md agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pointd.control.methods import DAEMON_METHODS, DAEMON_TOPICS, register_daemon_methods
from pointd.control.protocol import ErrorCode
from pointd.control.server import ControlServer
from tests.control.fake_daemon import FakeDaemon

DOC = (Path(__file__).resolve().parents[2] / "docs" / "control-socket.md").read_text()


def _documented_rows() -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", DOC, re.MULTILINE))


@pytest.mark.parametrize("method", [*DAEMON_METHODS, "methods", "subscribe", "connections"])
def test_every_method_has_a_row_and_an_example(method: str) -> None:
    assert method in _documented_rows()
    if method not in ("methods", "connections"):
        assert f'"method":"{method}"' in DOC


@pytest.mark.parametrize("topic", DAEMON_TOPICS)
def test_every_topic_is_documented(topic: str) -> None:
    assert topic in _documented_rows()


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_is_documented(code: ErrorCode) -> None:
    assert str(code) in _documented_rows()


def test_documented_access_matches_the_catalogue() -> None:
    for name, spec in DAEMON_METHODS.items():
        row = re.search(rf"^\| `{name}` \| (\w+)", DOC, re.MULTILINE)
        assert row, name
        assert row.group(1) == ("admin" if spec.mutating else "read"), name


def test_handler_set_must_match_the_catalogue(tmp_path: Path) -> None:
    handlers = FakeDaemon().handlers()
    server = ControlServer(tmp_path / "c.sock", record_audit=lambda *_: None)
    with pytest.raises(ValueError, match=r"missing=\['refund'\]"):
        register_daemon_methods(server, {k: v for k, v in handlers.items() if k != "refund"})
    with pytest.raises(ValueError, match=r"extra=\['refund_all'\]"):
        register_daemon_methods(server, {**handlers, "refund_all": handlers["refund"]})
    register_daemon_methods(server, handlers)
    assert set(server.methods) == {*DAEMON_METHODS, "methods", "subscribe", "connections"}


def test_every_pointctl_command_is_documented() -> None:
    for command in (
        "status",
        "sales",
        "sale",
        "holds",
        "terminals",
        "relay",
        "verify",
        "override",
        "cancel",
        "reconcile",
        "refund",
        "bundle",
        "backup",
        "integrator",
        "watch",
        "methods",
        "connections",
    ):
        assert f"`pointctl {command}" in DOC, command
