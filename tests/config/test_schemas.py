"""The daemon and relay schemas: their rules, their shipped examples, their credentials."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from pointd.config import (
    BAUD_RATES,
    CloudConfig,
    ConfigError,
    DaemonConfig,
    LaneConfig,
    RelayConfig,
    StoreConfig,
    option_spec,
    parse_config,
    render_reference,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    DaemonConfig: ROOT / "examples" / "pointd.toml",
    RelayConfig: ROOT / "examples" / "relay.toml",
}

STORE = '[store]\nid = "centro-01"\nsite = "MLB"\ncollector_id = 99\n'
LANE = '[[lanes]]\nnumber = 1\nregister = "/dev/pointd/register"\n'


@pytest.fixture(autouse=True)
def no_credentials_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def daemon(text: str) -> DaemonConfig:
    return parse_config(text, DaemonConfig, source="pointd.toml")


def daemon_problems(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        daemon(text)
    return caught.value.problems


def relay_problems(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, RelayConfig, source="relay.toml")
    return caught.value.problems


@pytest.mark.parametrize("schema", [DaemonConfig, RelayConfig])
def test_the_shipped_example_is_rendered_from_the_schema(schema: type[Any]) -> None:
    path = EXAMPLES[schema]
    name = "daemon" if schema is DaemonConfig else "relay"
    assert path.read_text() == render_reference(schema), (
        f"{path.relative_to(ROOT)} is stale; regenerate it with: "
        f"python -m pointd.config {name} > {path.relative_to(ROOT)}"
    )


def test_the_reference_command_prints_a_schema(capsys: pytest.CaptureFixture[str]) -> None:
    from pointd.config.__main__ import main

    assert main(["relay"]) == 0
    assert capsys.readouterr().out == render_reference(RelayConfig)
    assert main(["nope"]) == 2


def test_the_shipped_daemon_example_loads() -> None:
    from pointd.config import load_config

    assert isinstance(load_config(EXAMPLES[DaemonConfig], DaemonConfig), DaemonConfig)


def test_the_shipped_relay_example_is_refused_only_for_its_placeholder_token_hash() -> None:
    from pointd.config import ConfigError, load_config

    with pytest.raises(ConfigError) as refused:
        load_config(EXAMPLES[RelayConfig], RelayConfig)
    [problem] = refused.value.problems
    assert problem.endswith("stores[0].token_sha256: is the example's placeholder (all zeros): "
                            "put the sha256 of the store's token, printf %s \"$TOKEN\" | sha256sum")
    text = EXAMPLES[RelayConfig].read_text().replace("0" * 64, "ab" * 32)
    assert isinstance(parse_config(text, RelayConfig), RelayConfig)


def test_configured_usb_vendors_join_the_built_in_table() -> None:
    from pointd.app.runtime import vendor_table

    config = daemon(STORE + LANE + '[[usb_vendors]]\nname = "Sunmi"\nvendor_id = "AbC1"\n'
                    'product_ids = ["0001"]\n')
    table = vendor_table(config)
    assert table.lookup(0xABC1, 0x0001) is not None
    assert table.lookup(0xABC1, 0x0002) is None
    assert table.lookup(0x1753, 0xC901) is not None  # the built-in ones stay
    with pytest.raises(ConfigError, match=r"usb_vendors\[0\]\.product_ids\[0\]: must be 4 hex"):
        daemon(STORE + LANE + '[[usb_vendors]]\nname = "X"\nvendor_id = "abcd"\n'
               'product_ids = ["12345"]\n')


def walk(schema: type[Any], prefix: str = "") -> list[tuple[str, dataclasses.Field[Any]]]:
    rows = []
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        rows.append((prefix + field.name, field))
        annotation = hints[field.name]
        args = typing.get_args(annotation)
        inner = args[0] if args else annotation
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            rows.extend(walk(inner, f"{prefix}{field.name}."))
    return rows


@pytest.mark.parametrize("schema", [DaemonConfig, RelayConfig])
def test_every_key_is_documented_and_in_the_example(schema: type[Any]) -> None:
    example = EXAMPLES[schema].read_text()
    for path, field in walk(schema):
        assert len(option_spec(field).doc) > 5, path
        assert re.search(rf"^(# )?\[*{field.name}\]*( =|$)", example, re.M), path


@pytest.mark.parametrize("schema", [DaemonConfig, RelayConfig])
def test_keys_named_like_secrets_only_say_where_the_secret_is(schema: type[Any]) -> None:
    for path, _field in walk(schema):
        name = path.rsplit(".", 1)[-1]
        if re.search("token|secret|password|dsn", name):
            assert name.endswith(("_file", "_sha256")), path


def test_the_currency_follows_the_site() -> None:
    assert [
        StoreConfig(id="s", site=site, collector_id=1).currency for site in ("MLA", "MLB", "MLM")
    ] == [
        "ARS",
        "BRL",
        "MXN",
    ]
    assert daemon(STORE + LANE).store.currency == "BRL"


def test_defaults_match_the_brief() -> None:
    cfg = daemon(STORE + LANE)
    assert cfg.store.language == "es"
    assert cfg.cloud.base_url == "https://api.mercadopago.com"
    assert cfg.cloud.backend == "payment-intent"
    assert (cfg.cloud.connect_timeout, cfg.cloud.read_timeout) == (3.0, 10.0)
    assert (cfg.cloud.write_timeout, cfg.cloud.pool_timeout) == (10.0, 3.0)
    assert cfg.relay.url is None
    assert (cfg.relay.canary_interval, cfg.relay.silence_alarm) == (60.0, 180.0)
    assert cfg.journal.path == Path("/var/lib/pointd/journal.sqlite3")
    assert cfg.journal.retention_days == 400
    assert cfg.control.socket == Path("/run/pointd/control.sock")
    assert (cfg.control.read_group, cfg.control.admin_group) == ("pointd", "pointd-admin")
    assert cfg.timers.abandon_after == 900.0
    assert cfg.timers.create_reconcile_attempts == 5
    assert cfg.terminals.switch_to_pdv is False
    assert cfg.lanes == (LaneConfig(number=1, register="/dev/pointd/register"),)
    assert cfg.lanes[0].baud == 9600
    assert (cfg.logging.level, cfg.logging.format) == ("info", "auto")


def test_the_store_section_is_required() -> None:
    assert daemon_problems(LANE) == (
        "pointd.toml: store.id: required key is missing",
        "pointd.toml: store.site: required key is missing",
        "pointd.toml: store.collector_id: required key is missing",
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('id = "Centro 01"', "store.id: must match the pattern [a-z0-9-]{1,20}"),
        ('id = "a23456789012345678901"', "store.id: must match the pattern [a-z0-9-]{1,20}"),
        ('site = "MLC"', 'store.site: must be one of "MLA", "MLB", "MLM"'),
        ("collector_id = 0", "store.collector_id: must be at least 1 (got 0)"),
        ('language = "de"', 'store.language: must be one of "es", "pt", "en"'),
    ],
)
def test_store_values_are_checked(line: str, problem: str) -> None:
    text = '[store]\nid = "s"\nsite = "MLA"\ncollector_id = 1\n'
    key = line.split(" =", maxsplit=1)[0]
    text = re.sub(rf"^{key} = .*$", line, text, flags=re.M) if key in text else text + line + "\n"
    assert daemon_problems(text + LANE) == (f"pointd.toml: {problem}",)


def test_a_daemon_needs_at_least_one_lane() -> None:
    assert daemon_problems(STORE) == (
        "pointd.toml: lanes: at least one [[lanes]] table is required",
    )


def test_lane_numbers_registers_and_terminals_must_be_unique() -> None:
    lanes = (
        '[[lanes]]\nnumber = 1\nregister = "/dev/ttyUSB0"\nterminal = "T1"\n'
        '[[lanes]]\nnumber = 2\nregister = "socket://10.0.0.5:4001"\nterminal_serial = "S1"\n'
        '[[lanes]]\nnumber = 1\nregister = "/dev/ttyUSB0"\nterminal = "T1"\n'
        'terminal_serial = "S1"\n'
    )
    assert daemon_problems(STORE + lanes) == (
        "pointd.toml: lanes[2].number: duplicate number (also in lanes[0])",
        "pointd.toml: lanes[2].register: duplicate register (also in lanes[0])",
        "pointd.toml: lanes[2].terminal: duplicate terminal (also in lanes[0])",
        "pointd.toml: lanes[2].terminal_serial: duplicate terminal_serial (also in lanes[1])",
    )


@pytest.mark.parametrize(
    ("register", "ok"),
    [
        ("/dev/pointd/register", True),
        ("socket://192.168.1.20:4001", True),
        ("socket://register.local:9100", True),
        ("COM1", False),
        ("socket://host", False),
        ("ttyUSB0", False),
        ("/dev/tty USB0", False),
    ],
)
def test_a_register_is_a_device_path_or_a_socket_url(register: str, ok: bool) -> None:
    text = f'{STORE}[[lanes]]\nnumber = 1\nregister = "{register}"\n'
    if ok:
        assert daemon(text).lanes[0].register == register
    else:
        (problem,) = daemon_problems(text)
        assert problem.startswith("pointd.toml: lanes[0].register: must match the pattern")


@pytest.mark.parametrize("baud", BAUD_RATES)
def test_every_listed_baud_rate_is_accepted(baud: int) -> None:
    assert daemon(f"{STORE}{LANE}baud = {baud}\n").lanes[0].baud == baud


@pytest.mark.parametrize("baud", [0, 300, 9601, 230400])
def test_other_baud_rates_are_refused(baud: int) -> None:
    assert daemon_problems(f"{STORE}{LANE}baud = {baud}\n") == (
        "pointd.toml: lanes[0].baud: must be one of "
        "1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200",
    )


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://api.mercadopago.com", True),
        ("http://127.0.0.1:8081", True),
        ("http://localhost:9000/mp", True),
        ("http://[::1]:9000", True),
        ("http://api.mercadopago.com", False),
        ("http://10.0.0.2:8080", False),
    ],
)
def test_plain_http_is_only_for_loopback(url: str, ok: bool) -> None:
    text = f'{STORE}{LANE}[cloud]\nbase_url = "{url}"\n[relay]\nurl = "{url}"\n'
    if ok:
        cfg = daemon(text)
        assert (cfg.cloud.base_url, cfg.relay.url) == (url, url)
    else:
        problems = daemon_problems(text)
        assert [p.split(": ")[1] for p in problems] == ["cloud.base_url", "relay.url"]
        assert all("must use https://" in p for p in problems)


def test_the_relay_silence_alarm_must_exceed_the_canary_interval() -> None:
    assert daemon_problems(
        f"{STORE}{LANE}[relay]\ncanary_interval = 120\nsilence_alarm = 120\n"
    ) == ("pointd.toml: relay.silence_alarm: must be greater than canary_interval",)


def test_the_verification_backoff_must_be_able_to_grow() -> None:
    text = f"{STORE}{LANE}[timers]\nverify_initial_backoff = 10\nverify_max_backoff = 5\n"
    assert daemon_problems(text) == (
        "pointd.toml: timers.verify_max_backoff: must be at least verify_initial_backoff",
    )


def test_verification_cannot_poll_faster_than_mercado_pago_allows() -> None:
    assert daemon_problems(f"{STORE}{LANE}[timers]\nverify_initial_backoff = 0.5\n") == (
        "pointd.toml: timers.verify_initial_backoff: must be at least 1 (got 0.5)",
    )


def test_the_access_token_is_not_accepted_in_the_file() -> None:
    (problem,) = daemon_problems(f'{STORE}{LANE}[cloud]\naccess_token = "APP_USR-123-abc"\n')
    assert problem.startswith("pointd.toml: cloud.access_token: secrets never go in the")
    assert "cloud.access_token_file" in problem
    assert "APP_USR" not in problem


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def test_schema_readers_use_the_documented_credential_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [
        "mp_access_token",
        "mp_webhook_secret",
        "relay_store_token",
        "relay_postgres_dsn",
        "relay_admin_token",
    ]
    for name in names:
        private_file(tmp_path / name, f"value-of-{name}\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = daemon(STORE + LANE)
    relay = parse_config("", RelayConfig)
    webhook, admin, relay_webhook = (
        cfg.cloud.read_webhook_secret(),
        relay.admin.read_admin_token(),
        relay.intake.read_webhook_secret(),
    )
    assert webhook is not None
    assert admin is not None
    assert relay_webhook is not None
    assert [
        cfg.cloud.read_access_token().reveal(),
        webhook.reveal(),
        cfg.relay.read_store_token().reveal(),
        relay.storage.read_postgres_dsn().reveal(),
        admin.reveal(),
        relay_webhook.reveal(),
    ] == [f"value-of-{name}" for name in names] + ["value-of-mp_webhook_secret"]


def test_schema_readers_fall_back_to_the_configured_files(tmp_path: Path) -> None:
    token = private_file(tmp_path / "token", "file-token\n")
    cfg = daemon(f'{STORE}{LANE}[cloud]\naccess_token_file = "{token}"\n')
    assert cfg.cloud.read_access_token().reveal() == "file-token"
    assert cfg.cloud.read_webhook_secret() is None


def test_the_daemon_config_can_be_built_in_code_for_tests() -> None:
    cfg = DaemonConfig(
        store=StoreConfig(id="s1", site="MLM", collector_id=5),
        cloud=CloudConfig(base_url="http://127.0.0.1:9999"),
        lanes=(LaneConfig(number=1, register="socket://127.0.0.1:5000"),),
    )
    assert cfg.store.currency == "MXN"
    assert cfg.timers.poll_fallback_after == 10.0


def test_relay_defaults_match_the_brief() -> None:
    cfg = parse_config("", RelayConfig)
    assert (cfg.server.host, cfg.server.port, cfg.server.public_url) == ("127.0.0.1", 8080, None)
    assert (cfg.intake.body_limit, cfg.intake.signature_required) == (262144, True)
    assert cfg.intake.ts_window == 600.0
    assert (cfg.storage.backend, cfg.storage.batch_max, cfg.storage.batch_wait) == (
        "sqlite",
        256,
        0.0,
    )
    assert (cfg.delivery.retention_days, cfg.delivery.long_poll_timeout) == (7, 25.0)
    assert cfg.delivery.canary_window == 300.0
    assert cfg.stores == ()


def test_relay_ts_window_zero_disables_and_negative_is_refused() -> None:
    assert parse_config("[intake]\nts_window = 0\n", RelayConfig).intake.ts_window == 0.0
    assert relay_problems("[intake]\nts_window = -1\n") == (
        "relay.toml: intake.ts_window: must be at least 0 (got -1)",
    )


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_relay_port_range(port: int) -> None:
    (problem,) = relay_problems(f"[server]\nport = {port}\n")
    assert problem.startswith("relay.toml: server.port: must be")


def test_relay_stores_hold_a_hash_not_a_token() -> None:
    digest = hashlib.sha256(b"store-token").hexdigest()
    cfg = parse_config(f'[[stores]]\nid = "s1"\ntoken_sha256 = "{digest}"\n', RelayConfig)
    assert cfg.stores[0].token_sha256 == digest
    (problem,) = relay_problems('[[stores]]\nid = "s1"\ntoken_sha256 = "store-token"\n')
    assert problem == "relay.toml: stores[0].token_sha256: must match the pattern [0-9a-f]{64}"
    (problem,) = relay_problems(
        f'[[stores]]\nid = "s1"\ntoken = "store-token"\ntoken_sha256 = "{digest}"\n'
    )
    assert problem.startswith("relay.toml: stores[0].token: secrets never go in the")


def test_relay_store_ids_and_token_hashes_are_unique() -> None:
    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    text = (
        f'[[stores]]\nid = "s1"\ntoken_sha256 = "{a}"\n'
        f'[[stores]]\nid = "s1"\ntoken_sha256 = "{b}"\n'
        f'[[stores]]\nid = "s2"\ntoken_sha256 = "{a}"\n'
    )
    assert relay_problems(text) == (
        "relay.toml: stores[1].id: duplicate id (also in stores[0])",
        "relay.toml: stores[2].token_sha256: duplicate token_sha256 (also in stores[0])",
    )


def test_relay_storage_backend_choices() -> None:
    assert parse_config('[storage]\nbackend = "postgres"\n', RelayConfig).storage.backend == (
        "postgres"
    )
    assert relay_problems('[storage]\nbackend = "mysql"\n') == (
        'relay.toml: storage.backend: must be one of "sqlite", "postgres"',
    )
