"""The cloud simulator's configuration: account, devices, timings, webhook delivery.

Loaded from TOML (``pointd sim cloud --config sim.toml``) or built in code. Unknown keys
are errors that name the key, like the daemon's own configuration. Secrets (the access
token and webhook secret) are never in the TOML file: they are given in code or read
from files whose paths the CLI prints.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pointd.cloud.sites import Site

# Mercado Pago abandons an intent the terminal never took after 15 minutes (W1).
ABANDON_AFTER = 900.0
# Mercado Pago retries an unanswered webhook every 15 minutes (mercadopago-api.md §3d).
WEBHOOK_RETRY_INTERVAL = 900.0
DEVICE_ID = re.compile(r"[A-Z0-9_]+__[A-Za-z0-9-]+")
OPERATING_MODES = ("PDV", "STANDALONE")


class SimConfigError(ValueError):
    """The simulator configuration is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class SimDevice:
    """One simulated terminal."""

    id: str
    store_id: str = "1000001"
    pos_id: int = 1
    external_pos_id: str = "LANE1"
    operating_mode: str = "PDV"
    # False: a PATCH of the mode is refused with 403, as for a device nobody is logged into.
    logged_in: bool = True

    def __post_init__(self) -> None:
        if not DEVICE_ID.fullmatch(self.id):
            raise SimConfigError(f"devices.id {self.id!r} must look like MODEL__SERIAL")
        if self.operating_mode not in OPERATING_MODES:
            raise SimConfigError(f"devices.operating_mode must be one of {OPERATING_MODES}")


@dataclass(frozen=True, slots=True)
class Delays:
    """Simulated seconds between an intent's steps."""

    take: float = 2.0  # OPEN → ON_TERMINAL: the cashier presses "Cobrar"
    read_card: float = 3.0  # ON_TERMINAL → PROCESSING: the customer taps or inserts
    authorise: float = 2.0  # PROCESSING → PROCESSED
    close: float = 1.0  # PROCESSED → final
    # CONFIRMATION_REQUIRED: the payment settles (approved/rejected) this long afterwards.
    settle: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise SimConfigError(f"delays.{f.name} must be >= 0")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything the simulator needs to run."""

    access_token: str
    webhook_secret: str
    site: Site = Site.MLA
    devices: tuple[SimDevice, ...] = field(
        default_factory=lambda: (SimDevice(id="PAX_A910__SMARTPOS0001"),)
    )
    delays: Delays = field(default_factory=Delays)
    # Simulated seconds per real second; 0 freezes time except for /_sim/clock/advance.
    time_scale: float = 1.0
    # Unix time the simulated wall clock starts at; None: the real time at start.
    start_time: float | None = None
    webhook_url: str | None = None
    notify_all_states: bool = False
    webhook_max_attempts: int = 10
    # "s" or "ms": the unit of ts in x-signature, which Mercado Pago leaves ambiguous.
    signature_ts_unit: str = "s"
    collector_id: int = 123456789
    caller_id: int = 987654321
    client_id: int = 1234567890
    # Enforce Mercado Pago's 1 request/second per intent on GET (429 when exceeded).
    enforce_get_rate_limit: bool = False
    abandon_after: float = ABANDON_AFTER
    webhook_retry_interval: float = WEBHOOK_RETRY_INTERVAL
    # Mercado Pago's references disagree: 200 (S7) or 201 (S9) on create.
    create_status: int = 201
    # The id in an order notification's x-signature: "as_sent" (exactly the query's data.id,
    # as Mercado Pago's SDK maintainers say it signs) or "lower" (the ORD id lower-cased).
    order_signature_id: str = "as_sent"

    def __post_init__(self) -> None:
        if not self.access_token:
            raise SimConfigError("access_token must not be empty")
        if self.time_scale < 0:
            raise SimConfigError("time_scale must be >= 0")
        if self.webhook_max_attempts < 1:
            raise SimConfigError("webhook_max_attempts must be >= 1")
        for name in ("abandon_after", "webhook_retry_interval"):
            if not getattr(self, name) > 0:
                raise SimConfigError(f"{name} must be a number of seconds above 0")
        if self.create_status not in (200, 201):
            raise SimConfigError("create_status must be 200 or 201")
        if self.order_signature_id not in ("lower", "as_sent"):
            raise SimConfigError("order_signature_id must be 'lower' or 'as_sent'")
        if self.signature_ts_unit not in ("s", "ms"):
            raise SimConfigError("signature_ts_unit must be 's' or 'ms'")
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise SimConfigError("devices: the same id appears twice")
        if self.webhook_url is not None and not self.webhook_url.startswith(
            ("http://", "https://")
        ):
            raise SimConfigError("webhook_url must be an http(s) URL")

    def __repr__(self) -> str:
        return (
            f"SimConfig(site={self.site.value!r}, devices={[d.id for d in self.devices]!r}, "
            f"time_scale={self.time_scale!r}, webhook_url={self.webhook_url!r})"
        )


_TOP_KEYS = {f.name for f in fields(SimConfig)} - {"access_token", "webhook_secret"}


def _build(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            raise SimConfigError(f"unknown key {where + key!r}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise SimConfigError(f"{where.rstrip('.') or 'config'}: {exc}") from exc


def parse_config(data: Mapping[str, Any], *, access_token: str, webhook_secret: str) -> SimConfig:
    """Build a SimConfig from parsed TOML; the secrets come from elsewhere."""
    for key in data:
        if key not in _TOP_KEYS:
            raise SimConfigError(f"unknown key {key!r}")
    values: dict[str, Any] = dict(data, access_token=access_token, webhook_secret=webhook_secret)
    if "site" in values:
        try:
            values["site"] = Site(values["site"])
        except ValueError as exc:
            raise SimConfigError(f"site must be one of {[s.value for s in Site]}") from exc
    if "devices" in values:
        raw = values["devices"]
        if not isinstance(raw, list):
            raise SimConfigError("devices must be an array of tables")
        values["devices"] = tuple(_build(SimDevice, d, "devices.") for d in raw)
    if "delays" in values:
        values["delays"] = _build(Delays, values["delays"], "delays.")
    config: SimConfig = _build(SimConfig, values, "")
    return config


def load_config(path: Path, *, access_token: str, webhook_secret: str) -> SimConfig:
    """Read a TOML file into a SimConfig with the given secrets."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SimConfigError(f"{path}: {exc}") from exc
    return parse_config(data, access_token=access_token, webhook_secret=webhook_secret)


def parse_device_spec(spec: str) -> SimDevice:
    """``ID[,store=S][,pos=N][,external_pos=X][,mode=PDV|STANDALONE]`` as a SimDevice."""
    device_id, *options = spec.split(",")
    values: dict[str, Any] = {}
    keys = {"store": "store_id", "pos": "pos_id", "external_pos": "external_pos_id"}
    keys["mode"] = "operating_mode"
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in keys:
            raise SimConfigError(f"device option {option!r}: expected one of {sorted(keys)}=...")
        values[keys[key]] = value
    if "pos_id" in values:
        try:
            values["pos_id"] = int(values["pos_id"])
        except ValueError as exc:
            raise SimConfigError("device option pos must be an integer") from exc
    return SimDevice(id=device_id.strip(), **values)
