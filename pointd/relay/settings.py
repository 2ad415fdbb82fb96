"""The relay's runtime settings: one flat, validated value built from pointd.config's RelayConfig.

pointd.config owns the TOML file, its validation and the reading of secrets; the relay's
parts take this flat value so that tests and the benchmark can build one directly.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from pointd.config import RelayConfig, Secret, load_config
from pointd.core.reference import STORE_ID_PATTERN
from pointd.relay.errors import ConfigurationError

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class StoreCredential:
    """A store allowed to read its events, and the sha256 of its bearer token."""

    id: str
    token_sha256: str

    def __post_init__(self) -> None:
        if not STORE_ID_PATTERN.fullmatch(self.id):
            raise ConfigurationError(f"stores: id {self.id!r} must be 1-20 of [a-z0-9-]")
        if not _SHA256_HEX.fullmatch(self.token_sha256):
            raise ConfigurationError(
                f"stores: token_sha256 of store {self.id!r} must be 64 lowercase hex digits"
            )


def token_digest(token: str) -> str:
    """The sha256 hex of a bearer token, as kept in the configuration."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class RelaySettings:
    """Everything a relay process needs; field names follow RelayConfig's keys."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    body_limit: int = 262144
    signature_required: bool = True
    ts_window: float = 600.0
    webhook_secret: Secret | None = None
    backend: str = "sqlite"
    sqlite_path: str = "relay.sqlite3"
    postgres_dsn: Secret | None = None
    batch_max: int = 256
    batch_wait: float = 0.0
    retention_days: float = 7.0
    long_poll_timeout: float = 25.0
    canary_window: float = 300.0
    admin_token: Secret | None = None
    stores: tuple[StoreCredential, ...] = field(default_factory=tuple)
    # The loaded file itself: keys added since this flat value was made are read from here
    # only (pointd.config's RelayConfig is their one definition).
    config: RelayConfig = field(default_factory=RelayConfig)

    def __post_init__(self) -> None:
        if self.backend not in {"sqlite", "postgres"}:
            raise ConfigurationError(
                f"storage.backend must be sqlite or postgres, not {self.backend!r}"
            )
        if self.backend == "postgres" and self.postgres_dsn is None:
            raise ConfigurationError(
                "the postgres backend needs its DSN (storage.postgres_dsn_file)"
            )
        if self.signature_required and self.webhook_secret is None:
            raise ConfigurationError(
                "intake.signature_required is true but no webhook secret is configured "
                "(intake.webhook_secret_file or the mp_webhook_secret credential)"
            )
        if self.body_limit < 1024:
            raise ConfigurationError("intake.body_limit must be at least 1024 bytes")
        if self.ts_window < 0:
            raise ConfigurationError("intake.ts_window must be >= 0 (0 disables the window)")
        if not 1 <= self.batch_max <= 10000:
            raise ConfigurationError("storage.batch_max must be 1-10000")
        if not 0 <= self.batch_wait <= 1:
            raise ConfigurationError("storage.batch_wait must be 0-1 seconds")
        if self.retention_days <= 0:
            raise ConfigurationError("delivery.retention_days must be positive")
        if not 0 < self.long_poll_timeout <= 300:
            raise ConfigurationError("delivery.long_poll_timeout must be 0-300 seconds")
        ids = [store.id for store in self.stores]
        if len(ids) != len(set(ids)):
            raise ConfigurationError("stores: a store id is listed twice")

    @property
    def window_seconds(self) -> float | None:
        """The signature ts window for verify(), None when disabled."""
        return self.ts_window or None


def settings_from_config(config: RelayConfig) -> RelaySettings:
    """Flatten a loaded RelayConfig and read the secrets it names."""
    storage = config.storage
    return RelaySettings(
        host=config.server.host,
        port=config.server.port,
        public_url=config.server.public_url,
        body_limit=config.intake.body_limit,
        signature_required=config.intake.signature_required,
        ts_window=config.intake.ts_window,
        webhook_secret=config.intake.read_webhook_secret(),
        backend=storage.backend,
        sqlite_path=str(storage.sqlite_path),
        postgres_dsn=storage.read_postgres_dsn() if storage.backend == "postgres" else None,
        batch_max=storage.batch_max,
        batch_wait=storage.batch_wait,
        retention_days=float(config.delivery.retention_days),
        long_poll_timeout=config.delivery.long_poll_timeout,
        canary_window=config.delivery.canary_window,
        admin_token=config.admin.read_admin_token(),
        stores=tuple(StoreCredential(s.id, s.token_sha256) for s in config.stores),
        config=config,
    )


def load_settings(path: Path) -> RelaySettings:
    """Load relay.toml through pointd.config; raises pointd.config.ConfigError or ours."""
    return settings_from_config(load_config(path, RelayConfig))
