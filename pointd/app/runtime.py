"""``pointd run``: the composition root that builds every part and runs the daemon.

Start-up order (each step needs the one before): configuration → secrets → journal
replay → recovery effects → register links and terminal watch → relay consumer →
control socket → READY=1. Stop order is the reverse, and the engine finishes the step it
is in (its journal write) before anything closes; a sale in progress is resumed by
recovery at the next start.

This is the only module that imports every layer. Tests and the demo build ``Daemon``
with their own ports (a fake USB bus, a wall clock and the timers that follow it);
production passes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from pointd import __version__
from pointd.app.checkout import Checkout
from pointd.app.control_handlers import DaemonHandlers, reconciliation
from pointd.app.engine import Alert, Engine, TimerService
from pointd.app.jobs import DaemonJobs
from pointd.app.lane_terminals import LaneSpec, LaneTerminals
from pointd.app.notifications import NotificationHandler
from pointd.app.systemd_notify import Notifier, WatchdogLoop, watchdog_interval
from pointd.cloud.backends import build_cloud_port
from pointd.cloud.client import Timeouts
from pointd.cloud.port import CloudPort
from pointd.cloud.sites import SITE_RULES, Site
from pointd.config import (
    DEFAULT_DAEMON_CONFIG,
    MP_ACCESS_TOKEN,
    MP_WEBHOOK_SECRET,
    RELAY_STORE_TOKEN,
    ConfigError,
    DaemonConfig,
    Secret,
    load_config,
    read_optional_secret,
    read_secret,
)
from pointd.control.errors import ControlError
from pointd.control.methods import register_daemon_methods
from pointd.control.server import ControlServer
from pointd.core.events import Event
from pointd.core.machine import Step
from pointd.core.policy import Policy
from pointd.core.recovery import recover
from pointd.core.states import SaleState
from pointd.journal.errors import JournalError
from pointd.journal.store import Journal
from pointd.link.driver import LinkDriver
from pointd.logging import configure_logging
from pointd.register.session import RegisterSession
from pointd.relay.client import HealthState, RelayConsumer, RelayHealth
from pointd.terminal import (
    DEFAULT_VENDORS,
    DeviceCatalog,
    HotplugUnavailable,
    TerminalWatch,
    UsbUnavailable,
    default_usb_backend,
    open_udev_hotplug,
)

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_FAILED = 1
# How often the running loop must prove it is alive before systemd's watchdog is fed:
# the journal must be writable and the engine healthy.
HEALTH_CHECK_INTERVAL = 5.0
# Sale states announced in systemd's STATUS= line: the goods must stay at the checkout.
_DO_NOT_HAND_OVER = frozenset({SaleState.HELD, SaleState.ESCALATED, SaleState.BLOCKED})


def policy_from(config: DaemonConfig) -> Policy:
    """The core's decision parameters from the configuration."""
    rules = SITE_RULES[Site(config.store.site)]
    timers = config.timers
    return Policy(
        currency=config.store.currency,
        collector_id=str(config.store.collector_id),
        min_amount_cents=rules.min_cents,
        max_amount_cents=rules.max_cents,
        poll_fallback_after=timers.poll_fallback_after,
        verify_initial_backoff=timers.verify_initial_backoff,
        verify_max_backoff=timers.verify_max_backoff,
        confirmation_escalate_after=timers.confirmation_escalate_after,
        abandon_after=timers.abandon_after,
        create_reconcile_attempts=timers.create_reconcile_attempts,
        tips_allowed=config.store.tips_allowed,
    )


def config_snapshot(config: DaemonConfig) -> dict[str, Any]:
    """The configuration as plain data for support bundles (secrets live in files, not here)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return {key: plain(value) for key, value in dataclasses.asdict(config).items()}


def lock_journal(path: Path) -> int:
    """Hold ``<journal>.lock`` for this process's life; raise JournalError if another holds it.

    A second daemon on the same journal would replay it, run recovery effects against the
    cloud, journal them and read the same register port before failing on the control
    socket; the lock stops it before any of that. The kernel drops it when the process dies,
    so a SIGKILLed daemon never blocks its successor.
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise JournalError(f"cannot open journal lock {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise JournalError(
            f"another pointd is running on the journal {path} (it holds {lock_path})"
        ) from None
    return descriptor


class JournalCursor:
    """The relay consumer's cursor, kept in the daemon's journal."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def get(self) -> int:
        """The last cursor whose events were journaled."""
        value = self._journal.relay_cursor()
        return int(value) if value else 0


class Daemon:
    """Every part of one store PC's daemon, built from one configuration."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        usb_backend: Any = None,
        hotplug: Any = None,
        wall_clock: Callable[[], float] = time.time,
        cloud: CloudPort | None = None,
        timers: TimerService | None = None,
    ) -> None:
        self.config = config
        self._usb_backend = usb_backend
        self._hotplug = hotplug
        self._clock = wall_clock
        self._cloud_override = cloud
        self._timer_service = timers
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.started_at = wall_clock()
        self.notifier = Notifier.from_environ()
        self.alerts: list[Alert] = []
        self.engine: Engine | None = None
        self.relay: RelayConsumer | None = None
        self.lanes: LaneTerminals | None = None
        self.links: dict[int, LinkDriver] = {}
        self.sessions: dict[int, RegisterSession] = {}
        self.ready = asyncio.Event()
        self.handlers: DaemonHandlers | None = None
        self._cursor: JournalCursor | None = None
        self._relay_state: HealthState | None = None

    def request_stop(self) -> None:
        """Ask run() to stop cleanly (SIGTERM, SIGINT)."""
        self._stop.set()

    async def run(self) -> int:
        """Start every part, serve until asked to stop, then stop in reverse order."""
        config = self.config
        token = read_secret(MP_ACCESS_TOKEN, file=config.cloud.access_token_file)
        webhook_secret = read_optional_secret(
            MP_WEBHOOK_SECRET, file=config.cloud.webhook_secret_file
        )
        journal_lock = lock_journal(Path(config.journal.path))
        try:
            journal = Journal.open(config.journal.path)
        except BaseException:
            os.close(journal_lock)
            raise
        close_cloud: Callable[[], Awaitable[None]] | None = None
        server: ControlServer | None = None
        jobs: DaemonJobs | None = None
        try:
            policy = policy_from(config)
            state = journal.rebuild(config.store.id, policy)
            journal.record_policy(policy)
            log.info("journal.replayed", sales=len(state.sales), unfinished=len(state.unfinished()))
            if self._cloud_override is not None:
                cloud = self._cloud_override
            else:
                cloud, close_cloud = build_cloud_port(
                    config.cloud.backend,
                    config.cloud.base_url,
                    token.reveal(),
                    Site(config.store.site),
                    Timeouts(
                        connect=config.cloud.connect_timeout,
                        read=config.cloud.read_timeout,
                        write=config.cloud.write_timeout,
                        pool=config.cloud.pool_timeout,
                    ),
                )

            checkout = Checkout()
            for lane in config.lanes:
                session = RegisterSession(
                    lane.number, config.store.language, checkout.handler_for(lane.number)
                )
                self.sessions[lane.number] = session
                checkout.add_session(session)

            engine = Engine(
                journal=journal,
                state=state,
                policy=policy,
                cloud=cloud,
                register=checkout,
                wall_clock=self._clock,
                on_alert=self._on_alert,
                on_step=self._on_step,
                ticket_numbers=SITE_RULES[Site(config.store.site)].requires_ticket_number,
                timers=self._timer_service,
            )
            self.engine = engine
            self.lanes = self._build_lane_terminals(cloud, engine, checkout)
            checkout.attach(engine, self.lanes)

            engine.run_effects(recover(engine.state, self._clock(), policy))
            engine.resume_refunds()
            for lane in config.lanes:
                link = LinkDriver(lane.register, baudrate=lane.baud)
                self.links[lane.number] = link
                self._spawn(self.sessions[lane.number].run(link), f"register-{lane.number}")
            watch = self._watch
            if watch is not None:
                self._spawn(watch.run(), "usb-watch")
            # Know each lane's terminal before READY, so the first sale after a start is
            # judged on the device list rather than refused as "terminal unknown". An
            # unreachable cloud only delays READY by the client's own timeouts.
            refreshed = await self.lanes.refresh()
            self._spawn(self.lanes.run(refreshed=refreshed), "lane-terminals")

            store_token: Secret | None = None
            self._cursor = JournalCursor(journal)
            if config.relay.url:
                store_token = read_secret(RELAY_STORE_TOKEN, file=config.relay.store_token_file)
                self.relay = RelayConsumer(
                    config.relay.url,
                    config.store.id,
                    store_token.reveal(),
                    NotificationHandler(engine, journal),
                    self._cursor,
                    webhook_secret=webhook_secret.reveal() if webhook_secret else None,
                    on_health_change=self._on_relay_health,
                    delivery=config.relay.delivery,
                    canary_interval=config.relay.canary_interval,
                )
                self._spawn(self.relay.run(), "relay-consumer")

            handlers = DaemonHandlers(
                engine=engine,
                journal=journal,
                cloud=cloud,
                terminals=self.lanes,
                relay=self,
                links=self,
                config=config_snapshot(config),
                secrets=[secret.reveal() for secret in (token, store_token, webhook_secret)
                         if secret is not None],
                clock=self._clock,
                started_at=self.started_at,
            )
            self.handlers = handlers
            server = ControlServer(
                config.control.socket,
                record_audit=handlers.record_audit,
                read_group=config.control.read_group,
                admin_group=config.control.admin_group,
            )
            register_daemon_methods(server, handlers)
            handlers.attach(server)
            await server.start()

            jobs = DaemonJobs(
                engine=engine,
                cloud=cloud,
                wall_clock=self._clock,
                evaluate_relay=self.relay.evaluate_health if self.relay is not None else None,
                retention=journal,
                export_dir=Path(config.journal.path).parent / "exports",
            )
            jobs.start()

            self.notifier.ready(self._status_line())
            handlers.ready = True
            self.ready.set()
            interval = watchdog_interval()
            if interval is not None:
                loop = WatchdogLoop(self._healthy, self.notifier, interval)
                self._spawn(loop.run(), "watchdog")
            log.info(
                "daemon.ready", version=__version__, lanes=[lane.number for lane in config.lanes]
            )
            await self._stop.wait()
            self.notifier.stopping()
            log.info("daemon.stopping")
            await jobs.shutdown()
            await engine.stop()
            return EXIT_OK
        finally:
            if server is not None:
                await server.close()
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(BaseException):
                    await task
            if self.relay is not None:
                await self.relay.close()
            for link in self.links.values():
                link.close()
            if close_cloud is not None:
                await close_cloud()
            journal.close()
            os.close(journal_lock)

    # --- parts ------------------------------------------------------------------------------

    def _build_lane_terminals(
        self, cloud: CloudPort, engine: Engine, checkout: Checkout
    ) -> LaneTerminals:
        config = self.config
        backend = self._usb_backend
        if backend is None:
            try:
                backend = default_usb_backend()
            except UsbUnavailable as exc:
                log.warning("usb.unavailable", detail=str(exc))
        self._watch: TerminalWatch | None = None
        lanes: LaneTerminals
        if backend is not None:
            hotplug = self._hotplug
            if hotplug is None:
                try:
                    hotplug = open_udev_hotplug()
                except HotplugUnavailable as exc:
                    log.info("usb.hotplug_unavailable", detail=str(exc))
            self._watch = TerminalWatch(
                backend,
                DEFAULT_VENDORS,
                # ``lanes`` is built below with this watch: bind it late.
                on_change=lambda change: lanes.usb_changed(change),  # noqa: PLW0108
                hotplug=hotplug,
                rescan_interval=config.terminals.usb_rescan_interval,
            )

        def on_condition(lane: int, condition: Any) -> None:
            self._spawn(checkout.show_condition(lane, condition), f"condition-{lane}")

        lanes = LaneTerminals(
            [LaneSpec(lane.number, lane.terminal, lane.terminal_serial) for lane in config.lanes],
            catalog=DeviceCatalog(time.monotonic),
            fetch_devices=cloud.list_terminals,
            live_intent=lambda terminal_id: terminal_id in engine.state.terminals,
            on_condition=on_condition,
            watch=self._watch,
            refresh_interval=config.terminals.refresh_interval,
        )
        return lanes

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.append(task)
        task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("daemon.task_failed", task=task.get_name(), error=repr(error))

    def _on_step(self, event: Event, result: Step) -> None:
        if result.sale_id is None:
            return
        sale = result.state.sales.get(result.sale_id)
        if sale is not None and sale.state in _DO_NOT_HAND_OVER:
            self.notifier.status(f"lane {sale.lane}: {sale.state.value}, do not hand over")

    def _on_relay_health(self, health: RelayHealth) -> None:
        self.notifier.status(f"relay {health.state.value}")
        back = health.state is HealthState.CONNECTED and self._relay_state is not None and (
            self._relay_state is not HealthState.CONNECTED
        )
        self._relay_state = health.state
        if back and self.engine is not None:
            # Notifications may have been missed while the relay was away (ours are kept,
            # but Mercado Pago's retries are slow): ask the API about every open sale now.
            rows, effects = reconciliation(self.engine.state, self._clock(), self.engine.policy)
            log.info("relay.back_reconciling", sales=len(rows), asked=len(effects))
            self.engine.run_effects(effects)
        if self.handlers is not None:
            self.handlers.publish_relay()

    def _on_alert(self, alert: Alert) -> None:
        self.alerts.append(alert)
        if self.handlers is not None:
            self.handlers.add_alert(alert)

    def relay_status(self) -> dict[str, Any]:
        """The relay link's health for the control socket."""
        relay = self.relay
        if relay is None:
            return {"state": "disabled", "since": None, "last_event_age": None, "cursor": None,
                    "delivery": None}
        health = relay.health
        last = health.last_event_at
        return {
            "state": health.state.value,
            "since": health.since,
            "detail": health.detail,
            "delivery": str(relay.delivery),
            "last_event_age": None if last is None else max(0.0, self._clock() - last),
            "cursor": self._cursor.get() if self._cursor is not None else None,
        }

    def link_status(self) -> list[dict[str, Any]]:
        """Each lane's register link for the control socket."""
        return [
            {
                "lane": lane,
                "port": link.url,
                "connected": link.is_up,
                "since": None,
            }
            for lane, link in sorted(self.links.items())
        ]

    async def _healthy(self) -> bool:
        engine = self.engine
        return engine is not None and engine.healthy and not self._stop.is_set()

    def _status_line(self) -> str:
        return f"{len(self.config.lanes)} lane(s) ready"


def main(argv: list[str]) -> int:
    """``pointd run --config FILE``."""
    parser = argparse.ArgumentParser(prog="pointd run", description="Run the checkout daemon.")
    parser.add_argument("--config", type=Path, default=DEFAULT_DAEMON_CONFIG,
                        help=f"configuration file (default {DEFAULT_DAEMON_CONFIG})")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, DaemonConfig)
    except ConfigError as exc:
        print(f"pointd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.logging.level, config.logging.format)
    return asyncio.run(_serve(config))


async def _serve(config: DaemonConfig) -> int:
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.request_stop)
    try:
        return await daemon.run()
    except ConfigError as exc:
        # stderr, not the log: the log's redaction blanks the word after "<credential>:".
        print(f"pointd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (JournalError, ControlError) as exc:
        print(f"pointd: {exc}", file=sys.stderr)
        return EXIT_FAILED
