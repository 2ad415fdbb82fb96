"""``pointd sim register``: run the cash register emulator on a pty or a TCP port."""

from __future__ import annotations

import argparse
import asyncio
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pointd.link.arq import ACK_TIMEOUT, KEEPALIVE_INTERVAL, LinkTimers
from pointd.register import messages as msg
from pointd.sim.register.emulator import (
    SALE_RESULT_TIMEOUT,
    EmulatorError,
    RegisterEmulator,
)
from pointd.sim.register.script import ScriptError, load_script, run_script

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2

INTERACTIVE_HELP = """\
commands:
  <amount>        start a sale: 1500 is 1500 cents; 15.00 is 15 currency units
  status <id>     ask what happened to a sale
  cancel <id>     ask to cancel a sale
  check <id>      ask whether the goods may leave
  done <id>       report that the goods left
  refund <id> [amount]  refund a paid sale (all that is left without an amount)
  quit"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pointd sim register",
        description="Emulate a cash register speaking the pointd register protocol.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="create a pty; print its device path")
    where.add_argument(
        "--listen",
        metavar="PORT",
        type=int,
        help="listen on 127.0.0.1:PORT; the daemon connects with socket://127.0.0.1:PORT",
    )
    parser.add_argument(
        "--link",
        metavar="PATH",
        type=Path,
        help="with --pty: keep a stable symlink to the pty here, as udev would",
    )
    parser.add_argument(
        "--script",
        metavar="FILE",
        type=Path,
        help="run the sales in FILE (TOML or JSON) and exit 0 if all matched",
    )
    parser.add_argument(
        "--sale-timeout",
        type=float,
        default=SALE_RESULT_TIMEOUT,
        help="seconds to wait for one sale's RESULT (default %(default)s)",
    )
    parser.add_argument(
        "--ack-timeout",
        type=float,
        default=ACK_TIMEOUT,
        help="link ACK timer in seconds (default %(default)s)",
    )
    return parser


def _amount_cents(text: str) -> int | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    cents = value * 100 if "." in text else value
    if cents != cents.to_integral_value() or not 1 <= cents <= msg.MAX_AMOUNT_CENTS:
        return None
    return int(cents)


def _print_display(display: msg.Display) -> None:
    print(f"[display {display.severity.value}] " + " | ".join(display.lines), flush=True)


async def _interactive(emulator: RegisterEmulator, sale_within: float) -> int:
    print(INTERACTIVE_HELP, flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sales: set[asyncio.Task[None]] = set()

    async def sale(cents: int) -> None:
        cid = emulator.new_correlation_id()
        print(f"sale {cid}: {cents} cents", flush=True)
        try:
            outcome = await emulator.sale(cents, cid, within=sale_within)
        except EmulatorError as exc:
            print(f"sale {cid}: {exc}", flush=True)
            return
        print(
            f"sale {cid}: {outcome.outcome.value} payment={outcome.payment_id} "
            f"card={outcome.card_last4}",
            flush=True,
        )

    async def refund(argument: str) -> None:
        sale_id, _, amount = argument.partition(" ")
        cents = _amount_cents(amount) if amount else None
        if amount and cents is None:
            print(f"refund: {amount!r} is not an amount", flush=True)
            return
        cid = emulator.new_correlation_id()
        print(f"refund {cid} of sale {sale_id}: {cents or 'all that is left'}", flush=True)
        try:
            result = await emulator.refund(sale_id, cents, cid, within=sale_within)
        except (EmulatorError, msg.MessageError) as exc:
            print(f"refund {cid}: {exc}", flush=True)
            return
        print(f"refund {cid}: {result.outcome.value} amount={result.amount_cents} "
              f"reason={result.reason}", flush=True)

    while line := (await reader.readline()).decode("utf-8", "replace").strip():
        word, _, argument = line.partition(" ")
        try:
            if word == "quit":
                break
            if (cents := _amount_cents(word)) is not None and not argument:
                task = asyncio.create_task(sale(cents))
                sales.add(task)
                task.add_done_callback(sales.discard)
            elif word == "status" and argument:
                print(await emulator.status(argument), flush=True)
            elif word == "check" and argument:
                print(await emulator.handover_check(argument), flush=True)
            elif word == "cancel" and argument:
                await emulator.cancel(argument)
            elif word == "done" and argument:
                if argument in emulator.withdrawn or argument in emulator.held:
                    print(f"not handing over {argument}: the daemon withdrew or holds its "
                          "approval", flush=True)
                else:
                    await emulator.handover_done(argument)
            elif word == "refund" and argument:
                task = asyncio.create_task(refund(argument))
                sales.add(task)
                task.add_done_callback(sales.discard)
            else:
                print(f"? {line!r}\n{INTERACTIVE_HELP}", flush=True)
        except (EmulatorError, msg.MessageError, OSError) as exc:
            print(f"error: {exc}", flush=True)
    for task in sales:
        task.cancel()
    return EXIT_OK


async def _run(args: argparse.Namespace) -> int:
    sales = load_script(args.script) if args.script else None
    timers = LinkTimers(ack_timeout=args.ack_timeout, keepalive_interval=KEEPALIVE_INTERVAL)
    if args.pty:
        emulator = await RegisterEmulator.open_pty(args.link, timers=timers)
    else:
        emulator = await RegisterEmulator.open_socket(args.listen, timers=timers)
    emulator.on_display(_print_display)
    print(f"register device: {emulator.device_path}", flush=True)
    try:
        if sales is None:
            return await _interactive(emulator, args.sale_timeout)
        results = await run_script(emulator, sales, args.sale_timeout)
        for number, result in enumerate(results, start=1):
            got = result.outcome.outcome.value if result.outcome else result.problem
            mark = "ok" if result.matched else "MISMATCH"
            handed = ", goods handed over" if result.handed_over else ""
            print(
                f"sale #{number} {result.sale.amount_cents} cents: expected "
                f"{result.sale.expect.value}, got {got}{handed}: {mark}",
                flush=True,
            )
        return EXIT_OK if all(r.matched for r in results) else EXIT_MISMATCH
    finally:
        await emulator.close()


def main(argv: list[str]) -> int:
    """Entry point for ``pointd sim register``; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.link is not None and not args.pty:
        print("pointd sim register: --link needs --pty", file=sys.stderr)
        return EXIT_USAGE
    if args.ack_timeout <= 0 or args.sale_timeout <= 0:
        print("pointd sim register: timeouts must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_run(args))
    except ScriptError as exc:
        print(f"pointd sim register: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"pointd sim register: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
