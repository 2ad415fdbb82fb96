"""The relay's schema: ``/etc/pointd/relay.toml``, and the secrets it names."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pointd.config.schema import (
    HTTP_URL_PATTERN,
    STORE_ID_PATTERN,
    ConfigError,
    duplicate_entries,
    load_config,
    option,
)
from pointd.config.secrets import (
    MP_WEBHOOK_SECRET,
    RELAY_ADMIN_TOKEN,
    RELAY_POSTGRES_DSN,
    Secret,
    read_optional_secret,
    read_secret,
)

DEFAULT_RELAY_CONFIG = Path("/etc/pointd/relay.toml")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Where the relay listens."""

    host: str = option(
        "127.0.0.1",
        "Address to listen on; keep loopback behind a TLS-terminating reverse proxy.",
    )
    port: int = option(8080, "TCP port to listen on.", min=1, max=65535)
    public_url: str | None = option(
        None,
        "The https URL Mercado Pago and stores use to reach this relay (shown in docs and "
        "health output).",
        pattern=HTTP_URL_PATTERN,
        example="https://relay.example.com",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class IntakeConfig:
    """How the relay accepts Mercado Pago notifications."""

    body_limit: int = option(
        262144, "Largest notification body accepted, in bytes.", min=1024, max=16 * 1024 * 1024
    )
    signature_required: bool = option(
        True,
        "Refuse webhooks whose x-signature does not verify. Unsigned IPN notifications are "
        "still kept: they only make a store ask the API sooner.",
    )
    ts_window: float = option(
        600.0,
        "Largest age, in seconds, of a signed webhook's ts; older ones are refused as "
        "replays. 0 disables the check.",
        min=0,
        max=86400,
    )
    webhook_secret_file: Path | None = option(
        None,
        f"File holding the webhook secret (mode 0600), used only when the systemd credential "
        f"{MP_WEBHOOK_SECRET} is absent.",
        example="/etc/pointd/credentials/mp_webhook_secret",
    )

    def read_webhook_secret(self) -> Secret | None:
        """Read the webhook secret, or None when none is configured."""
        return read_optional_secret(MP_WEBHOOK_SECRET, file=self.webhook_secret_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    """Where the relay keeps notifications until stores acknowledge them."""

    backend: str = option(
        "sqlite",
        "sqlite for one relay process; postgres for several replicas sharing one database.",
        choices=("sqlite", "postgres"),
    )
    sqlite_path: Path = option(
        Path("/var/lib/pointd-relay/relay.sqlite3"), "SQLite database file (sqlite backend)."
    )
    postgres_dsn_file: Path | None = option(
        None,
        f"File holding the PostgreSQL DSN (mode 0600; it may contain a password), used only "
        f"when the systemd credential {RELAY_POSTGRES_DSN} is absent.",
        example="/etc/pointd/credentials/relay_postgres_dsn",
    )
    batch_max: int = option(
        256, "Most notifications written in one durable commit.", min=1, max=10000
    )
    batch_wait: float = option(
        0.0,
        "Seconds a commit waits to gather more notifications. 0 (the default) still batches: "
        "requests that arrive while a commit is running share the next one; a wait only "
        "adds latency at low rates (docs/benchmarks.md, relay).",
        min=0,
        max=1,
    )

    def read_postgres_dsn(self) -> Secret:
        """Read the PostgreSQL DSN (credential or file)."""
        return read_secret(RELAY_POSTGRES_DSN, file=self.postgres_dsn_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """How stores receive their notifications."""

    retention_days: int = option(
        7, "Days notifications are kept for replay after delivery.", min=1, max=365
    )
    long_poll_timeout: float = option(
        25.0,
        "Seconds a store's long-poll waits for news before returning empty; below the usual "
        "30 s idle timeout of proxies.",
        min=1,
        max=300,
    )
    canary_window: float = option(
        300.0,
        "Seconds a store may stay silent before the relay's health output reports it missing.",
        min=10,
        max=86400,
    )
    unroutable_alert_after: float = option(
        300.0,
        "Seconds a fraud alert (stop_delivery_op_wh, IPN delivery_cancellation) may wait "
        "for its route before the relay raises an alert: an error log line, the metric "
        "pointd_relay_unroutable_fraud_alerts and GET /admin/events?status=alerted. Mercado "
        "Pago never resends a fraud alert.",
        min=1,
        max=86400,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """The relay's admin API (replay, inspection)."""

    token_file: Path | None = option(
        None,
        f"File holding the admin bearer token (mode 0600), used only when the systemd "
        f"credential {RELAY_ADMIN_TOKEN} is absent; without either the admin API is off.",
        example="/etc/pointd/credentials/relay_admin_token",
    )

    def read_admin_token(self) -> Secret | None:
        """Read the admin token, or None when none is configured."""
        return read_optional_secret(RELAY_ADMIN_TOKEN, file=self.token_file)


# What examples/relay.toml shows for a store's token hash; a relay must refuse to run on it.
PLACEHOLDER_SHA256 = "0" * 64


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreEntry:
    """A store allowed to fetch its notifications from the relay."""

    id: str = option(
        ..., "The store's id (its [store] id).", pattern=STORE_ID_PATTERN, example="centro-01"
    )
    token_sha256: str = option(
        ...,
        "sha256 of the store's token, lower-case hex; the token itself lives only on the "
        'store PC. Make it with: printf %s "$TOKEN" | sha256sum',
        pattern=r"[0-9a-f]{64}",
        example=PLACEHOLDER_SHA256,
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        """The example file's placeholder is no store's token."""
        if self.token_sha256 == PLACEHOLDER_SHA256:
            yield ("token_sha256", "is the example's placeholder (all zeros): put the sha256 "
                   'of the store\'s token, printf %s "$TOKEN" | sha256sum')


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    """pointd relay configuration (/etc/pointd/relay.toml)."""

    server: ServerConfig = option(ServerConfig(), "Listening address.")
    intake: IntakeConfig = option(IntakeConfig(), "Mercado Pago webhook intake.")
    storage: StorageConfig = option(StorageConfig(), "Durable storage.")
    delivery: DeliveryConfig = option(DeliveryConfig(), "Delivery to stores.")
    admin: AdminConfig = option(AdminConfig(), "Admin API.")
    stores: tuple[StoreEntry, ...] = option((), "Stores served, one [[stores]] table each.")

    def validate(self) -> Iterator[tuple[str, str]]:
        """Store ids and token hashes unique."""
        yield from duplicate_entries(self.stores, "stores", "id")
        yield from duplicate_entries(self.stores, "stores", "token_sha256")


@dataclass(frozen=True)
class RelaySecrets:
    """The secrets a relay's configuration names, read once at start."""

    webhook_secret: Secret | None = None
    postgres_dsn: Secret | None = None
    admin_token: Secret | None = None


def read_relay_secrets(config: RelayConfig) -> RelaySecrets:
    """Read every secret ``config`` needs; ConfigError when a needed one is missing."""
    webhook_secret = config.intake.read_webhook_secret()
    if config.intake.signature_required and webhook_secret is None:
        raise ConfigError(
            [
                "intake.signature_required is true but no webhook secret is configured "
                f"(intake.webhook_secret_file or the {MP_WEBHOOK_SECRET} credential)"
            ]
        )
    postgres_dsn = (
        config.storage.read_postgres_dsn() if config.storage.backend == "postgres" else None
    )
    return RelaySecrets(webhook_secret, postgres_dsn, config.admin.read_admin_token())


def load_relay_config(path: Path) -> tuple[RelayConfig, RelaySecrets]:
    """Load ``relay.toml`` and the secrets it names; raises ConfigError."""
    config = load_config(path, RelayConfig)
    return config, read_relay_secrets(config)
