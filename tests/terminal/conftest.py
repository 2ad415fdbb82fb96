"""Fixtures for the terminal tests: the shipped USB descriptor dumps on a simulated bus."""

from __future__ import annotations

from pathlib import Path

import pytest

from pointd.sim.usb.bus import FakeUsbBus

USB_FIXTURES = Path(__file__).resolve().parents[2] / "hardware-fixtures" / "usb"


@pytest.fixture
def usb_fixtures() -> Path:
    """The repository's descriptor dump directory."""
    return USB_FIXTURES


@pytest.fixture
def bus() -> FakeUsbBus:
    """An empty simulated bus that knows every shipped model."""
    return FakeUsbBus.from_directory(USB_FIXTURES)
