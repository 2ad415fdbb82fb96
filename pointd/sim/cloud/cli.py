"""``pointd sim cloud``: run the Mercado Pago cloud simulator until Ctrl-C.

The access token and webhook secret live in two files (created with fresh random values
and mode 0600 when missing), whose paths are printed at start, so that the daemon and
relay under test read the same secrets the simulator uses and none is ever on a command
line or in a TOML file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
from dataclasses import replace
from pathlib import Path

from pointd.cloud.sites import Site
from pointd.sim.cloud.config import (
    SimConfig,
    SimConfigError,
    load_config,
    parse_device_spec,
)
from pointd.sim.cloud.server import CloudSimulator

DEFAULT_PORT = 8711
DEFAULT_SECRETS_DIR = Path(".pointd-sim")
SECRET_FILE_MODE = 0o600
EXIT_CONFIG_ERROR = 2
EXIT_RUNTIME_ERROR = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pointd sim cloud",
        description="Run the Mercado Pago cloud simulator (Point API, payments, webhooks).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--config", type=Path, help="simulator TOML file (docs/simulator.md)")
    parser.add_argument(
        "--devices",
        nargs="+",
        metavar="SPEC",
        help="devices as ID[,store=S][,pos=N][,external_pos=X][,mode=PDV|STANDALONE]",
    )
    parser.add_argument("--webhook-url", help="where to POST notifications")
    parser.add_argument("--time-scale", type=float, help="simulated seconds per real second")
    parser.add_argument("--site", choices=[s.value for s in Site], help="MLA, MLB or MLM")
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        default=DEFAULT_SECRETS_DIR,
        help="folder holding access_token and webhook_secret (created if missing)",
    )
    return parser


def read_or_create_secret(path: Path, *, prefix: str = "") -> str:
    """The secret in ``path``; a new random one written with mode 0600 if it is missing."""
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if not value:
            raise SimConfigError(f"{path} is empty")
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = prefix + secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


def build_config(args: argparse.Namespace) -> tuple[SimConfig, Path, Path]:
    """The configuration the arguments describe, and the two secret files' paths."""
    token_file = args.secrets_dir / "access_token"
    secret_file = args.secrets_dir / "webhook_secret"
    # Mercado Pago's test credentials start with TEST-; keeping that makes them recognisable.
    token = read_or_create_secret(token_file, prefix="TEST-")
    secret = read_or_create_secret(secret_file)
    if args.config is not None:
        config = load_config(args.config, access_token=token, webhook_secret=secret)
    else:
        config = SimConfig(access_token=token, webhook_secret=secret)
    changes: dict[str, object] = {}
    if args.devices:
        changes["devices"] = tuple(parse_device_spec(spec) for spec in args.devices)
    if args.webhook_url is not None:
        changes["webhook_url"] = args.webhook_url
    if args.time_scale is not None:
        changes["time_scale"] = args.time_scale
    if args.site is not None:
        changes["site"] = Site(args.site)
    try:
        config = replace(config, **changes)  # type: ignore[arg-type]
    except TypeError as exc:
        raise SimConfigError(str(exc)) from exc
    return config, token_file.resolve(), secret_file.resolve()


async def _serve(
    config: SimConfig, host: str, port: int, token_file: Path, secret_file: Path
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with CloudSimulator(config, host=host, port=port) as sim:
        print(f"pointd sim cloud: listening on {sim.base_url}", flush=True)
        print(f"access token file: {token_file}", flush=True)
        print(f"webhook secret file: {secret_file}", flush=True)
        print(f"devices: {', '.join(d.id for d in config.devices)}", flush=True)
        print(f"webhooks: {config.webhook_url or 'off'}; Ctrl-C stops", flush=True)
        await stop.wait()


def main(argv: list[str]) -> int:
    """Run the simulator; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        config, token_file, secret_file = build_config(args)
    except (SimConfigError, OSError) as exc:
        print(f"pointd sim cloud: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        asyncio.run(_serve(config, args.host, args.port, token_file, secret_file))
    except OSError as exc:
        print(f"pointd sim cloud: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    return 0
