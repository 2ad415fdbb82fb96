"""The control socket under arbitrary request lines, over a real unix socket.

Rules: every line gets exactly one answer, either a result or an error whose code is one
of the documented codes (docs/control-socket.md) with a message; the connection stays
usable afterwards; a handler crash never reaches the caller as anything but ``internal``.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from pointd.control.methods import DAEMON_METHODS
from pointd.control.protocol import ErrorCode
from pointd.control.server import ControlServer
from tests.control.fake_daemon import FakeDaemon, serve
from tests.security.loop_thread import CALL_TIMEOUT, LoopThread

CODES = {code.value for code in ErrorCode}
METHOD_NAMES = sorted(set(DAEMON_METHODS)
                      | {"methods", "connections", "subscribe"})


class Served:
    """A control server with the fake daemon's handlers, on a loop thread."""

    def __init__(self) -> None:
        # Unix socket paths are limited to 108 bytes, too short for pytest's tmp_path.
        self.directory = Path(tempfile.mkdtemp(prefix="pfuzz-", dir="/tmp"))
        self.path = self.directory / "control.sock"
        self.loop = LoopThread()
        self.server: ControlServer = serve(FakeDaemon(), str(self.path))
        self.loop.call(self.server.start())

    def connect(self) -> socket.socket:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(CALL_TIMEOUT)
        client.connect(str(self.path))
        return client

    def close(self) -> None:
        self.loop.call(self.server.close())
        self.loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def control() -> Iterator[Served]:
    with structlog.testing.capture_logs():
        served = Served()
        yield served
        served.close()


def read_answer(stream: Any, request_id: object = None) -> dict[str, Any]:
    """The next answer line (pushed events skipped), optionally the one for ``request_id``."""
    while True:
        line = stream.readline()
        assert line.endswith(b"\n"), f"connection closed or line cut: {line!r}"
        answer = json.loads(line)
        assert isinstance(answer, dict), answer
        if "event" in answer and "id" not in answer:
            continue
        if request_id is None or answer.get("id") == request_id:
            return answer


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
requests = st.fixed_dictionaries(
    {"method": st.sampled_from(METHOD_NAMES) | st.text(max_size=12) | json_values},
    optional={"id": json_values, "params": json_values | st.dictionaries(
        st.sampled_from(["sale_id", "payment_id", "decision", "reason", "lane", "limit",
                         "amount_cents", "topics", "x"]), json_values, max_size=3),
              "extra": json_values},
).map(lambda request: json.dumps(request).encode())
lines = st.one_of(
    st.binary(max_size=300).map(lambda raw: raw.replace(b"\n", b"")),
    requests,
    requests.map(lambda line: line[: len(line) // 2]),
)


@settings(max_examples=150, deadline=None)
@given(line=lines)
def test_any_line_gets_one_clear_answer_and_the_connection_stays_usable(
    control: Served, line: bytes
) -> None:
    with control.connect() as client, client.makefile("rb") as stream:
        client.sendall(line + b"\n")
        answer = read_answer(stream)
        if "error" in answer:
            error = answer["error"]
            assert error["code"] in CODES, error
            assert isinstance(error["message"], str), error
            assert error["message"], error
            assert error["code"] != ErrorCode.INTERNAL, error
        else:
            assert "result" in answer, answer
        client.sendall(b'{"id": "probe", "method": "holds"}\n')
        probe = read_answer(stream, "probe")
        assert "result" in probe, probe
