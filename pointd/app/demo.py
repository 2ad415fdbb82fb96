"""``pointd demo``: the whole product on embedded defaults, with no hardware and no internet.

It starts, in one process and one event loop: the Mercado Pago cloud simulator, the relay on
SQLite (the simulator's webhooks go through it), the real daemon (``Daemon``, the same
composition ``pointd run`` uses) with a simulated USB bus carrying the terminals, and one
register emulator per lane on a real pty. Then it plays a script of sales covering every
outcome the cashier can meet, prints the register display as it changes, and ends with a
table. The exit code is 0 only if every sale ended as expected.

``--interactive`` skips the script: type an amount in cents and watch the display.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import grp
import hashlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx

from pointd.app.runtime import Daemon
from pointd.cloud.client import PointApiClient
from pointd.cloud.sites import Site
from pointd.config import DaemonConfig, Secret, config_from_mapping
from pointd.logging import configure_logging
from pointd.register import messages as msg
from pointd.relay.service import INTAKE_PATH, RelayService
from pointd.relay.settings import RelaySettings, StoreCredential
from pointd.relay.sqlite_backend import SqliteStorage
from pointd.sim.cloud import CloudSimulator, SimConfig
from pointd.sim.cloud.config import Delays, SimDevice
from pointd.sim.cloud.server import LoopbackServer
from pointd.sim.register import RegisterEmulator
from pointd.sim.usb import FakeUsbBus
from pointd.sim.usb.dumps import default_dump_directory

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


class DemoWorld:
    """The simulators, the relay and the daemon, started together."""

    def __init__(self, state_dir: Path, printer: Printer) -> None:
        self.state_dir = state_dir
        self.printer = printer
        self.access_token = "TEST-" + secrets.token_hex(16)
        self.webhook_secret = secrets.token_hex(32)
        self.store_token = secrets.token_urlsafe(24)
        self.sim: CloudSimulator | None = None
        self.relay_server: LoopbackServer | None = None
        self.relay_port = 0
        self.daemon: Daemon | None = None
        self.registers: dict[int, RegisterEmulator] = {}
        self._stack = contextlib.AsyncExitStack()
        self._relay_stack: contextlib.AsyncExitStack | None = None
        self._relay_service: RelayService | None = None
        self._daemon_task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> DemoWorld:
        await self.start_relay()
        self.sim = await self._stack.enter_async_context(
            CloudSimulator(
                SimConfig(
                    access_token=self.access_token,
                    webhook_secret=self.webhook_secret,
                    site=SITE,
                    devices=tuple(
                        SimDevice(id=device, pos_id=lane, external_pos_id=f"LANE{lane}")
                        for lane, (_model, _serial, device) in LANE_TERMINALS.items()
                    ),
                    delays=DEMO_DELAYS,
                    time_scale=1.0,
                    webhook_url=f"http://127.0.0.1:{self.relay_port}{INTAKE_PATH}",
                )
            )
        )
        for lane in LANE_TERMINALS:
            emulator = await RegisterEmulator.open_pty()
            emulator.on_display(functools.partial(self.printer.display, lane))
            self.registers[lane] = emulator
        bus = FakeUsbBus.from_directory(default_dump_directory())
        for model, serial, _device in LANE_TERMINALS.values():
            bus.plug(model, serial=serial)
        config = self._daemon_config()
        self.daemon = Daemon(config, usb_backend=bus.backend, hotplug=bus.hotplug())
        self._daemon_task = asyncio.ensure_future(self.daemon.run())
        ready = asyncio.ensure_future(self.daemon.ready.wait())
        await asyncio.wait({ready, self._daemon_task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            await self._daemon_task  # raises what stopped the daemon
            raise RuntimeError("the daemon stopped before it was ready")
        for emulator in self.registers.values():
            await emulator.hello()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.daemon is not None and self._daemon_task is not None:
            self.daemon.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._daemon_task, 15)
        for emulator in self.registers.values():
            await emulator.close()
        await self.stop_relay()
        await self._stack.aclose()

    async def start_relay(self) -> None:
        """Start the relay on SQLite (again on the same port and file after a stop)."""
        settings = RelaySettings(
            host="127.0.0.1",
            port=self.relay_port,
            webhook_secret=Secret(self.webhook_secret),
            backend="sqlite",
            sqlite_path=str(self.state_dir / "relay.sqlite3"),
            stores=(
                StoreCredential(STORE_ID, hashlib.sha256(self.store_token.encode()).hexdigest()),
            ),
        )
        service = RelayService(settings, SqliteStorage(settings.sqlite_path))
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(service.running())
        server = await stack.enter_async_context(
            LoopbackServer(service.app, port=self.relay_port)
        )
        self.relay_port = server.port
        self._relay_stack = stack
        self._relay_service = service

    async def stop_relay(self) -> None:
        """Stop the relay as if its host went away."""
        if self._relay_stack is not None:
            stack, self._relay_stack = self._relay_stack, None
            if self._relay_service is not None:
                self._relay_service.begin_shutdown()
            await stack.aclose()

    def _daemon_config(self) -> DaemonConfig:
        token_file = self._secret_file("mp_access_token", self.access_token)
        store_token_file = self._secret_file("relay_store_token", self.store_token)
        secret_file = self._secret_file("mp_webhook_secret", self.webhook_secret)
        assert self.sim is not None
        return config_from_mapping(
            {
                "store": {"id": STORE_ID, "site": SITE.value, "collector_id": 123456789,
                          "language": "en"},
                "cloud": {"base_url": self.sim.base_url, "access_token_file": str(token_file),
                          "webhook_secret_file": str(secret_file)},
                "relay": {"url": f"http://127.0.0.1:{self.relay_port}",
                          "store_token_file": str(store_token_file), "canary_interval": 5.0},
                "journal": {"path": str(self.state_dir / "journal.sqlite3")},
                # pointctl from the demo's own user group may read; no pointd group needed.
                "control": {"socket": str(self.state_dir / "control.sock"),
                            "read_group": grp.getgrgid(os.getgid()).gr_name},
                # Short timers so that the demo's fallbacks show within seconds.
                "timers": {"poll_fallback_after": 2.0, "verify_initial_backoff": 1.0,
                           "verify_max_backoff": 2.0, "confirmation_escalate_after": 30.0},
                "terminals": {"refresh_interval": 30.0, "usb_rescan_interval": 1.0},
                "lanes": [
                    {"number": lane, "register": str(self.registers[lane].device_path),
                     "terminal_serial": serial}
                    for lane, (_model, serial, _device) in LANE_TERMINALS.items()
                ],
                "logging": {"level": "warning"},
            },
            DaemonConfig,
            source="demo",
        )

    def _secret_file(self, name: str, value: str) -> Path:
        path = self.state_dir / name
        path.write_text(value)
        path.chmod(0o600)
        return path

    async def advance_cloud(self, seconds: float) -> None:
        """Move the simulated Mercado Pago clock forward."""
        assert self.sim is not None
        await self.sim.advance(seconds)


async def _run_sale(world: DemoWorld, sale: ScriptedSale) -> str:
    emulator = world.registers[sale.lane]
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
    assert world.sim is not None
    base_url, device = world.sim.base_url, LANE_TERMINALS[lane][2]
    async with PointApiClient(base_url, world.access_token, site=SITE) as client:
        intent = await client.create_payment_intent(device, 999, "other-pos-1")

    async def clear() -> None:
        async with PointApiClient(base_url, world.access_token, site=SITE) as client:
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
        assert world.sim is not None
        printer.say(f"  cloud simulator  {world.sim.base_url}")
        printer.say(f"  relay (SQLite)   http://127.0.0.1:{world.relay_port}{INTAKE_PATH}")
        for lane, emulator in world.registers.items():
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
