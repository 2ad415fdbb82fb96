"""``pointd run``: the composition root. ``build`` makes every part, ``run`` runs them.

(``pointd run --check`` tries what the daemon needs and exits: ``pointd.app.selfcheck``.)

``build(config, ports)`` is synchronous and constructs the whole daemon: it reads the
secrets, takes the journal's lock, replays the journal and wires every part to the ports it
is given (``Ports.production()`` for ``pointd run``; the rig and the tests pass their own).
Every part is built whole, with what it calls handed to its constructor; the few callbacks
by which a part reports upward (a register request for the checkout, a USB change for the
lanes, a relay health change) are closures over parts built later in the same function.
Nothing runs until ``run``, so none of them can fire before its target exists.

``run(parts)`` starts the parts in the order each needs the one before: recovery effects
of the replayed sales → register sessions (a SALE waits for the start-up gate) and the
terminal watch → the first device list (then the gate opens) → relay consumer → control
socket → jobs → READY=1 and the watchdog. Every long-running part runs under the
``Supervisor``: any essential one that ends is the daemon's failure (``STATUS=`` says why,
the watchdog starves, the exit code is 1, systemd restarts it). Stop order is the reverse,
and the engine finishes the step it is in (its journal write) before anything closes; a
sale in progress is resumed by recovery at the next start.

This is the only module that imports every layer.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from pointd import __version__
from pointd.app import selfcheck
from pointd.app.checkout import Checkout, RegisterScreens, new_sale_id
from pointd.app.control_handlers import DaemonHandlers, journal_audit, reconciliation
from pointd.app.engine import Alert, Engine
from pointd.app.jobs import DaemonJobs
from pointd.app.lane_terminals import LaneSpec, LaneTerminals, refusing_mode_setter
from pointd.app.metrics import DaemonMetrics, LiveSources, MetricsAddressError, MetricsServer
from pointd.app.notifications import NotificationHandler
from pointd.app.ports import Ports
from pointd.app.supervisor import StartUpGate, Supervisor
from pointd.app.systemd_notify import WatchdogLoop
from pointd.cloud.backends import build_cloud_port
from pointd.cloud.client import Timeouts
from pointd.cloud.port import CloudPort
from pointd.cloud.sites import SITE_RULES, Site
from pointd.config import (
    DEFAULT_DAEMON_CONFIG,
    EXIT_CONFIG,
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
from pointd.core.effects import Effect
from pointd.core.events import Event
from pointd.core.machine import CoreState, Step
from pointd.core.policy import Policy
from pointd.core.recovery import recover
from pointd.core.states import LaneCondition
from pointd.journal.errors import JournalError
from pointd.journal.store import Journal
from pointd.link.driver import LinkDriver
from pointd.logging import configure_logging, recent_log_lines
from pointd.register.messages import FRESH_START_TYPES
from pointd.register.session import RegisterRequest, RegisterSession, Reply
from pointd.relay.client import HealthState, RelayConsumer, RelayHealth
from pointd.terminal import DEFAULT_VENDORS, DeviceCatalog, TerminalChange, TerminalWatch
from pointd.terminal.vendors import VendorTable, vendor_table_from_config

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
# Random bytes in a new sale or refund id (a ULID's 80 random bits).
SALE_ID_ENTROPY = 10


class EngineUnhealthy(RuntimeError):
    """The engine could not journal an event: it decides nothing more until a restart."""


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
        handover_confirm_after=timers.handover_confirm_after,
        sale_retry_window=timers.sale_retry_window,
    )


def vendor_table(config: DaemonConfig) -> VendorTable:
    """The built-in terminal vendors plus the configured ``[[usb_vendors]]``."""
    extra = config.usb_vendors
    if not extra:
        return DEFAULT_VENDORS
    added = vendor_table_from_config(
        {"name": vendor.name, "vendor_id": vendor.vendor_id,
         **({"product_ids": list(vendor.product_ids)} if vendor.product_ids else {}),
         "source": "configuration"}
        for vendor in extra
    )
    return VendorTable(added.entries + DEFAULT_VENDORS.entries)


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


class GapEngine(Protocol):
    """The part of the engine the relay-gap reconciliation uses."""

    @property
    def state(self) -> CoreState:
        """The current core state."""
        ...

    @property
    def policy(self) -> Policy:
        """The decision parameters."""
        ...

    def run_effects(self, effects: list[Effect]) -> None:
        """Start effects in order."""
        ...


class RelayGap:
    """After the relay was away, ask Mercado Pago about every open sale.

    Notifications may have been missed while the relay was down or silent (ours are kept,
    but Mercado Pago's retries are slow), so the first CONNECTED after any other state
    reconciles every open sale from the API. The first contact after start needs none:
    start-up recovery already asked.
    """

    def __init__(self, engine: GapEngine, clock: Callable[[], float]) -> None:
        self._engine = engine
        self._clock = clock
        self._last: HealthState | None = None

    def health_changed(self, health: RelayHealth) -> None:
        """The relay consumer's health moved to ``health``."""
        back = (
            health.state is HealthState.CONNECTED
            and self._last is not None
            and self._last is not HealthState.CONNECTED
        )
        self._last = health.state
        if back:
            engine = self._engine
            rows, effects = reconciliation(engine.state, self._clock(), engine.policy)
            log.info("relay.back_reconciling", sales=len(rows), asked=len(effects))
            engine.run_effects(effects)


class RelayStatus:
    """The relay link's health for the control socket."""

    def __init__(
        self, relay: RelayConsumer | None, cursor: JournalCursor, clock: Callable[[], float]
    ) -> None:
        self._relay = relay
        self._cursor = cursor
        self._clock = clock

    def relay_status(self) -> dict[str, Any]:
        """State, since when, last delivery's age and the journaled cursor."""
        relay = self._relay
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
            "last_event_at": last,
            "last_event_age": None if last is None else max(0.0, self._clock() - last),
            "cursor": self._cursor.get(),
        }


class RegisterLinks:
    """Each lane's register link for the control socket."""

    def __init__(self, links: dict[int, LinkDriver]) -> None:
        self._links = links

    def link_status(self) -> list[dict[str, Any]]:
        """Lane, port, whether the link is up, since when, why not and retransmits, per lane."""
        rows = []
        for lane, link in sorted(self._links.items()):
            status = link.status
            rows.append({"lane": lane, "port": status.url, "connected": status.up,
                         "since": status.since, "problem": status.problem,
                         "retransmits": status.retransmits})
        return rows


@dataclass(frozen=True, kw_only=True)
class Parts:
    """Every part of one store PC's daemon, built by ``build`` and run by ``run``."""

    config: DaemonConfig
    ports: Ports
    supervisor: Supervisor
    startup: StartUpGate
    journal: Journal
    journal_lock: int
    cloud: CloudPort
    close_cloud: Callable[[], Awaitable[None]]
    engine: Engine
    screens: RegisterScreens
    checkout: Checkout
    sessions: dict[int, RegisterSession]
    links: dict[int, LinkDriver]
    # None: no USB library on this machine (lanes use their pinned terminal ids).
    watch: TerminalWatch | None
    lanes: LaneTerminals
    # None: no [relay] url configured (the daemon polls Mercado Pago instead).
    relay: RelayConsumer | None
    handlers: DaemonHandlers
    server: ControlServer
    jobs: DaemonJobs
    started_at: float
    metrics: DaemonMetrics
    # None: no [metrics] listen address configured.
    metrics_server: MetricsServer | None

    def request_stop(self) -> None:
        """Ask ``run`` to stop cleanly."""
        self.supervisor.request_stop()

    @property
    def alerts(self) -> list[Alert]:
        """The core's recent technician alerts."""
        return self.handlers.alerts


def build(config: DaemonConfig, ports: Ports) -> Parts:
    """Construct every part of the daemon from its configuration and ports (runs nothing).

    Raises ConfigError for a missing secret and JournalError when the journal is locked by
    another daemon or unreadable; nothing is left open then.
    """
    token = read_secret(MP_ACCESS_TOKEN, file=config.cloud.access_token_file)
    webhook_secret = read_optional_secret(MP_WEBHOOK_SECRET, file=config.cloud.webhook_secret_file)
    store_token = (
        read_secret(RELAY_STORE_TOKEN, file=config.relay.store_token_file)
        if config.relay.url
        else None
    )
    journal_lock = lock_journal(Path(config.journal.path))
    try:
        journal = Journal.open(config.journal.path)
    except BaseException:
        os.close(journal_lock)
        raise
    try:
        return _wire(config, ports, journal=journal, journal_lock=journal_lock, token=token,
                     webhook_secret=webhook_secret, store_token=store_token)
    except BaseException:
        journal.close()
        os.close(journal_lock)
        raise


def _wire(
    config: DaemonConfig,
    ports: Ports,
    *,
    journal: Journal,
    journal_lock: int,
    token: Secret,
    webhook_secret: Secret | None,
    store_token: Secret | None,
) -> Parts:
    clock = ports.wall_clock
    started_at = clock()
    supervisor = Supervisor(ports.notifier)
    metrics = DaemonMetrics(__version__)
    journal.observe_commits(metrics.observe_commit)
    startup = StartUpGate()
    policy = policy_from(config)
    state = journal.rebuild(config.store.id, policy)
    journal.record_policy(policy)
    log.info("journal.replayed", sales=len(state.sales), unfinished=len(state.unfinished()))
    site = Site(config.store.site)
    cloud, close_cloud = build_cloud_port(
        config.cloud.backend,
        config.cloud.base_url,
        token.reveal(),
        site,
        Timeouts(
            connect=config.cloud.connect_timeout,
            read=config.cloud.read_timeout,
            write=config.cloud.write_timeout,
            pool=config.cloud.pool_timeout,
        ),
        transport=ports.cloud_transport,
        observer=metrics.observe_cloud_call,
        clock=ports.monotonic,
        random=ports.random,
    )

    def new_id() -> str:
        return new_sale_id(clock(), ports.entropy(SALE_ID_ENTROPY))

    # Built below; the closures by which lower parts report upward refer to them.
    checkout: Checkout
    lanes: LaneTerminals
    handlers: DaemonHandlers

    def requests_of(lane: int) -> Callable[[RegisterRequest], Awaitable[Reply | None]]:
        async def handle(request: RegisterRequest) -> Reply | None:
            return await checkout.on_request(lane, request)

        return handle

    sessions = {
        lane.number: RegisterSession(lane.number, config.store.language, requests_of(lane.number))
        for lane in config.lanes
    }
    screens = RegisterScreens(sessions)

    def on_alert(alert: Alert) -> None:
        handlers.add_alert(alert)

    def on_step(event: Event, result: Step) -> None:
        metrics.observe_step(event, result)
        handlers.engine_stepped(event, result)

    engine = Engine(
        journal=journal,
        state=state,
        policy=policy,
        cloud=cloud,
        register=screens,
        wall_clock=clock,
        on_alert=on_alert,
        on_step=on_step,
        ticket_numbers=SITE_RULES[site].requires_ticket_number,
        timers=ports.timers,
        new_refund_id=new_id,
    )

    def usb_changed(change: TerminalChange) -> None:
        lanes.usb_changed(change)
        handlers.publish_terminals()

    watch = (
        TerminalWatch(
            ports.usb,
            vendor_table(config),
            on_change=usb_changed,
            hotplug=ports.hotplug,
            rescan_interval=config.terminals.usb_rescan_interval,
        )
        if ports.usb is not None
        else None
    )

    def on_condition(lane: int, condition: LaneCondition) -> None:
        supervisor.spawn(checkout.show_condition(lane, condition), f"condition-{lane}",
                         essential=False)
        handlers.publish_terminals()

    def terminals_changed() -> None:
        handlers.publish_terminals()

    lanes = LaneTerminals(
        [LaneSpec(lane.number, lane.terminal, lane.terminal_serial) for lane in config.lanes],
        catalog=DeviceCatalog(ports.monotonic),
        fetch_devices=cloud.list_terminals,
        on_condition=on_condition,
        watch=watch,
        refresh_interval=config.terminals.refresh_interval,
        switch_to_pdv=config.terminals.switch_to_pdv,
        set_operating_mode=refusing_mode_setter(cloud.set_operating_mode),
        wall_clock=clock,
        on_change=terminals_changed,
    )
    checkout = Checkout(engine=engine, terminals=lanes, screens=screens, startup=startup,
                        new_id=new_id)
    links = {
        lane.number: LinkDriver(lane.register, baudrate=lane.baud,
                                fresh_start_types=FRESH_START_TYPES,
                                enq_first=True,
                                opener=ports.open_register_port,
                                wall_clock=clock,
                                on_change=lambda _status: handlers.publish_status())
        for lane in config.lanes
    }

    def status_to_systemd(line: str) -> None:
        # Once the daemon failed or is stopping, STATUS= says that and nothing may overwrite it.
        if not supervisor.stop_requested:
            ports.notifier.status(line)

    cursor = JournalCursor(journal)
    relay_gap = RelayGap(engine, clock)

    def on_relay_health(health: RelayHealth) -> None:
        relay_gap.health_changed(health)
        handlers.publish_relay()

    relay = (
        RelayConsumer(
            config.relay.url,
            config.store.id,
            store_token.reveal(),
            NotificationHandler(engine, journal),
            cursor,
            webhook_secret=webhook_secret.reveal() if webhook_secret else None,
            on_health_change=on_relay_health,
            delivery=config.relay.delivery,
            canary_interval=config.relay.canary_interval,
            transport=ports.relay_transport,
            clock=clock,
            random=ports.random,
        )
        if config.relay.url and store_token is not None
        else None
    )

    server = ControlServer(
        config.control.socket,
        record_audit=journal_audit(journal, clock),
        read_group=config.control.read_group,
        admin_group=config.control.admin_group,
        clock=clock,
        monotonic=ports.monotonic,
    )
    relay_status = RelayStatus(relay, cursor, clock)
    handlers = DaemonHandlers(
        engine=engine,
        journal=journal,
        cloud=cloud,
        terminals=lanes,
        relay=relay_status,
        links=RegisterLinks(links),
        events=server,
        config=config_snapshot(config),
        secrets=[secret.reveal() for secret in (token, store_token, webhook_secret)
                 if secret is not None],
        clock=clock,
        started_at=started_at,
        recent_logs=recent_log_lines,
        on_status_line=status_to_systemd,
    )
    register_daemon_methods(server, handlers)
    jobs = DaemonJobs(
        engine=engine,
        cloud=cloud,
        wall_clock=clock,
        evaluate_relay=relay.evaluate_health if relay is not None else None,
        retention=journal,
        export_dir=Path(config.journal.path).parent / "exports",
        timezone=ports.timezone,
        scheduler=ports.job_scheduler,
    )
    metrics.attach(
        LiveSources(
            state=lambda: engine.state,
            relay=relay_status.relay_status if relay is not None else None,
            links=lambda: {number: link.status for number, link in links.items()},
        ),
        state,
    )
    address = config.metrics.address
    return Parts(
        metrics=metrics,
        metrics_server=MetricsServer(metrics, *address) if address is not None else None,
        config=config, ports=ports, supervisor=supervisor, startup=startup, journal=journal,
        journal_lock=journal_lock, cloud=cloud, close_cloud=close_cloud, engine=engine,
        screens=screens, checkout=checkout, sessions=sessions, links=links, watch=watch,
        lanes=lanes, relay=relay, handlers=handlers, server=server, jobs=jobs,
        started_at=started_at,
    )


async def run(parts: Parts) -> int:
    """Start every part, serve until a stop or a failure, then stop in reverse order.

    Returns EXIT_OK after a requested stop, EXIT_FAILED after a failure.
    """
    supervisor, engine, config = parts.supervisor, parts.engine, parts.config
    try:
        engine.run_effects(recover(engine.state, parts.ports.wall_clock(), engine.policy))
        engine.resume_refunds()
        supervisor.spawn(_watch_engine(engine), "engine", essential=True)
        for number, session in parts.sessions.items():
            supervisor.spawn(session.run(parts.links[number]), f"register-{number}",
                             essential=True)
        if parts.watch is not None:
            supervisor.spawn(parts.watch.run(), "usb-watch", essential=True)
        # Know each lane's terminal before admitting a sale: until the gate opens a SALE
        # waits rather than being refused as "terminal unknown". An unreachable cloud only
        # delays this by the client's own timeouts (the lanes then say so).
        refreshed = await parts.lanes.refresh()
        parts.startup.open()
        supervisor.spawn(parts.lanes.run(refreshed=refreshed), "lane-terminals", essential=True)
        if parts.relay is not None:
            supervisor.spawn(parts.relay.run(), "relay-consumer", essential=True)
        await parts.server.start()
        supervisor.spawn(parts.server.watch(), "control-socket", essential=True)
        if parts.metrics_server is not None:
            await parts.metrics_server.start()
            # Not essential: a scraper's trouble must never stop the checkout.
            supervisor.spawn(parts.metrics_server.serve_forever(), "metrics", essential=False)
        parts.jobs.start()
        if not supervisor.stop_requested:
            parts.ports.notifier.ready(parts.handlers.status_line())
            parts.handlers.ready = True
            interval = parts.ports.watchdog_interval
            if interval is not None:
                watchdog = WatchdogLoop(
                    lambda: _healthy(supervisor, engine), parts.ports.notifier, interval
                )
                supervisor.spawn(watchdog.run(), "watchdog", essential=True)
            log.info("daemon.ready", version=__version__,
                     lanes=[lane.number for lane in config.lanes])
        await supervisor.wait()
        if supervisor.failure is None:
            parts.ports.notifier.stopping()
        log.info("daemon.stopping", failure=supervisor.failure)
        await parts.jobs.shutdown()
        await engine.stop()
        return EXIT_OK if supervisor.failure is None else EXIT_FAILED
    finally:
        await supervisor.cancel_all()
        if parts.metrics_server is not None:
            await parts.metrics_server.close()
        await parts.server.close()
        if parts.relay is not None:
            await parts.relay.close()
        for link in parts.links.values():
            link.close()
        await parts.close_cloud()
        parts.journal.close()
        os.close(parts.journal_lock)


async def _watch_engine(engine: Engine) -> None:
    await engine.wait_journal_failure()
    raise EngineUnhealthy("the journal could not be written")


async def _healthy(supervisor: Supervisor, engine: Engine) -> bool:
    return supervisor.healthy and engine.healthy


def main(argv: list[str]) -> int:
    """``pointd run --config FILE``."""
    parser = argparse.ArgumentParser(prog="pointd run", description="Run the checkout daemon.")
    parser.add_argument("--config", type=Path, default=DEFAULT_DAEMON_CONFIG,
                        help=f"configuration file (default {DEFAULT_DAEMON_CONFIG})")
    parser.add_argument("--check", action="store_true",
                        help="check the configuration, credentials, register ports, Mercado "
                             "Pago, the lanes' terminals and the relay, then exit (0: all ok, "
                             f"{EXIT_CONFIG}: configuration, 1: anything else)")
    args = parser.parse_args(argv)
    if args.check:
        return asyncio.run(selfcheck.check(args.config))
    try:
        config = load_config(args.config, DaemonConfig)
    except ConfigError as exc:
        print(f"pointd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.logging.level, config.logging.format,
                      library_level=config.logging.library_level)
    return asyncio.run(serve(config, Ports.production))


async def serve(config: DaemonConfig, make_ports: Callable[[], Ports]) -> int:
    """Build the daemon on the ports ``make_ports`` gives, run it until SIGTERM or a failure.

    The ports are made inside the event loop (the timers and udev's monitor need it).
    """
    try:
        parts = build(config, make_ports())
    except ConfigError as exc:
        # stderr, not the log: the log's redaction blanks the word after "<credential>:".
        print(f"pointd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except JournalError as exc:
        print(f"pointd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, parts.request_stop)
    try:
        return await run(parts)
    except (JournalError, ControlError) as exc:
        print(f"pointd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except MetricsAddressError as exc:
        print(f"pointd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
