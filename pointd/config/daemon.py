"""The daemon's schema: ``/etc/pointd/pointd.toml``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pointd.config.schema import (
    HTTP_URL_PATTERN,
    STORE_ID_PATTERN,
    duplicate_entries,
    option,
)
from pointd.config.secrets import (
    MP_ACCESS_TOKEN,
    MP_WEBHOOK_SECRET,
    RELAY_STORE_TOKEN,
    Secret,
    read_optional_secret,
    read_secret,
)

DEFAULT_DAEMON_CONFIG = Path("/etc/pointd/pointd.toml")
USB_ID_PATTERN = r"[0-9A-Fa-f]{4}"

SITES = ("MLA", "MLB", "MLM")
CURRENCY_BY_SITE = {"MLA": "ARS", "MLB": "BRL", "MLM": "MXN"}
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
_GROUP_NAME = r"[a-z_][a-z0-9_-]{0,31}"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
MAX_LANE = 999


def _plain_http_off_loopback(url: str) -> bool:
    if not url.startswith("http://"):
        return False
    host = url[len("http://") :].split("/", 1)[0]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return host not in _LOOPBACK_HOSTS


_HTTPS_ONLY = "must use https:// (plain http:// is accepted only on loopback, for simulators)"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """The store this PC belongs to and the Mercado Pago account that must get the money."""

    id: str = option(
        ...,
        "Store id: routes this store's notifications through the relay and is embedded in "
        "every external_reference.",
        pattern=STORE_ID_PATTERN,
        example="centro-01",
    )
    site: str = option(
        ...,
        "Mercado Pago site of the account; fixes the currency (MLA=ARS, MLB=BRL, MLM=MXN) "
        "and the amount limits.",
        choices=SITES,
        example="MLA",
    )
    collector_id: int = option(
        ...,
        "User id of the Mercado Pago account payments must belong to; a payment collected "
        "by any other account never releases goods.",
        min=1,
        example=123456789,
    )
    language: str = option(
        "es", "Language of the prompts on the register.", choices=("es", "pt", "en")
    )
    tips_allowed: bool = option(
        False,
        "Whether a payment for more than the sale (a tip the customer added on the terminal) "
        "hands over the goods. Off: only the exact amount does, and more waits for a "
        "supervisor.",
    )

    @property
    def currency(self) -> str:
        """ISO currency of every sale at this store, from its site."""
        return CURRENCY_BY_SITE[self.site]


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudConfig:
    """How the daemon reaches the Mercado Pago API."""

    base_url: str = option(
        "https://api.mercadopago.com",
        "Mercado Pago API base URL; point it at the cloud simulator for demos and tests.",
        pattern=HTTP_URL_PATTERN,
    )
    backend: str = option(
        "payment-intent",
        "API used to charge: the Point payment-intent API, or the Orders API (idempotency "
        "keys, clearer states; not every terminal supports it).",
        choices=("payment-intent", "orders"),
    )
    access_token_file: Path | None = option(
        None,
        f"File holding the access token (mode 0600), used only when the systemd credential "
        f"{MP_ACCESS_TOKEN} is absent.",
        example="/etc/pointd/credentials/mp_access_token",
    )
    webhook_secret_file: Path | None = option(
        None,
        f"File holding the webhook secret (mode 0600), used only when the systemd credential "
        f"{MP_WEBHOOK_SECRET} is absent; only needed to check x-signature locally.",
        example="/etc/pointd/credentials/mp_webhook_secret",
    )
    connect_timeout: float = option(
        3.0,
        "Seconds to open a connection. Nothing has been sent yet, so a failure here is "
        "safe to retry; keep it short so the cashier is not left waiting.",
        min=0.1,
        max=60,
    )
    read_timeout: float = option(
        10.0,
        "Seconds to wait for each response read. After a create was sent, running out makes "
        "the outcome unknown and starts reconciliation, so do not set it too low.",
        min=1,
        max=120,
    )
    write_timeout: float = option(
        10.0,
        "Seconds to send a request body; requests are small, so this only trips on a stalled link.",
        min=1,
        max=120,
    )
    pool_timeout: float = option(
        3.0,
        "Seconds to wait for a free connection from the pool before failing without sending.",
        min=0.1,
        max=60,
    )

    def read_access_token(self) -> Secret:
        """Read the Mercado Pago access token (credential or file)."""
        return read_secret(MP_ACCESS_TOKEN, file=self.access_token_file)

    def read_webhook_secret(self) -> Secret | None:
        """Read the webhook secret, or None when none is configured."""
        return read_optional_secret(MP_WEBHOOK_SECRET, file=self.webhook_secret_file)

    def validate(self) -> Iterator[tuple[str, str]]:
        """Refuse plain http to anything but loopback."""
        if _plain_http_off_loopback(self.base_url):
            yield "base_url", _HTTPS_ONLY


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLinkConfig:
    """The store's connection to the pointd relay that forwards Mercado Pago notifications."""

    url: str | None = option(
        None,
        "Relay base URL. Leave unset to run without a relay: the daemon then learns outcomes "
        "by polling the API only (slower, more API calls).",
        pattern=HTTP_URL_PATTERN,
        example="https://relay.example.com",
    )
    store_token_file: Path | None = option(
        None,
        f"File holding this store's relay token (mode 0600), used only when the systemd "
        f"credential {RELAY_STORE_TOKEN} is absent.",
        example="/etc/pointd/credentials/relay_store_token",
    )
    delivery: str = option(
        "stream",
        "How notifications come from the relay: stream (one long-lived event stream, each "
        "notification pushed as the relay commits it; falls back to long-poll by itself when "
        "the stream is refused or a proxy buffers it) or long-poll (always; for a proxy that "
        "breaks long-lived responses in other ways).",
        choices=("stream", "long-poll"),
    )
    canary_interval: float = option(
        60.0,
        "Seconds between canary notifications the daemon asks the relay to echo, proving the "
        "whole notification path works.",
        min=5,
        max=3600,
    )
    silence_alarm: float = option(
        180.0,
        "Seconds without any event or canary from the relay before the daemon raises an "
        "alarm and falls back to polling; must exceed canary_interval.",
        min=10,
        max=86400,
    )
    reconnect_max_backoff: float = option(
        30.0,
        "Longest wait, in seconds, between reconnection attempts to the relay.",
        min=1,
        max=600,
    )

    def read_store_token(self) -> Secret:
        """Read this store's relay token (credential or file)."""
        return read_secret(RELAY_STORE_TOKEN, file=self.store_token_file)

    def validate(self) -> Iterator[tuple[str, str]]:
        """Keep the alarm longer than the canary period, and the URL on https."""
        if self.silence_alarm <= self.canary_interval:
            yield "silence_alarm", "must be greater than canary_interval"
        if self.url is not None and _plain_http_off_loopback(self.url):
            yield "url", _HTTPS_ONLY


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalConfig:
    """The write-ahead journal of every sale step (SQLite)."""

    path: Path = option(
        Path("/var/lib/pointd/journal.sqlite3"),
        "SQLite journal file; its directory must be writable by the service "
        "(StateDirectory=pointd).",
    )
    retention_days: int = option(
        400,
        "Days finished sales are kept, so a dispute about a sale from up to a year ago can "
        "still be answered from the journal.",
        min=30,
        max=3650,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlConfig:
    """The technician's control socket (pointctl)."""

    socket: Path = option(Path("/run/pointd/control.sock"), "Unix socket path for pointctl.")
    read_group: str = option(
        "pointd", "Group whose members may use read-only methods.", pattern=_GROUP_NAME
    )
    admin_group: str = option(
        "pointd-admin",
        "Group whose members (and root) may use mutating methods such as a supervisor override.",
        pattern=_GROUP_NAME,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TimersConfig:
    """Timers of the sale state machine, in seconds unless named otherwise."""

    poll_fallback_after: float = option(
        10.0,
        "Seconds without a notification about a live sale before the daemon asks the API itself.",
        min=1,
        max=600,
    )
    verify_initial_backoff: float = option(
        2.0,
        "First wait between verification requests for a payment; at least 1 because "
        "Mercado Pago allows one GET of an intent per second.",
        min=1,
        max=60,
    )
    verify_max_backoff: float = option(
        30.0, "Longest wait between verification requests as the back-off grows.", min=1, max=600
    )
    confirmation_escalate_after: float = option(
        120.0,
        "Seconds a CONFIRMATION_REQUIRED hold may stay unverified before the register and "
        "the technician view are told to escalate.",
        min=10,
        max=3600,
    )
    abandon_after: float = option(
        900.0,
        "Seconds after which an unpaid intent is treated as abandoned; Mercado Pago abandons "
        "it after 15 minutes.",
        min=60,
        max=3600,
    )
    create_reconcile_attempts: int = option(
        5,
        "How many times an unknown create outcome is reconciled against the API before the "
        "register shows a supervisor call and the technician is alerted; the daemon keeps "
        "reconciling, and a new attempt is made only on proven non-payment.",
        min=1,
        max=20,
    )
    handover_confirm_after: float = option(
        120.0,
        "Seconds an approved sale keeps its lane waiting for the register's HANDOVER_DONE; "
        "then the sale is closed as handover_unconfirmed, the lane is free and the "
        "technician is alerted (a register must confirm every handover).",
        min=10,
        max=3600,
    )
    sale_retry_window: float = option(
        3600.0,
        "Seconds after a sale ended during which a SALE repeating its correlation id and "
        "amount is a retry and gets that sale's RESULT again; later it is refused as a "
        "reused id (error id_reused).",
        min=60,
        max=86400,
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        """The back-off must be able to grow."""
        if self.verify_max_backoff < self.verify_initial_backoff:
            yield "verify_max_backoff", "must be at least verify_initial_backoff"


@dataclass(frozen=True, slots=True, kw_only=True)
class UsbVendorConfig:
    """A USB vendor whose devices are payment terminals, beyond the built-in table."""

    name: str = option(..., "The vendor's name, as logs and pointctl show it.", example="Sunmi")
    vendor_id: str = option(
        ..., "USB vendor id in hex, as lsusb shows it (the part before the colon).",
        pattern=USB_ID_PATTERN, example="abcd",
    )
    product_ids: tuple[str, ...] = option(
        (), "Only these product ids (hex); empty: every product of the vendor.",
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        """Product ids are hex USB ids like the vendor id."""
        for index, product in enumerate(self.product_ids):
            if re.fullmatch(USB_ID_PATTERN, product) is None:
                yield f"product_ids[{index}]", "must be 4 hex digits, as lsusb shows it"


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminalsConfig:
    """Point terminals: the account's device list and USB presence."""

    refresh_interval: float = option(
        300.0, "Seconds between refreshes of the account's terminal list.", min=30, max=86400
    )
    switch_to_pdv: bool = option(
        False,
        "Switch terminals found in standalone mode to PDV mode; the change takes effect only "
        "after the terminal restarts.",
    )
    usb_rescan_interval: float = option(
        2.0,
        "Seconds between USB rescans when hot-plug events are unavailable.",
        min=0.5,
        max=60,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LaneConfig:
    """One checkout lane: a register link and the terminal that serves it."""

    number: int = option(
        ...,
        "Lane number shown to people and embedded in references.",
        min=1,
        max=MAX_LANE,
        example=1,
    )
    register: str = option(
        ...,
        "The register's serial device (prefer the udev name /dev/pointd/...), or "
        "socket://host:port for a register on the LAN.",
        pattern=r"/\S+|socket://[^\s:/]+:[0-9]{1,5}",
        example="/dev/pointd/register",
    )
    baud: int = option(9600, "Serial speed; ignored for socket://.", choices=BAUD_RATES)
    terminal: str | None = option(
        None,
        "Mercado Pago device id to pin this lane to; unset: the terminal found on USB.",
        example="PAX_A910__SMARTPOS1234567890",
    )
    terminal_serial: str | None = option(
        None,
        "Serial number of the terminal expected on USB for this lane.",
        example="1234567890",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    """Log output (stdout; journald stores it under systemd)."""

    level: str = option(
        "info", "Lowest level pointd's own lines are logged at.",
        choices=("debug", "info", "warning", "error"),
    )
    library_level: str = option(
        "warning",
        "Lowest level the libraries' lines are logged at (apscheduler, httpx, pyudev, ...); "
        "at info they log every job run and every HTTP request.",
        choices=("debug", "info", "warning", "error"),
    )
    format: str = option(
        "auto",
        "json: one JSON object per line; console: human-readable; auto: console on a terminal, "
        "json otherwise.",
        choices=("auto", "json", "console"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """The daemon's Prometheus endpoint (``GET /metrics``)."""

    listen: str | None = option(
        None,
        "HOST:PORT to serve /metrics on (an IP address or localhost, e.g. 127.0.0.1:9464); "
        "unset: no endpoint. The metrics name no secret, but keep it on loopback or a "
        "management network.",
        pattern=r"(localhost|[0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}",
        example="127.0.0.1:9464",
    )

    @property
    def address(self) -> tuple[str, int] | None:
        """The host (brackets removed) and port to bind, or None when off."""
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def validate(self) -> Iterator[tuple[str, str]]:
        """A port number TCP can use (0 lets the kernel choose; tests use it)."""
        address = self.address
        if address is not None and not 0 <= address[1] <= 65535:
            yield "listen", "the port must be 0 to 65535 (0: any free port, named in the log)"


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig:
    """pointd daemon configuration (/etc/pointd/pointd.toml)."""

    store: StoreConfig = option(..., "Which store this is.")
    cloud: CloudConfig = option(CloudConfig(), "The Mercado Pago API.")
    relay: RelayLinkConfig = option(RelayLinkConfig(), "The notification relay.")
    journal: JournalConfig = option(JournalConfig(), "The sale journal.")
    control: ControlConfig = option(ControlConfig(), "The control socket.")
    timers: TimersConfig = option(TimersConfig(), "Sale timers.")
    terminals: TerminalsConfig = option(TerminalsConfig(), "Point terminals.")
    lanes: tuple[LaneConfig, ...] = option((), "Checkout lanes, one [[lanes]] table each.")
    usb_vendors: tuple[UsbVendorConfig, ...] = option(
        (),
        "Terminal vendors to recognise on USB in addition to the built-in table "
        "(docs/terminals.md), one [[usb_vendors]] table each.",
        example=(),
    )
    logging: LoggingConfig = option(LoggingConfig(), "Logging.")
    metrics: MetricsConfig = option(MetricsConfig(), "Prometheus metrics.")

    def validate(self) -> Iterator[tuple[str, str]]:
        """At least one lane; lane numbers, registers and terminal pins unique."""
        if not self.lanes:
            yield "lanes", "at least one [[lanes]] table is required"
        for attribute in ("number", "register", "terminal", "terminal_serial"):
            yield from duplicate_entries(self.lanes, "lanes", attribute)
