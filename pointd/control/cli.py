"""pointctl: the technician's command; each subcommand is one control-socket method.

Exit codes (also in docs/control-socket.md): 0 ok; 1 the daemon answered with an error, or
the answer was lost; 2 usage error; 3 cannot connect, or not allowed; 4 ``status`` shows a
problem (a held sale, a lane down, the relay disconnected), for monitoring scripts;
130 interrupted (except ``watch``, where Ctrl-C is the normal way out and exits 0).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import json
import os
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, BinaryIO, TextIO

from pointd.control import views
from pointd.control.client import ControlClient
from pointd.control.errors import (
    AccessDenied,
    ConnectFailed,
    OutcomeUnknown,
    ProtocolError,
    RemoteError,
)

# pointctl imports nothing beyond the standard library and pointd's wire modules, so it starts
# fast and runs from any Python 3.11 that can read the source tree.
from pointd.control.protocol import DEFAULT_SOCKET_PATH, ErrorCode

EXIT_OK = 0
EXIT_DAEMON_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_PROBLEM = 4
EXIT_INTERRUPTED = 130

SOCKET_ENV = "POINTD_CONTROL_SOCKET"
CLEAR_SCREEN = "\x1b[H\x1b[2J"

Renderer = Callable[[Any], str]

# subcommand -> (method, renderer); params come from _params().
_COMMANDS: dict[str, tuple[str, Renderer]] = {
    "status": ("status", views.render_status),
    "sales": ("sales", views.render_sales),
    "sale": ("sale", views.render_sale),
    "holds": ("holds", views.render_holds),
    "terminals": ("terminals", views.render_terminals),
    "relay": ("relay", views.render_relay),
    "verify": ("verify", views.render_mapping),
    "override": ("override", views.render_mapping),
    "cancel": ("cancel", views.render_mapping),
    "reconcile": ("reconcile", views.render_reconcile),
    "refund": ("refund", views.render_mapping),
    "methods": ("methods", views.render_methods),
    "connections": ("connections", views.render_connections),
}
# pointctl watch keeps this many recent events under the status it redraws.
WATCH_EVENTS_SHOWN = 8


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    # --json and --socket are accepted before or after the command (pointctl status --json):
    # each subcommand repeats them with a suppressed default, so only a given one counts.
    anywhere = argparse.ArgumentParser(add_help=False)
    anywhere.add_argument("--socket", default=argparse.SUPPRESS,
                          help="control socket path")
    anywhere.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                          help="print the raw JSON result")
    parser = argparse.ArgumentParser(
        prog="pointctl",
        description="Inspect and operate the pointd checkout daemon over its control socket.",
        epilog="exit codes: 0 ok, 1 daemon error, 2 usage, 3 cannot connect or not allowed, "
        "4 status shows a problem",
    )
    parser.add_argument(
        "--socket",
        default=os.environ.get(SOCKET_ENV, DEFAULT_SOCKET_PATH),
        help=f"control socket path (default: ${SOCKET_ENV} or {DEFAULT_SOCKET_PATH})",
    )
    parser.add_argument("--json", action="store_true", help="print raw JSON results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[anywhere])

    command("status", "daemon, lanes and problems (exit 4 on a problem)")
    sales = command("sales", "recent sales")
    sales.add_argument("--lane")
    sales.add_argument("--state")
    sales.add_argument("--since", type=_iso_time, help="ISO-8601 time, e.g. 2026-11-22T08:00")
    sales.add_argument("--limit", type=int)
    sale = command("sale", "one sale and its timeline")
    sale.add_argument("sale_id", metavar="SALE")
    command("holds", "held and escalated sales, with the register's receipt")
    command("terminals", "terminals, their presence and what the last refresh saw change")
    command("relay", "relay connection")
    verify = command("verify", "re-check a payment with Mercado Pago now")
    verify.add_argument("payment_id", metavar="PAYMENT")
    override = command("override", "supervisor decision on a held sale")
    override.add_argument("sale_id", metavar="SALE", nargs="?",
                          help="the sale id (or give --receipt)")
    override.add_argument("--receipt", metavar="CORRELATION_ID",
                          help="the register's correlation id instead of the sale id")
    override.add_argument("--lane", help="with --receipt: the lane, when two lanes used it")
    decision = override.add_mutually_exclusive_group(required=True)
    decision.add_argument("--release", dest="decision", action="store_const", const="release")
    decision.add_argument("--void", dest="decision", action="store_const", const="void")
    override.add_argument("--reason", required=True, help="why (journaled)")
    cancel = command("cancel", "cancel a sale while its intent is open")
    cancel.add_argument("sale_id", metavar="SALE", nargs="?")
    cancel.add_argument("--lane", help="cancel this lane's current sale instead")
    command("reconcile", "reconcile unfinished sales against the API now")
    refund = command("refund", "refund an approved sale")
    refund.add_argument("sale_id", metavar="SALE")
    refund.add_argument("--amount", help="partial amount in currency units, e.g. 12.50")
    bundle = command("bundle", "write a support bundle (secrets removed)")
    bundle.add_argument("-o", "--output", required=True, metavar="FILE")
    backup = command("backup", "copy the journal, consistent while the daemon runs")
    backup.add_argument("-o", "--output", required=True, metavar="FILE")
    integrator = command("integrator", "Mercado Pago's device-event channels (e-mail)")
    channel = integrator.add_mutually_exclusive_group()
    channel.add_argument("--enable-email", dest="email", action="store_const", const=True,
                         help="e-mail device events (starts about 30 minutes later)")
    channel.add_argument("--disable-email", dest="email", action="store_const", const=False,
                         help="stop e-mailing device events")
    command("watch", "live status, redrawn on every change (Ctrl-C exits)")
    command("methods", "every method the daemon serves")
    command("connections", "open control connections and their last requests")
    return parser


def _iso_time(text: str) -> str:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    return text


def _amount_cents(text: str) -> int:
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise _UsageError(f"--amount {text!r} is not a number") from None
    cents = amount * 100
    if not amount.is_finite() or cents != cents.to_integral_value() or cents <= 0:
        raise _UsageError(f"--amount {text!r} must be positive with at most two decimals")
    return int(cents)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    command = args.command
    if command == "sales":
        return {
            key: value
            for key in ("lane", "state", "since", "limit")
            if (value := getattr(args, key)) is not None
        }
    if command == "override":
        return _override_params(args)
    if command in ("sale", "refund"):
        params: dict[str, Any] = {"sale_id": args.sale_id}
        if command == "refund" and args.amount is not None:
            params["amount_cents"] = _amount_cents(args.amount)
        return params
    if command == "integrator":
        return {} if args.email is None else {"email": args.email}
    if command == "verify":
        return {"payment_id": args.payment_id}
    if command == "cancel":
        if (args.sale_id is None) == (args.lane is None):
            raise _UsageError("cancel needs exactly one of SALE or --lane")
        return {"sale_id": args.sale_id} if args.sale_id else {"lane": args.lane}
    return {}


def _override_params(args: argparse.Namespace) -> dict[str, Any]:
    if (args.sale_id is None) == (args.receipt is None):
        raise _UsageError("override needs exactly one of SALE or --receipt")
    if args.lane is not None and args.receipt is None:
        raise _UsageError("--lane goes with --receipt")
    params: dict[str, Any] = {"decision": args.decision, "reason": args.reason}
    if args.sale_id is not None:
        return params | {"sale_id": args.sale_id}
    params["correlation_id"] = args.receipt
    return params | ({"lane": args.lane} if args.lane is not None else {})


async def _run(args: argparse.Namespace, params: dict[str, Any], out: TextIO) -> int:
    client = await ControlClient.connect(args.socket)
    async with client:
        if args.command == "watch":
            return await _watch(client, out, as_json=args.json)
        if args.command == "bundle":
            return await _bundle(client, args.output, out, as_json=args.json)
        if args.command == "backup":
            return await _backup(client, args.output, out, as_json=args.json)
        if args.command == "integrator":
            method = "integrator" if not params else "device_events"
            result = await client.call(method, params)
            out.write((json.dumps(result, indent=2) if args.json
                       else views.render_mapping(result)) + "\n")
            return EXIT_OK
        method, render = _COMMANDS[args.command]
        result = await client.call(method, params)
        out.write((json.dumps(result, indent=2) if args.json else render(result)) + "\n")
        if args.command == "status" and isinstance(result, dict):
            return EXIT_PROBLEM if views.status_problems(result) else EXIT_OK
        return EXIT_OK


def _private_output(output: str) -> int:
    # Opened first so a bad path fails before the daemon does any work; what pointctl writes
    # describes the store (a bundle, every sale of a journal): private to the user.
    try:
        return os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise _UsageError(f"cannot write {output}: {exc.strerror}") from None


async def _bundle(client: ControlClient, output: str, out: TextIO, *, as_json: bool) -> int:
    with os.fdopen(_private_output(output), "wb") as file:
        try:
            content, result = await _fetch_bundle(client)
        except BaseException:
            os.unlink(output)
            raise
        file.write(content)
    summary = {k: v for k, v in result.items() if k != "content_b64"} | {"written_to": output}
    out.write((json.dumps(summary, indent=2) if as_json else views.key_values(summary)) + "\n")
    return EXIT_OK


async def _fetch_bundle(client: ControlClient) -> tuple[bytes, dict[str, Any]]:
    result = await client.call("bundle")
    if not isinstance(result, dict):
        raise ProtocolError("the bundle answer is not an object")
    try:
        content = base64.b64decode(result["content_b64"], validate=True)
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ProtocolError(f"the bundle answer has no valid content: {exc}") from None
    if hashlib.sha256(content).hexdigest() != result.get("sha256"):
        raise ProtocolError("the bundle's sha256 does not match its content")
    return content, result


async def _backup(client: ControlClient, output: str, out: TextIO, *, as_json: bool) -> int:
    with os.fdopen(_private_output(output), "wb") as file:
        try:
            result = await client.call("backup")
            digest = await _fetch_backup(client, result, file)
        except BaseException:
            os.unlink(output)
            raise
    if digest != result.get("sha256"):
        os.unlink(output)
        raise ProtocolError("the backup's sha256 does not match what the daemon copied")
    problem = _journal_problem(output)
    if problem is not None:
        os.unlink(output)
        raise ProtocolError(f"the backup fails its check: {problem}")
    summary = {k: v for k, v in result.items() if k != "chunk_bytes"} | {
        "written_to": output, "check": "ok (sqlite integrity_check)",
        "restore": "docs/operations.md, Back up and restore the journal",
    }
    out.write((json.dumps(summary, indent=2) if as_json else views.key_values(summary)) + "\n")
    return EXIT_OK


async def _fetch_backup(client: ControlClient, result: Any, file: BinaryIO) -> str:
    if not isinstance(result, dict) or not isinstance(result.get("name"), str):
        raise ProtocolError("the backup answer names no backup")
    digest = hashlib.sha256()
    offset = 0
    while True:
        chunk = await client.call("backup_chunk", {"name": result["name"], "offset": offset})
        try:
            data = base64.b64decode(chunk["data_b64"], validate=True)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ProtocolError(f"a backup chunk has no valid content: {exc}") from None
        file.write(data)
        digest.update(data)
        offset += len(data)
        if chunk.get("eof") or not data:
            return digest.hexdigest()


def _journal_problem(path: str) -> str | None:
    """Why the file is not a sound SQLite database, or None (pointctl's own second check)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = [str(row[0]) for row in db.execute("PRAGMA integrity_check")]
            db.execute("SELECT COUNT(*) FROM sales").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None if rows == ["ok"] else "; ".join(rows[:3])


async def _watch(client: ControlClient, out: TextIO, *, as_json: bool) -> int:
    await client.call("subscribe")
    if as_json:
        # The state first, then every change after it: a consumer never starts blind, and
        # the first line says the subscription is live.
        _json_line(out, "status", await client.call("status"))
        async for event in client.events():
            _json_line(out, event.topic, event.data)
        raise OutcomeUnknown("the daemon closed the connection")
    recent: deque[str] = deque(maxlen=WATCH_EVENTS_SHOWN)
    while True:
        status = await client.call("status")
        shown = "\n".join(recent) if recent else "  (none yet)"
        out.write(
            f"{CLEAR_SCREEN}{views.render_status(status)}\n\n"
            f"recent events (UTC):\n{shown}\n\n(Ctrl-C to exit)\n"
        )
        out.flush()
        async for event in client.events():
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for each in (event, *client.drain_events()):
                if each.topic != "status":
                    recent.append(f"  {stamp}  {views.render_event(each.topic, each.data)}")
            break
        else:
            raise OutcomeUnknown("the daemon closed the connection")


def _json_line(out: TextIO, topic: str, data: Any) -> None:
    out.write(json.dumps({"event": topic, "data": data}) + "\n")
    out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run pointctl with ``argv`` (default: the process arguments); return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        params = _params(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        return _fail(str(exc), EXIT_USAGE)
    try:
        return asyncio.run(_run(args, params, sys.stdout))
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "watch" else EXIT_INTERRUPTED
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (ConnectFailed, AccessDenied) as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except RemoteError as exc:
        code = EXIT_UNREACHABLE if exc.code == ErrorCode.FORBIDDEN else EXIT_DAEMON_ERROR
        detail = "" if exc.performed else " (nothing was done)"
        return _fail(f"{exc.code}: {exc.message}{detail}", code)
    except (OutcomeUnknown, ProtocolError) as exc:
        return _fail(str(exc), EXIT_DAEMON_ERROR)


def _fail(message: str, code: int) -> int:
    print(f"pointctl: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
