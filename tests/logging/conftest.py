"""Logging tests configure the process-wide pipeline; this puts it back afterwards."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator

import pytest
import structlog

import pointd.logging
from pointd.logging import configure_logging

Configure = Callable[..., io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """Configure logging into a fresh StringIO; undo every change at teardown."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)

    def apply(fmt: str = "json", level: str = "debug", library: str = "warning") -> io.StringIO:
        stream = io.StringIO()
        configure_logging(level, fmt, stream, library_level=library)
        return stream

    yield apply
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)
    logging.captureWarnings(False)
    sys.excepthook = sys.__excepthook__
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def registered_secrets_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the values a logging test registers as secrets once it ends.

    The registry is process-wide, and the property tests register arbitrary text ("0000",
    "2026"): left registered, it redacts ordinary numbers in whatever test the same process
    runs next (under pytest-xdist, in any order).
    """
    monkeypatch.setattr(pointd.logging, "_registered", set(pointd.logging._registered))
    monkeypatch.setattr(pointd.logging, "_registered_pattern", pointd.logging._registered_pattern)
