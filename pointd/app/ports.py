"""The daemon's ports: everything outside the process that ``build`` wires the parts to.

Production takes ``Ports.production()``: the wall clock, the monotonic clock and the event
loop's timers, the operating system's randomness, the machine's time zone, apscheduler for
the periodic jobs, libusb and udev when this machine has them, systemd's notify socket when
systemd started us, the real serial/socket opener and the network. The rig and the tests
hand in their own: a simulated USB bus, a clock they move by hand, transports that
misbehave; the deterministic simulation (``pointd.rig.simulation``) replaces every clock,
every random draw and the scheduler so that a seed replays a whole run. Nothing else in the
daemon asks whether it is simulated.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import structlog

from pointd.app.engine import LoopTimers, TimerService
from pointd.app.jobs import JobScheduler
from pointd.app.systemd_notify import Notifier, watchdog_interval
from pointd.link.ports import Port, open_port
from pointd.terminal import (
    HotplugSource,
    HotplugUnavailable,
    UsbUnavailable,
    default_usb_backend,
    open_udev_hotplug,
)
from pointd.terminal.discovery import UsbBackend

log = structlog.get_logger(__name__)

PortOpener = Callable[[str, int], Awaitable[Port]]


@dataclass(frozen=True, kw_only=True)
class Ports:
    """What the daemon's parts talk to outside the process."""

    wall_clock: Callable[[], float]
    timers: TimerService
    # None: this machine has no USB library, so lanes rely on their pinned terminal ids.
    usb: UsbBackend | None
    # None: no udev; the terminal watch then rescans on its interval alone.
    hotplug: HotplugSource | None
    notifier: Notifier
    # Seconds between WATCHDOG=1 pings; None: systemd's watchdog is not armed for us.
    watchdog_interval: float | None = None
    open_register_port: PortOpener = open_port
    # None: the real network (httpx's default transport).
    cloud_transport: httpx.AsyncBaseTransport | None = None
    relay_transport: httpx.AsyncBaseTransport | None = None
    # Elapsed time (pacing, caches): never jumps, unlike the wall clock.
    monotonic: Callable[[], float] = time.monotonic
    # Uniform draws in [0, 1) for retry jitter, and bytes for the random part of new ids.
    random: Callable[[], float] = random.random
    entropy: Callable[[int], bytes] = os.urandom
    # The zone of the end-of-day export; None: this machine's local time zone.
    timezone: dt.tzinfo | None = None
    # Makes the periodic jobs' scheduler for a zone; None: apscheduler on the event loop.
    job_scheduler: Callable[[dt.tzinfo], JobScheduler] | None = None

    @classmethod
    def production(cls) -> Ports:
        """The real machine: wall clock, libusb and udev if present, systemd if it started us."""
        usb: UsbBackend | None = None
        try:
            usb = default_usb_backend()
        except UsbUnavailable as exc:
            log.warning("usb.unavailable", detail=str(exc))
        hotplug: HotplugSource | None = None
        if usb is not None:
            try:
                hotplug = open_udev_hotplug()
            except HotplugUnavailable as exc:
                log.info("usb.hotplug_unavailable", detail=str(exc))
        return cls(
            wall_clock=time.time,
            timers=LoopTimers(time.time),
            usb=usb,
            hotplug=hotplug,
            notifier=Notifier.from_environ(),
            watchdog_interval=watchdog_interval(),
        )
