"""Logging tests configure the process-wide pipeline; this puts it back afterwards."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator

import pytest
import structlog

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
