"""``pointd demo``: the whole product on embedded defaults, with no hardware and no internet.

It starts, in one process and one event loop, a store on the rig (``pointd.rig``): the
Mercado Pago cloud simulator, the relay on SQLite (the simulator's webhooks go through it),
the real daemon (the same ``build`` and ``run`` as ``pointd run``) with a simulated USB bus
carrying the terminals, and one register emulator per lane on a real pty. Then it plays a
script of sales covering every outcome the cashier can meet, prints the register display
as it changes, and ends with a table. The exit code is 0 only if every sale ended as expected.

``--interactive`` skips the script: type an amount in cents and watch the display.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import grp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx

from pointd.cloud.client import PointApiClient
from pointd.cloud.sites import Site
from pointd.logging import configure_logging
from pointd.register import messages as msg
from pointd.rig.relay import InProcessRelay
from pointd.rig.store import RigLane, StoreRig, StoreSpec
from pointd.sim.cloud.config import Delays

STORE_ID = "demo-store"
SITE = Site.MLB
# Terminal serials match the descriptor dumps in hardware-fixtures/usb, so the daemon finds
# each lane's terminal by USB identity, as it would at a real checkout.
LANE_TERMINALS = {
    1: ("pax-a910", "1234345545", "PAX_A910__1234345545"),
    2: ("gertec-mp35p", "8701016695109435", "GERTEC_MP35P__8701016695109435"),
}
# Simulated seconds per terminal step; fast enough for a short demo, slow enough to see.
DEMO_DELAYS = Delays(take=0.4, read_card=0.4, authorise=0.3, close=0.2, settle=2.0)
# Longest a scripted sale may take before the demo calls it failed.
SALE_TIMEOUT = 60.0
# Mercado Pago abandons an untouched intent after 15 minutes; the demo jumps past it.
ABANDON_JUMP = 15 * 60 + 5
HANDOVER_TIMEOUT = 10.0


@dataclass(frozen=True)
class ScriptedSale:
    """One sale of the script and the outcome it must reach."""

    name: str
    lane: int
    amount_cents: int
    expected: str
    note: str


SCRIPT = (
    ScriptedSale("approved", 1, 1500, "approved", "card approved, payment verified"),
    ScriptedSale("finished, payment rejected", 1, 1200, "declined",
                 "intent FINISHED but /v1/payments says rejected"),
    ScriptedSale("canceled on the terminal", 1, 1501, "canceled", "customer pressed cancel"),
    ScriptedSale("terminal error", 1, 1300, "error", "intent ended in ERROR"),
    ScriptedSale("abandoned", 1, 1601, "abandoned", "nobody touched the terminal for 15 min"),
    ScriptedSale("confirmation required, later approved", 1, 1401, "approved",
                 "hold: do not hand over until the payment is verified"),
    ScriptedSale("confirmation required, later rejected", 1, 1402, "declined",
                 "hold, then declined by payment verification"),
    ScriptedSale("terminal busy", 2, 2500, "refused",
                 "another system left an intent queued on lane 2's terminal"),
    ScriptedSale("relay down (polling fallback)", 1, 1700, "approved",
                 "relay stopped: the daemon polls Mercado Pago instead"),
)


class Printer:
    """Prints what the cashier would see, lane by lane."""

    def __init__(self, out: TextIO, *, quiet: bool) -> None:
        self._out = out
        self._quiet = quiet
        self._last: dict[int, tuple[str, ...]] = {}

    def display(self, lane: int, display: msg.Display) -> None:
        lines = tuple(display.lines)
        if self._quiet or self._last.get(lane) == lines:
            return
        self._last[lane] = lines
        self.say(f"    lane {lane} display [{display.severity}] " + " | ".join(lines))

    def say(self, text: str) -> None:
        print(text, file=self._out, flush=True)


def demo_spec() -> StoreSpec:
    """The demo store: two lanes whose terminals sit on the simulated USB bus."""
    return StoreSpec(
        store_id=STORE_ID,
        site=SITE,
        language="en",
        lanes=tuple(
            RigLane(lane, device, usb=(model, serial), pin_by_serial=True)
            for lane, (model, serial, device) in LANE_TERMINALS.items()
        ),
        sim={"delays": DEMO_DELAYS, "time_scale": 1.0},
        daemon_config={
            "relay": {"canary_interval": 5.0},
            # pointctl from the demo's own user group may read; no pointd group needed.
            "control": {"read_group": grp.getgrgid(os.getgid()).gr_name},
            # Short timers so that the demo's fallbacks show within seconds.
            "timers": {"poll_fallback_after": 2.0, "verify_initial_backoff": 1.0,
                       "verify_max_backoff": 2.0, "confirmation_escalate_after": 30.0},
            "terminals": {"refresh_interval": 30.0, "usb_rescan_interval": 1.0},
            "logging": {"level": "warning"},
        },
    )


class DemoWorld:
    """The simulators, the relay and the daemon, started together on the rig."""

    def __init__(self, state_dir: Path, printer: Printer) -> None:
        self.state_dir = state_dir
        self.printer = printer
        self.rig = StoreRig(
            state_dir,
            demo_spec(),
            on_register=lambda lane, emulator: emulator.on_display(
                functools.partial(printer.display, lane)
            ),
        )

    @property
    def relay(self) -> InProcessRelay:
        """The relay on SQLite."""
        relay = self.rig.relay
        assert isinstance(relay, InProcessRelay)
        return relay

    async def __aenter__(self) -> DemoWorld:
        await self.rig.__aenter__()
        await self.rig.hello_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.rig.aclose()

    async def stop_relay(self) -> None:
        """Stop the relay as if its host went away."""
        await self.relay.stop()

    async def start_relay(self) -> None:
        """Start the relay again on the same port and file."""
        await self.relay.start()

    async def advance_cloud(self, seconds: float) -> None:
        """Move the simulated Mercado Pago clock forward."""
        await self.rig.sim.advance(seconds)


async def _run_sale(world: DemoWorld, sale: ScriptedSale) -> str:
    emulator = world.rig.registers[sale.lane]
    outcome_task = asyncio.ensure_future(emulator.sale(sale.amount_cents, within=SALE_TIMEOUT))
    if sale.expected == "abandoned":
        await asyncio.sleep(1.0)
        await world.advance_cloud(ABANDON_JUMP)
    outcome = await outcome_task
    got = outcome.outcome.value
    if got == "approved":
        check = await emulator.handover_check(outcome.correlation_id)
        if not check.allowed:
            return "approved but handover refused"
        await emulator.handover_done(outcome.correlation_id)
    return got


async def _queue_foreign_intent(world: DemoWorld, lane: int) -> Callable[[], Awaitable[None]]:
    """Another system queues an intent on the lane's terminal; returns how to clear it."""
    base_url, device = world.rig.sim.base_url, LANE_TERMINALS[lane][2]
    token = world.rig.secrets.access_token
    async with PointApiClient(base_url, token, site=SITE) as client:
        intent = await client.create_payment_intent(device, 999, "other-pos-1")

    async def clear() -> None:
        async with PointApiClient(base_url, token, site=SITE) as client:
            with contextlib.suppress(Exception):
                await client.cancel_payment_intent(device, intent.id)

    return clear


async def play_script(world: DemoWorld, printer: Printer) -> list[tuple[ScriptedSale, str]]:
    """Run every scripted sale in order; return each with the outcome it reached."""
    results: list[tuple[ScriptedSale, str]] = []
    for number, sale in enumerate(SCRIPT, 1):
        printer.say(f"\n[{number}/{len(SCRIPT)}] {sale.name}: lane {sale.lane}, "
                    f"{sale.amount_cents / 100:.2f} - {sale.note}")
        cleanup: Callable[[], Awaitable[None]] | None = None
        if sale.expected == "refused":
            cleanup = await _queue_foreign_intent(world, sale.lane)
        if sale.name.startswith("relay down"):
            await world.stop_relay()
            printer.say("    relay stopped")
        started = time.monotonic()
        try:
            got = await _run_sale(world, sale)
        except Exception as exc:  # the table reports it; the demo goes on
            got = f"failed: {type(exc).__name__}: {exc}"
        finally:
            if cleanup is not None:
                await cleanup()
            if sale.name.startswith("relay down"):
                await world.start_relay()
                printer.say("    relay back")
        mark = "ok" if got == sale.expected else "UNEXPECTED"
        printer.say(f"    -> {got} ({time.monotonic() - started:.1f} s) {mark}")
        results.append((sale, got))
    return results


def _table(results: list[tuple[ScriptedSale, str]]) -> str:
    rows = [("#", "sale", "expected", "got", "")]
    for number, (sale, got) in enumerate(results, 1):
        rows.append((str(number), sale.name, sale.expected, got,
                     "ok" if got == sale.expected else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def _interactive(world: DemoWorld, printer: Printer) -> int:
    printer.say("Type an amount in cents (e.g. 1500; 1200 rejected, 1300 error, 1401 hold then "
                "approved) and press Enter; q quits.")
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line in {"q", "quit", ""}:
            return 0
        if not line.isdigit():
            printer.say("an amount in cents, please")
            continue
        sale = ScriptedSale("interactive", 1, int(line), "", "")
        try:
            got = await _run_sale(world, sale)
        except Exception as exc:  # keep the session going
            got = f"failed: {exc}"
        printer.say(f"    -> {got}")


async def run_demo(*, interactive: bool, state_dir: Path, out: TextIO, quiet: bool) -> int:
    """Start everything, play the script (or the interactive loop), stop everything."""
    printer = Printer(out, quiet=quiet)
    printer.say(f"pointd demo: state in {state_dir}")
    async with DemoWorld(state_dir, printer) as world:
        printer.say(f"  cloud simulator  {world.rig.sim.base_url}")
        printer.say(f"  relay (SQLite)   {world.relay.intake_url}")
        for lane, emulator in world.rig.registers.items():
            printer.say(f"  lane {lane} register  {emulator.device_path} (emulator on a pty)")
        printer.say(f"  pointctl         pointctl --socket {state_dir / 'control.sock'} status")
        if interactive:
            return await _interactive(world, printer)
        results = await play_script(world, printer)
    printer.say("\n" + _table(results))
    failed = [sale for sale, got in results if got != sale.expected]
    printer.say(f"\n{len(results) - len(failed)} of {len(results)} sales ended as expected.")
    return 0 if not failed else 1


def main(argv: list[str]) -> int:
    """``pointd demo [--interactive] [--state-dir DIR] [--quiet]``."""
    parser = argparse.ArgumentParser(prog="pointd demo", description=__doc__.split("\n")[0])
    parser.add_argument("--interactive", action="store_true",
                        help="type amounts yourself instead of playing the script")
    parser.add_argument("--state-dir", type=Path,
                        help="keep the journal, relay database and secrets here "
                             "(default: a temporary directory, removed at the end)")
    parser.add_argument("--quiet", action="store_true", help="do not print display changes")
    args = parser.parse_args(argv)
    configure_logging("warning", "console" if sys.stderr.isatty() else "json", sys.stderr)
    temporary = args.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="pointd-demo-")) if temporary else args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(
            run_demo(interactive=args.interactive, state_dir=state_dir, out=sys.stdout,
                     quiet=args.quiet)
        )
    except httpx.HTTPError as exc:
        print(f"pointd demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)
