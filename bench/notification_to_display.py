"""Benchmark: a sale's final state at Mercado Pago until the register shows it, relay vs polling.

The whole product runs (``bench/product_rig.py``): the cloud simulator and register
emulators on ptys in this process, ``pointd relay`` (SQLite) and ``pointd run`` as
subprocesses. Every lane sells, hands over and sells again, all lanes at once, until the
requested number of sales. Per sale, with ``time.monotonic_ns`` (CLOCK_MONOTONIC, shared by
all processes of the machine):

* **final** — the simulated Mercado Pago moves the intent to FINISHED;
* **webhook** — the simulator starts the POST of the final-state webhook to the relay;
* **display** — the register emulator has decoded the DISPLAY frame the daemon sends as
  soon as it learns FINISHED: the "verifying payment" screen, shown before the daemon asks
  ``/v1/payments`` (``on_display`` callback, after the emulator's frame decode);
* **result** — the register holds the RESULT (payment verified, approved).

Two runs. *Relay*: the daemon learns the outcome from the relay's long-poll; the figure is
webhook → display (the notification path: relay intake and durable write, long-poll answer,
daemon journal, core step, register link). *Polling*: no relay, the simulator sends no
webhooks, and the daemon's own poll fallback fetches the intent every second
(``timers.poll_fallback_after = 1``, the lowest the configuration allows, which is Mercado
Pago's documented 1 GET/s per intent); the figure is final → display. The customer's time
at the terminal is drawn uniformly from [0, 1) s per sale in both runs, so the final state
falls at a random point between two polls. The ratio polling/relay of final → display is
the figure that matters.

A pty moves bytes at memory speed: the figures are software time. The DISPLAY frame's wire
time at 9600 and 115200 baud is printed beside them.

    python bench/notification_to_display.py                 # 1000 sales each way, 10 lanes
    python bench/notification_to_display.py --quick         # a handful: proves it runs
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from product_rig import (  # noqa: E402
    ProductRig,
    RigOptions,
    device_id,
    sell_continuously,
    uniform_delay,
)
from run_record import (  # noqa: E402
    add_run_arguments,
    describe_machine,
    print_machine,
    save_json,
    summarize,
)

from pointd.core.states import SaleState  # noqa: E402
from pointd.link.frame import DataFrame  # noqa: E402
from pointd.register import messages as msg  # noqa: E402
from pointd.register.prompts import prompt_for  # noqa: E402

BAUD_RATES = (9600, 115200)
BITS_PER_BYTE = 10  # 8N1
# The daemon polls an intent no faster than this (Mercado Pago: 1 GET/s per intent).
POLL_INTERVAL = 1.0
# The customer's time at the terminal, drawn per sale: spreads the final state over a poll.
CUSTOMER_DELAY = (0.0, 1.0)
# The screen the daemon shows once it learns FINISHED (the rig's registers speak "es").
VERIFYING_LINES = tuple(prompt_for(SaleState.VERIFYING, "es").lines)
# A sale takes about a second end to end; this only bounds a stuck one.
SALE_TIMEOUT = 60.0


@dataclass
class LaneSale:
    """One lane's sale in progress and what was timed of it."""

    correlation_id: str
    device: str
    intent_id: str | None = None
    final_ns: int | None = None
    display_ns: int | None = None
    display_bytes: int = 0
    display_text: str = ""


class NotificationTimer:
    """Matches simulator timestamps with what each register saw."""

    def __init__(self, rig: ProductRig) -> None:
        self.rig = rig
        self.current: dict[int, LaneSale] = {}
        self.lane_of_device = {device_id(lane): lane for lane in rig.registers}
        self.samples: list[dict[str, Any]] = []
        self.unmatched = 0
        for lane, emulator in rig.registers.items():
            emulator.on_display(functools.partial(self.displayed, lane))
        assert rig.sim is not None
        previous = rig.sim.world._move

        def watch_final(intent: Any, state: str, at: float) -> None:
            previous(intent, state, at)
            lane = self.lane_of_device.get(intent.device_id)
            sale = self.current.get(lane) if lane is not None else None
            times = rig.sim.times.get(intent.id) if rig.sim is not None else None
            if (
                sale is not None
                and sale.final_ns is None
                and times is not None
                and times.final_ns is not None
            ):
                sale.intent_id, sale.final_ns = intent.id, times.final_ns

        rig.sim.world._move = watch_final  # type: ignore[method-assign]

    def started(self, lane: int, correlation_id: str) -> None:
        """A lane sent a SALE."""
        self.current[lane] = LaneSale(correlation_id, device_id(lane))

    def displayed(self, lane: int, display: msg.Display) -> None:
        """The register on ``lane`` decoded a DISPLAY frame."""
        now = time.monotonic_ns()
        sale = self.current.get(lane)
        if sale is None or sale.final_ns is None or sale.display_ns is not None:
            return
        if display.correlation_id != sale.correlation_id or display.lines != VERIFYING_LINES:
            return
        sale.display_ns = now
        sale.display_bytes = len(DataFrame(1, display.to_payload()).to_bytes())
        sale.display_text = " | ".join(display.lines)

    def ended(self, lane: int, correlation_id: str, outcome: msg.Outcome) -> None:
        """A lane holds its RESULT: file the sale's timestamps."""
        result_ns = time.monotonic_ns()
        sale = self.current.pop(lane, None)
        assert self.rig.sim is not None
        if (
            sale is None
            or sale.correlation_id != correlation_id
            or sale.final_ns is None
            or sale.display_ns is None
            or sale.intent_id is None
            or outcome is not msg.Outcome.APPROVED
        ):
            self.unmatched += 1
            return
        times = self.rig.sim.times[sale.intent_id]
        webhook_ns, answered_ns = times.webhook_ns, times.webhook_answered_ns
        self.samples.append(
            {
                "final_to_display": sale.display_ns - sale.final_ns,
                "webhook_to_display": (
                    None if webhook_ns is None else sale.display_ns - webhook_ns
                ),
                "webhook_answered": (
                    None if webhook_ns is None or answered_ns is None
                    else answered_ns - webhook_ns
                ),
                "final_to_result": result_ns - sale.final_ns,
                "display_bytes": sale.display_bytes,
                "display_text": sale.display_text,
            }
        )


async def run_mode(relay: bool, sales: int, lanes: int) -> dict[str, Any]:
    """Run ``sales`` sales on ``lanes`` lanes with or without the relay; summarize."""
    options = RigOptions(
        lanes=lanes,
        relay=relay,
        customer_delay=uniform_delay(*CUSTOMER_DELAY),
        timers={} if relay else {"poll_fallback_after": POLL_INTERVAL},
    )
    with tempfile.TemporaryDirectory(prefix="pointd-bench-n2d-") as tmp:
        async with ProductRig(Path(tmp), options) as rig:
            timer = NotificationTimer(rig)
            load = await sell_continuously(
                rig,
                total=sales,
                on_sale_start=timer.started,
                on_sale_end=timer.ended,
                sale_timeout=SALE_TIMEOUT,
            )
    samples = timer.samples
    if not samples:
        raise RuntimeError("no sale was timed")
    figures: dict[str, Any] = {
        "sales": load.sales,
        "timed": len(samples),
        "unmatched": timer.unmatched,
        "outcomes": load.outcomes,
        "seconds": load.seconds,
        "sales_per_s": load.sales / load.seconds,
        "final_to_display": summarize([s["final_to_display"] for s in samples]),
        "final_to_result": summarize([s["final_to_result"] for s in samples]),
        "display_bytes": max(s["display_bytes"] for s in samples),
        "display_texts": sorted({s["display_text"] for s in samples}),
    }
    if relay:
        webhook = [s["webhook_to_display"] for s in samples if s["webhook_to_display"] is not None]
        figures["webhook_to_display"] = summarize(webhook)
        figures["webhook_answered"] = summarize(
            [s["webhook_answered"] for s in samples if s["webhook_answered"] is not None]
        )
    return figures


def ms(summary: dict[str, float]) -> str:
    """p50/p99/max of a summary in milliseconds."""
    return (
        f"p50 {summary['p50_us'] / 1000:8.2f} ms  p99 {summary['p99_us'] / 1000:8.2f} ms  "
        f"max {summary['max_us'] / 1000:8.2f} ms"
    )


def main() -> int:
    """Run the relay path, then the polling baseline, and print both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--sales", type=int, default=1000, help="sales per mode")
    parser.add_argument("--lanes", type=int, default=10, help="lanes selling at once")
    args = parser.parse_args()
    if args.sales < 1 or not 1 <= args.lanes <= 99:
        parser.error("--sales must be at least 1 and --lanes between 1 and 99")
    # The simulators log each webhook and link event; the benchmark times, not the console.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    sales, lanes = (6, 2) if args.quick else (args.sales, args.lanes)

    machine = describe_machine()
    print_machine("notification → register display: relay vs 1 Hz polling", machine)
    results: dict[str, Any] = {"lanes": lanes, "poll_interval_s": POLL_INTERVAL,
                               "customer_delay_s": list(CUSTOMER_DELAY)}
    for name, relay in (("relay", True), ("polling", False)):
        figures = asyncio.run(run_mode(relay, sales, lanes))
        results[name] = figures
        print(f"\n{name}: {figures['timed']} of {figures['sales']} sales timed on {lanes} lanes, "
              f"{figures['sales_per_s']:.1f} sales/s, outcomes {figures['outcomes']}")
        if relay:
            print(f"  webhook POST → DISPLAY   {ms(figures['webhook_to_display'])}")
            print(f"  webhook POST → relay 200 {ms(figures['webhook_answered'])}")
        print(f"  final state → DISPLAY    {ms(figures['final_to_display'])}")
        print(f"  final state → RESULT     {ms(figures['final_to_result'])}")
        print(f"  display timed: {figures['display_texts']}")

    relay_f, poll_f = results["relay"]["final_to_display"], results["polling"]["final_to_display"]
    results["ratio_polling_over_relay"] = {
        key: poll_f[f"{key}_us"] / relay_f[f"{key}_us"] for key in ("p50", "p99", "max")
    }
    size = results["relay"]["display_bytes"]
    results["display_wire_ms"] = {str(b): size * BITS_PER_BYTE / b * 1000 for b in BAUD_RATES}
    ratio = results["ratio_polling_over_relay"]
    print(f"\npolling / relay, final state → DISPLAY: p50 x{ratio['p50']:.1f}  "
          f"p99 x{ratio['p99']:.1f}  max x{ratio['max']:.1f}")
    print(f"DISPLAY frame {size} B on the wire (not in the pty figures): "
          + "  ".join(f"{ms_:.2f} ms @{b}" for b, ms_ in results["display_wire_ms"].items()))

    if args.json is not None:
        path = save_json(
            "notification_to_display", args.json,
            {"benchmark": "notification_to_display", "machine": machine, "quick": args.quick,
             "results": results},
        )
        print(f"\nJSON written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
