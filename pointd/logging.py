"""Logging: one structlog pipeline for pointd and the libraries under it, with redaction on.

Theory of operation
-------------------
:func:`configure_logging` sends structlog events and stdlib records (uvicorn, httpx,
asyncio, apscheduler) through the same chain: level filter, log level, logger name, ISO-8601
UTC timestamp, exception text, **redaction**, then a renderer: JSON lines when the stream is
not a terminal (journald, files, pipes) or ``fmt="json"``, a readable console layout on a
terminal or with ``fmt="console"``. Libraries log at their own level (WARNING unless
configured), pointd at its level, and the ANNOUNCEMENTS logger (where a server says
where it listens) always at INFO. An uncaught exception is logged, not printed, so a JSON
stream holds nothing but JSON lines. The newest lines are also kept in memory, as JSON
(``recent_log_lines``), for the support bundle.

Redaction runs after exceptions have been turned into text, so tracebacks are scrubbed
like every other string. It:

- replaces the value of every key whose name mentions a secret (token, secret,
  authorization, password, x-signature, dsn, cookie, api key; any case, at any depth of
  nested dicts and lists) with ``[redacted]``;
- in every string: replaces each value registered with :func:`register_secret` (every
  secret :func:`pointd.config.read_secret` reads), ``Bearer`` credentials,
  ``key=value`` and ``"key": "value"`` pairs whose key names a secret, and the password in
  ``scheme://user:password@host`` URLs;
- masks card numbers: a run of 13 to 19 digits (alone, or in groups split by spaces or
  dashes) that passes the Luhn check becomes first six + ``...`` + last four digits
  (``411111...1111``), the most PCI DSS allows to be shown. Integers are checked too.

Objects other than str, numbers, bool, None, dicts and lists are logged as their ``str()``
so that nothing escapes the scrubbing through a custom ``repr``. Servers started in-process
should not install their own logging (uvicorn: ``log_config=None``) so their records take
this path too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")
# A shorter "secret" would blank out ordinary words all over the logs.
MIN_REGISTERED_SECRET_LENGTH = 4

# Words in a key's name that mark its value as secret; a pattern, not a password.
_SECRET_WORDS = "|".join(
    [
        "token",
        "secret",
        "authorization",
        "password",
        "passwd",
        "x[-_]signature",
        "dsn",
        "cookie",
        "api[-_]?key",
    ]
)
_SECRET_KEY = re.compile(_SECRET_WORDS, re.IGNORECASE)
# Only Bearer in free text: "Basic" is too common a word; Basic credentials are caught as the
# value of an Authorization key instead.
_AUTH_SCHEME = re.compile(r"\b(Bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Key/value pairs in free text, found in two steps so that the work stays linear in the
# length of the text: a key can only start at a word start and is at most 100 characters,
# and a quoted value is at most 2048 characters.
_PAIR_KEY = re.compile(r"""(?<![\w-])(["']?)([\w-]{1,100})\1\s{0,8}[:=]\s{0,8}""")
_PAIR_VALUE = re.compile(
    r"""\[redacted\]|(?:Bearer|Basic)\s+(?:\[redacted\]|[^\s"',;&})\]]+)"""
    r"""|"(?:[^"\\]|\\.){0,2048}"|'(?:[^'\\]|\\.){0,2048}'|[^\s"',;&})\]]+""",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(
    r"\b([a-z][a-z0-9+.-]{0,30}://[^\s:/@]{1,256}:)[^\s@/]{1,256}@", re.IGNORECASE
)
_CARD = re.compile(
    r"(?<![0-9])(?:[0-9]{13,19}|[0-9]{4}([ -])[0-9]{4,6}(?:\1[0-9]{4,5}){1,2}(?:\1[0-9]{1,4})?)"
    r"(?![0-9])"
)
_CARD_DIGITS = (13, 19)
_JSON_LITERALS = frozenset({"null", "true", "false"})

_registry_lock = threading.Lock()
_registered: set[str] = set()
_registered_pattern: re.Pattern[str] | None = None
_HANDLER_MARK = "_pointd_handler"
# The record attribute where _FormatOnce keeps its line (with itself, the formatter).
_FORMATTED = "_pointd_formatted"


def register_secret(value: str) -> None:
    """Redact ``value`` wherever it appears in any logged string from now on."""
    global _registered_pattern  # noqa: PLW0603 - one process-wide registry, swapped atomically
    if len(value) < MIN_REGISTERED_SECRET_LENGTH:
        return
    with _registry_lock:
        if value in _registered:
            return
        _registered.add(value)
        ordered = sorted(_registered, key=len, reverse=True)
        _registered_pattern = re.compile("|".join(re.escape(v) for v in ordered))


def luhn_valid(digits: str) -> bool:
    """Return whether a string of ASCII digits passes the Luhn check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"[ -]", "", text)
    if not (_CARD_DIGITS[0] <= len(digits) <= _CARD_DIGITS[1]) or not luhn_valid(digits):
        return text
    return f"{digits[:6]}...{digits[-4:]}"


def _mask_pairs(text: str) -> str:
    parts: list[str] = []
    position = 0
    while (key := _PAIR_KEY.search(text, position)) is not None:
        is_secret = _SECRET_KEY.search(key.group(2)) is not None
        value = _PAIR_VALUE.match(text, key.end()) if is_secret else None
        if value is None:
            # Not consumed: a value may itself hold a pair (``a=token=x``).
            parts.append(text[position : key.end()])
            position = key.end()
            continue
        found = value.group(0)
        if found in _JSON_LITERALS:
            # null/true/false are never a secret; blanking them would also break JSON text.
            parts.append(text[position : value.end()])
            position = value.end()
            continue
        quote = found[0] if found[0] in "\"'" else ""
        if not quote and key.group(1) == '"':
            # A JSON-style key ("token": 123): quote the mark so the text stays valid JSON.
            quote = '"'
        parts.append(f"{text[position : key.end()]}{quote}{REDACTED}{quote}")
        position = value.end()
    parts.append(text[position:])
    return "".join(parts)


def redact_text(text: str) -> str:
    """Return ``text`` with registered secrets, credentials and card numbers removed."""
    pattern = _registered_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _mask_pairs(text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _CARD.sub(_mask_card, text)


def _redact_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        if abs(value) < 10**12:
            return value
        digits = str(value)
        masked = _CARD.sub(_mask_card, digits)
        return value if masked == digits else masked
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if _is_secret_key(key, inner) else _redact_value(inner))
            for key, inner in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    return redact_text(str(value))


def _is_secret_key(key: Any, value: Any) -> bool:
    return value is not None and _SECRET_KEY.search(str(key)) is not None


def redact_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: scrub secrets and card numbers from every value of the event."""
    for key, value in list(event_dict.items()):
        event_dict[key] = REDACTED if _is_secret_key(key, value) else _redact_value(value)
    return event_dict


_LEADING_KEYS = ("timestamp", "level", "logger", "event")


def _essentials_first(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    # People scan JSON lines left to right; put when, how bad, where and what first.
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


# Libraries whose loggers pointd's pipeline must own, whatever they configured themselves,
# and whose level is ``library_level`` (WARNING by default): at INFO, apscheduler logs every
# job run and httpx every request, about 17,000 lines a day that bury the daemon's own.
THIRD_PARTY_LOGGERS = (
    "uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore", "asyncio",
    "apscheduler", "pyudev", "psycopg", "starlette", "hpack", "multipart",
)
# pyusb silences its own logger unless PYUSB_DEBUG asks for it; it is left alone, so a
# missing libusb is reported once, by the daemon's usb.unavailable warning.
DEFAULT_LIBRARY_LEVEL = "warning"
# Start-up announcements (the address a server listens on) are logged on this logger at
# INFO whatever the configured level: supervisors and people wait for them.
ANNOUNCEMENTS = "pointd.announce"
# The newest log lines kept in memory for support bundles (``recent_log_lines``); a line
# longer than RECENT_LINE_LIMIT is kept as its beginning, so the buffer stays bounded.
RECENT_LINES_KEPT = 2000
RECENT_LINE_LIMIT = 4096


class RecentLines(logging.Handler):
    """Keeps the newest log lines, rendered as JSON and redacted, for the support bundle."""

    def __init__(self, kept: int = RECENT_LINES_KEPT) -> None:
        super().__init__()
        self._lines: deque[str] = deque(maxlen=kept)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if len(line) > RECENT_LINE_LIMIT:
            head = line[:RECENT_LINE_LIMIT]
            line = json.dumps({"event": "log_line_truncated", "length": len(line), "head": head})
        self._lines.append(line)

    def lines(self) -> list[str]:
        """The kept lines, oldest first."""
        return list(self._lines)


_recent = RecentLines()


def recent_log_lines() -> list[str]:
    """The newest lines logged since ``configure_logging`` (JSON, redacted), oldest first."""
    return _recent.lines()


def _log_uncaught(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    # An uncaught exception is logged like everything else, not printed as a plain-text
    # traceback into a stream of JSON lines.
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, trace)
        return
    logging.getLogger("pointd").critical("uncaught_exception", exc_info=(kind, error, trace))


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    library_level: str = DEFAULT_LIBRARY_LEVEL,
) -> None:
    """Route structlog and stdlib logging to ``stream`` (default stdout) with redaction.

    pointd's own loggers log at ``level``; the libraries' (THIRD_PARTY_LOGGERS) at
    ``library_level``.
    """
    for name, value in (("log level", level), ("library log level", library_level)):
        if value not in LEVELS:
            raise ValueError(f"{name} must be one of {', '.join(LEVELS)}, not {value!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    target = sys.stdout if stream is None else stream
    console = fmt == "console" or (fmt == "auto" and _is_terminal(target))
    renderers: list[Processor]
    if console:
        renderers = [
            structlog.dev.ConsoleRenderer(
                colors=_is_terminal(target), exception_formatter=structlog.dev.plain_traceback
            )
        ]
    else:
        renderers = [_essentials_first, structlog.processors.JSONRenderer()]

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Loggers are created at import time, before configuration; caching would pin them
        # to whatever configuration was current at their first call.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(target)
    shown = _formatter(shared, renderers)
    handler.setFormatter(shown)
    setattr(handler, _HANDLER_MARK, True)
    # JSON lines on the stream are the lines the ring keeps: one formatter renders (and
    # redacts) each record once for both.
    as_json: list[Processor] = [_essentials_first, structlog.processors.JSONRenderer()]
    _recent.setFormatter(_formatter(shared, as_json) if console else shown)
    setattr(_recent, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.addHandler(_recent)
    root.setLevel(level.upper())
    # A library that configured its own logging earlier in the process (uvicorn does when
    # started with its default log_config) would otherwise keep printing around the
    # redaction: send its records through the root handler again.
    for name in THIRD_PARTY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
        library.disabled = False
        library.setLevel(library_level.upper())
    logging.getLogger(ANNOUNCEMENTS).setLevel(logging.INFO)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


class _FormatOnce(structlog.stdlib.ProcessorFormatter):
    """A ProcessorFormatter that renders a record once for every handler it serves.

    Redaction is most of a line's cost (≈ 60 µs for a notification's line on the relay's
    machine), and the stream and the ring of recent lines would otherwise each pay it.
    """

    def format(self, record: logging.LogRecord) -> str:
        done = record.__dict__.get(_FORMATTED)
        if done is not None and done[0] is self:
            return str(done[1])
        line = super().format(record)
        record.__dict__[_FORMATTED] = (self, line)
        return line


def _formatter(
    shared: list[Processor], renderers: list[Processor]
) -> structlog.stdlib.ProcessorFormatter:
    return _FormatOnce(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_event,
            *renderers,
        ],
    )
