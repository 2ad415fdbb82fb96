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
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO

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
    "relay": ("relay", views.render_mapping),
    "verify": ("verify", views.render_mapping),
    "override": ("override", views.render_mapping),
    "cancel": ("cancel", views.render_mapping),
    "reconcile": ("reconcile", views.render_mapping),
    "refund": ("refund", views.render_mapping),
    "methods": ("methods", views.render_methods),
    "connections": ("connections", lambda result: json.dumps(result, indent=2)),
}


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
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

    sub.add_parser("status", help="daemon, lanes and problems (exit 4 on a problem)")
    sales = sub.add_parser("sales", help="recent sales")
    sales.add_argument("--lane")
    sales.add_argument("--state")
    sales.add_argument("--since", type=_iso_time, help="ISO-8601 time, e.g. 2026-11-22T08:00")
    sales.add_argument("--limit", type=int)
    sale = sub.add_parser("sale", help="one sale and its timeline")
    sale.add_argument("sale_id", metavar="SALE")
    sub.add_parser("holds", help="held and escalated sales")
    sub.add_parser("terminals", help="terminals and their presence")
    sub.add_parser("relay", help="relay connection")
    verify = sub.add_parser("verify", help="re-check a payment with Mercado Pago now")
    verify.add_argument("payment_id", metavar="PAYMENT")
    override = sub.add_parser("override", help="supervisor decision on a held sale")
    override.add_argument("sale_id", metavar="SALE")
    decision = override.add_mutually_exclusive_group(required=True)
    decision.add_argument("--release", dest="decision", action="store_const", const="release")
    decision.add_argument("--void", dest="decision", action="store_const", const="void")
    override.add_argument("--reason", required=True, help="why (journaled)")
    cancel = sub.add_parser("cancel", help="cancel a sale while its intent is open")
    cancel.add_argument("sale_id", metavar="SALE", nargs="?")
    cancel.add_argument("--lane", help="cancel this lane's current sale instead")
    sub.add_parser("reconcile", help="reconcile unfinished sales against the API now")
    refund = sub.add_parser("refund", help="refund an approved sale")
    refund.add_argument("sale_id", metavar="SALE")
    refund.add_argument("--amount", help="partial amount in currency units, e.g. 12.50")
    bundle = sub.add_parser("bundle", help="write a support bundle (secrets removed)")
    bundle.add_argument("-o", "--output", required=True, metavar="FILE")
    sub.add_parser("watch", help="live status, redrawn on every change (Ctrl-C exits)")
    sub.add_parser("methods", help="every method the daemon serves")
    sub.add_parser("connections", help="open control connections and their last requests")
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
    if command in ("sale", "override", "refund"):
        params: dict[str, Any] = {"sale_id": args.sale_id}
        if command == "override":
            params |= {"decision": args.decision, "reason": args.reason}
        if command == "refund" and args.amount is not None:
            params["amount_cents"] = _amount_cents(args.amount)
        return params
    if command == "verify":
        return {"payment_id": args.payment_id}
    if command == "cancel":
        if (args.sale_id is None) == (args.lane is None):
            raise _UsageError("cancel needs exactly one of SALE or --lane")
        return {"sale_id": args.sale_id} if args.sale_id else {"lane": args.lane}
    return {}


async def _run(args: argparse.Namespace, params: dict[str, Any], out: TextIO) -> int:
    client = await ControlClient.connect(args.socket)
    async with client:
        if args.command == "watch":
            return await _watch(client, out, as_json=args.json)
        if args.command == "bundle":
            return await _bundle(client, args.output, out, as_json=args.json)
        method, render = _COMMANDS[args.command]
        result = await client.call(method, params)
        out.write((json.dumps(result, indent=2) if args.json else render(result)) + "\n")
        if args.command == "status" and isinstance(result, dict):
            return EXIT_PROBLEM if views.status_problems(result) else EXIT_OK
        return EXIT_OK


async def _bundle(client: ControlClient, output: str, out: TextIO, *, as_json: bool) -> int:
    # Open the output first so a bad path fails before the daemon does any work. The bundle
    # is redacted, but it still describes the store: keep it private to the user.
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise _UsageError(f"cannot write {output}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as file:
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


async def _watch(client: ControlClient, out: TextIO, *, as_json: bool) -> int:
    await client.call("subscribe")
    if as_json:
        async for event in client.events():
            out.write(json.dumps({"event": event.topic, "data": event.data}) + "\n")
            out.flush()
        raise OutcomeUnknown("the daemon closed the connection")
    last = "none yet"
    while True:
        status = await client.call("status")
        out.write(
            f"{CLEAR_SCREEN}{views.render_status(status)}\n\n"
            f"last event: {last}   (Ctrl-C to exit)\n"
        )
        out.flush()
        async for event in client.events():
            burst = [event, *client.drain_events()]
            topics = ", ".join(dict.fromkeys(e.topic for e in burst))
            last = f"{topics} at {time.strftime('%H:%M:%S')}"
            break
        else:
            raise OutcomeUnknown("the daemon closed the connection")


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
