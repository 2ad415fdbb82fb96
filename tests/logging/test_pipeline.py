"""configure_logging: renderer choice, timestamps, levels, and stdlib libraries on one pipeline."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import select
import socket
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
import uvicorn

import pointd.logging
from pointd.logging import configure_logging, recent_log_lines, register_secret

from .conftest import Configure

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
PTY_READ_TIMEOUT = 5.0  # generous: the bytes are already written when we read


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_lines_lead_with_time_level_logger_and_event(configure: Configure) -> None:
    stream = configure("json")
    structlog.get_logger("pointd.core").info("sale started", lane=3, amount_cents=1500)
    (line,) = json_lines(stream.getvalue())
    assert list(line)[:4] == ["timestamp", "level", "logger", "event"]
    assert ISO_UTC.fullmatch(line["timestamp"])
    assert line | {"timestamp": None} == {
        "timestamp": None,
        "level": "info",
        "logger": "pointd.core",
        "event": "sale started",
        "lane": 3,
        "amount_cents": 1500,
    }


def test_auto_renders_json_when_the_stream_is_not_a_terminal(configure: Configure) -> None:
    stream = configure("auto")
    structlog.get_logger("t").info("hello", n=1)
    assert json_lines(stream.getvalue())[0]["event"] == "hello"


def test_console_format_is_human_readable(configure: Configure) -> None:
    stream = configure("console")
    structlog.get_logger("t").warning("terminal offline", lane=2)
    out = stream.getvalue()
    assert "terminal offline" in out
    assert "lane=2" in out
    assert "warning" in out
    assert ISO_UTC.match(out)
    assert not ANSI.search(out)  # colours only on a real terminal


@pytest.fixture
def pty_stream() -> Iterator[tuple[Any, int]]:
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w", encoding="utf-8")
    yield stream, master
    stream.close()
    os.close(master)


def read_pty(master: int) -> str:
    chunks = b""
    while select.select([master], [], [], PTY_READ_TIMEOUT if not chunks else 0.05)[0]:
        chunks += os.read(master, 65536)
    return chunks.decode()


def test_auto_renders_for_people_on_a_real_terminal_and_still_redacts(
    configure: Configure, pty_stream: tuple[Any, int]
) -> None:
    stream, master = pty_stream
    secret = f"APP_USR-{secrets.token_hex(12)}"
    register_secret(secret)
    configure_logging("info", "auto", stream)
    structlog.get_logger("t").info("on a tty", token=secret, note=f"used {secret}")
    stream.flush()
    out = read_pty(master)
    plain = ANSI.sub("", out)
    assert ANSI.search(out)  # colours on a terminal
    assert "on a tty" in plain
    assert not plain.lstrip().startswith("{")
    assert secret not in out
    assert "token=[redacted]" in plain


def test_levels_filter_structlog_and_stdlib_alike(configure: Configure) -> None:
    stream = configure("json", "warning")
    log = structlog.get_logger("pointd.x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    logging.getLogger("httpx").info("library chatter")
    logging.getLogger("uvicorn.error").error("library error")
    assert [line["event"] for line in json_lines(stream.getvalue())] == ["w", "library error"]


def test_reconfiguring_replaces_the_handler_instead_of_adding_one(configure: Configure) -> None:
    first = configure("json")
    second = configure("json")
    structlog.get_logger("t").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second.getvalue())) == 1


def test_loggers_created_before_configuration_follow_it(configure: Configure) -> None:
    early = structlog.get_logger("pointd.early")
    stream = configure("json")
    early.info("late config")
    assert json_lines(stream.getvalue())[0]["logger"] == "pointd.early"


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_bad_arguments_are_refused(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="must be one of"):
        configure_logging(level, fmt)


def test_python_warnings_are_logged(configure: Configure) -> None:
    import warnings

    stream = configure("json")
    warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    (line,) = json_lines(stream.getvalue())
    assert line["logger"] == "py.warnings"
    assert "deprecated thing" in line["event"]


async def test_uvicorn_and_httpx_records_take_the_same_path(configure: Configure) -> None:
    stream = configure("json", "info", library="info")
    token = f"APP_USR-{secrets.token_hex(12)}"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    # A socket listening before the server starts: connections wait in its backlog.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/hook?access_token={token}")
    assert response.status_code == 200
    # uvicorn may write its access record after the client already has the answer.
    async with asyncio.timeout(10):
        while '"uvicorn.access"' not in stream.getvalue():  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.01)
    server.should_exit = True
    await asyncio.wait_for(serving, timeout=10)
    listener.close()

    out = stream.getvalue()
    assert token not in out
    lines = json_lines(out)
    by_logger = {line["logger"]: line["event"] for line in lines}
    assert "access_token=[redacted]" in by_logger["httpx"]
    assert "access_token=[redacted]" in by_logger["uvicorn.access"]
    assert all(ISO_UTC.fullmatch(line["timestamp"]) for line in lines)


def test_libraries_log_at_warning_unless_configured(configure: Configure) -> None:
    chatty = logging.getLogger("apscheduler.executors.default")
    stream = configure("json", "debug")
    chatty.info('Job "stale-sale-sweep" executed successfully')
    chatty.warning("Run time of job was missed")
    structlog.get_logger("pointd.app.jobs").info("jobs.stale_sale")
    events = [line["event"] for line in json_lines(stream.getvalue())]
    assert events == ["Run time of job was missed", "jobs.stale_sale"]

    stream = configure("json", "info", library="info")
    chatty.info('Job "stale-sale-sweep" executed successfully')
    assert [line["event"] for line in json_lines(stream.getvalue())] == [
        'Job "stale-sale-sweep" executed successfully'
    ]


def test_recent_lines_are_kept_as_json_whatever_the_stream_shows(configure: Configure) -> None:
    configure("console", "info")
    marker = secrets.token_hex(8)
    structlog.get_logger("pointd.test").info("kept_for_the_bundle", marker=marker)
    [line] = [json.loads(text) for text in recent_log_lines() if marker in text]
    assert line["event"] == "kept_for_the_bundle"


def test_an_uncaught_exception_is_a_json_line_not_a_traceback(configure: Configure) -> None:
    stream = configure("json", "info")
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    [line] = json_lines(stream.getvalue())
    assert line["event"] == "uncaught_exception"
    assert "RuntimeError: boom" in line["exception"]


@pytest.mark.parametrize(("fmt", "renders"), [("json", 1), ("console", 2)])
def test_a_json_line_is_redacted_once_for_the_stream_and_the_recent_lines(
    configure: Configure, monkeypatch: pytest.MonkeyPatch, fmt: str, renders: int
) -> None:
    calls: list[str] = []
    real = pointd.logging.redact_event

    def counted(logger: Any, method: str, event_dict: Any) -> Any:
        calls.append(event_dict["event"])
        return real(logger, method, event_dict)

    monkeypatch.setattr(pointd.logging, "redact_event", counted)
    stream = configure(fmt, "info")
    marker = secrets.token_hex(8)
    structlog.get_logger("pointd.test").info("once", marker=marker, token="s3cr3t-value")
    assert calls == ["once"] * renders
    [kept] = [json.loads(text) for text in recent_log_lines() if marker in text]
    assert kept["token"] == "[redacted]"
    assert marker in stream.getvalue()
    assert "s3cr3t-value" not in stream.getvalue()
    if fmt == "json":
        assert json_lines(stream.getvalue()) == [kept]
