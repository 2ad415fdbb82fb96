"""Configuration: typed, frozen schemas read from TOML, and the secrets kept out of it.

- :mod:`pointd.config.schema`: the schema framework (``option``, loading with every problem
  collected, the reference rendering).
- :mod:`pointd.config.secrets`: ``Secret`` and the reading of systemd credentials and
  private files.
- :mod:`pointd.config.daemon`: the daemon's schema (``pointd.toml``).
- :mod:`pointd.config.relay`: the relay's schema (``relay.toml``) and its secrets.
- ``python -m pointd.config daemon|relay`` prints a schema's reference TOML.

The names below are the package's public surface; import them from here.
"""

from pointd.config.daemon import (
    BAUD_RATES,
    CURRENCY_BY_SITE,
    DEFAULT_DAEMON_CONFIG,
    MAX_LANE,
    SITES,
    CloudConfig,
    ControlConfig,
    DaemonConfig,
    JournalConfig,
    LaneConfig,
    LoggingConfig,
    MetricsConfig,
    RelayLinkConfig,
    StoreConfig,
    TerminalsConfig,
    TimersConfig,
    UsbVendorConfig,
)
from pointd.config.relay import (
    DEFAULT_RELAY_CONFIG,
    AdminConfig,
    DeliveryConfig,
    IntakeConfig,
    RelayConfig,
    RelaySecrets,
    ServerConfig,
    StorageConfig,
    StoreEntry,
    load_relay_config,
)
from pointd.config.schema import (
    EXIT_CONFIG,
    HTTP_URL_PATTERN,
    STORE_ID_PATTERN,
    ConfigError,
    OptionSpec,
    config_from_mapping,
    load_config,
    option,
    option_spec,
    parse_config,
    render_reference,
)
from pointd.config.secrets import (
    MP_ACCESS_TOKEN,
    MP_WEBHOOK_SECRET,
    RELAY_ADMIN_TOKEN,
    RELAY_POSTGRES_DSN,
    RELAY_STORE_TOKEN,
    CredentialError,
    Secret,
    read_optional_secret,
    read_secret,
)

__all__ = [
    "BAUD_RATES",
    "CURRENCY_BY_SITE",
    "DEFAULT_DAEMON_CONFIG",
    "DEFAULT_RELAY_CONFIG",
    "EXIT_CONFIG",
    "HTTP_URL_PATTERN",
    "MAX_LANE",
    "MP_ACCESS_TOKEN",
    "MP_WEBHOOK_SECRET",
    "RELAY_ADMIN_TOKEN",
    "RELAY_POSTGRES_DSN",
    "RELAY_STORE_TOKEN",
    "SITES",
    "STORE_ID_PATTERN",
    "AdminConfig",
    "CloudConfig",
    "ConfigError",
    "ControlConfig",
    "CredentialError",
    "DaemonConfig",
    "DeliveryConfig",
    "IntakeConfig",
    "JournalConfig",
    "LaneConfig",
    "LoggingConfig",
    "MetricsConfig",
    "OptionSpec",
    "RelayConfig",
    "RelayLinkConfig",
    "RelaySecrets",
    "Secret",
    "ServerConfig",
    "StorageConfig",
    "StoreConfig",
    "StoreEntry",
    "TerminalsConfig",
    "TimersConfig",
    "UsbVendorConfig",
    "config_from_mapping",
    "load_config",
    "load_relay_config",
    "option",
    "option_spec",
    "parse_config",
    "read_optional_secret",
    "read_secret",
    "render_reference",
]
