"""Benchmark of the register link: software time per frame against the wire time of its bytes.

Three layers, each timed per frame with ``time.perf_counter_ns``:

1. codec — a register message encoded to a payload and framed (``DataFrame.to_bytes``:
   CRC, stuffing), then decoded back through ``FrameDecoder`` and ``decode_message``;
2. ARQ — one complete exchange between two pure ``pointd.link.arq`` machines: send,
   receive and deliver, ACK, confirm, with both codecs, no I/O;
3. pty — the real asyncio ``LinkDriver`` (pyserial on a pty slave, as the daemon opens a
   register port) talking to the register emulator of ``pointd.sim.register`` on the pty
   master: daemon → register DISPLAY until the register shows it and until the daemon holds
   its ACK, and register → daemon SALE until the daemon delivers it and until the register
   holds its ACK.

A pty moves bytes at memory speed, so layer 3 measures software and kernel time only. Both
ends run on one event loop in this process, so each pty figure is the daemon's work plus the
emulated register's, one after the other: an upper bound for the daemon's share. The wire
time printed beside it is what the same bytes (frame plus ACK for a round trip) take on a
serial line at 8N1, 10 bits per byte.

    python bench/register_link.py            # 5000 codec/ARQ frames, 2000 pty exchanges each way
    python bench/register_link.py --quick    # a few iterations: proves it runs
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from run_record import (  # noqa: E402
    add_run_arguments,
    describe_machine,
    print_machine,
    save_json,
    summarize,
)

from pointd.core.states import SaleState  # noqa: E402
from pointd.link import arq  # noqa: E402
from pointd.link.driver import LinkDriver, LinkUp, PayloadReceived  # noqa: E402
from pointd.link.frame import AckFrame, DataFrame, FrameDecoder  # noqa: E402
from pointd.register import messages as msg  # noqa: E402
from pointd.register.prompts import prompt_for  # noqa: E402
from pointd.sim.register import RegisterEmulator  # noqa: E402

BAUD_RATES = (9600, 115200)
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
# Opening the pty and the first exchange take milliseconds; this only bounds a hang.
EXCHANGE_TIMEOUT = 10.0
CORRELATION_ID = "R-000123"

_PROMPT = prompt_for(SaleState.ON_TERMINAL, "es")
MESSAGES: dict[str, msg.Message] = {
    "DISPLAY": msg.Display(_PROMPT.lines, _PROMPT.severity, "es", CORRELATION_ID),
    "SALE": msg.Sale(CORRELATION_ID, 12345, "PAX_A910__SMARTPOS1"),
    "RESULT": msg.Result(
        CORRELATION_ID, msg.Outcome.APPROVED, 12345, "11123456789", "4242", None
    ),
}


def wire_us(byte_count: int, baud: int) -> float:
    """Microseconds that ``byte_count`` bytes occupy on an 8N1 line at ``baud``."""
    return byte_count * BITS_PER_BYTE / baud * 1e6


def frame_bytes(message: msg.Message) -> int:
    """Bytes of the message's frame on the wire (sequence number 1)."""
    return len(DataFrame(1, message.to_payload()).to_bytes())


ACK_BYTES = len(AckFrame(1).to_bytes())


def time_each(count: int, operation: Callable[[int], object]) -> list[int]:
    """Run ``operation(i)`` ``count`` times; return each run's duration in nanoseconds."""
    samples = []
    for i in range(count):
        started = time.perf_counter_ns()
        operation(i)
        samples.append(time.perf_counter_ns() - started)
    return samples


def bench_codec(message: msg.Message, count: int) -> dict[str, dict[str, float]]:
    """Encode (message → framed bytes) and decode (bytes → message) of one message."""
    wire = DataFrame(1, message.to_payload()).to_bytes()

    def encode(i: int) -> bytes:
        return DataFrame(i % 255 + 1, message.to_payload()).to_bytes()

    def decode(_i: int) -> msg.Message:
        (frame,) = FrameDecoder().feed(wire)
        assert isinstance(frame, DataFrame)
        return msg.decode_message(frame.payload)

    return {
        "encode": summarize(time_each(count, encode)),
        "decode": summarize(time_each(count, decode)),
    }


def bench_arq(message: msg.Message, count: int) -> dict[str, float]:
    """One full exchange between two pure ARQ machines, codecs included, no I/O."""
    payload = message.to_payload()
    now = 0.0
    sender, _ = arq.start(now)
    receiver, _ = arq.start(now)
    sender_rx, receiver_rx = FrameDecoder(), FrameDecoder()

    def only_write(actions: list[arq.Action]) -> bytes:
        (data,) = [a.data for a in actions if isinstance(a, arq.Write)]
        return data

    def exchange(tag: int) -> None:
        nonlocal sender, receiver
        sender, actions = arq.on_event(sender, arq.SendRequested(tag, payload), now)
        (frame,) = receiver_rx.feed(only_write(actions))
        assert isinstance(frame, DataFrame)
        receiver, actions = arq.on_event(receiver, arq.FrameReceived(frame), now)
        delivered = [a.payload for a in actions if isinstance(a, arq.Deliver)]
        msg.decode_message(delivered[0])
        (ack,) = sender_rx.feed(only_write(actions))
        assert isinstance(ack, AckFrame)
        sender, actions = arq.on_event(sender, arq.event_for_frame(ack), now)
        assert any(isinstance(a, arq.Confirmed) for a in actions)

    return summarize(time_each(count, exchange))


async def bench_pty(count: int, warmup: int) -> dict[str, dict[str, float]]:
    """The real driver on a pty against the register emulator, both directions."""
    emulator = await RegisterEmulator.open_pty()
    driver = LinkDriver(emulator.device_path)
    runner = asyncio.create_task(driver.run())
    shown = asyncio.Event()
    shown_at = 0
    display = MESSAGES["DISPLAY"].to_payload()
    sale = MESSAGES["SALE"].to_payload()

    def on_display(_message: msg.Display) -> None:
        nonlocal shown_at
        shown_at = time.perf_counter_ns()
        shown.set()

    emulator.on_display(on_display)
    results: dict[str, list[int]] = {
        "daemon_to_register_shown": [],
        "daemon_to_register_acked": [],
        "register_to_daemon_delivered": [],
        "register_to_daemon_acked": [],
    }
    try:
        first = await asyncio.wait_for(driver.next_event(), EXCHANGE_TIMEOUT)
        assert isinstance(first, LinkUp), first
        for i in range(warmup + count):
            shown.clear()
            started = time.perf_counter_ns()
            await asyncio.wait_for(driver.send(display), EXCHANGE_TIMEOUT)
            acked = time.perf_counter_ns()
            await asyncio.wait_for(shown.wait(), EXCHANGE_TIMEOUT)
            if i >= warmup:
                results["daemon_to_register_shown"].append(shown_at - started)
                results["daemon_to_register_acked"].append(acked - started)

        for i in range(warmup + count):
            started = time.perf_counter_ns()
            sending = asyncio.create_task(emulator.send_payload(sale))
            event = await asyncio.wait_for(driver.next_event(), EXCHANGE_TIMEOUT)
            delivered = time.perf_counter_ns()
            assert isinstance(event, PayloadReceived), event
            await asyncio.wait_for(sending, EXCHANGE_TIMEOUT)
            acked = time.perf_counter_ns()
            if i >= warmup:
                results["register_to_daemon_delivered"].append(delivered - started)
                results["register_to_daemon_acked"].append(acked - started)
    finally:
        driver.close()
        await asyncio.wait_for(runner, EXCHANGE_TIMEOUT)
        await emulator.close()
    return {name: summarize(samples) for name, samples in results.items()}


def ratios(software_us: float, byte_count: int) -> dict[str, float]:
    """Software time as a fraction of the wire time of ``byte_count`` bytes, per baud rate."""
    return {str(baud): software_us / wire_us(byte_count, baud) for baud in BAUD_RATES}


def fmt(summary: dict[str, float]) -> str:
    """p50/p99/max of a summary, in microseconds."""
    return (
        f"p50 {summary['p50_us']:8.1f} us  p99 {summary['p99_us']:8.1f} us  "
        f"max {summary['max_us']:8.1f} us"
    )


def main() -> int:
    """Run every layer and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    args = parser.parse_args()
    # The link logs at debug level per discarded byte and info per connection; the
    # benchmark times the link, not the console.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    pure_count, pty_count, warmup = (20, 10, 2) if args.quick else (5000, 2000, 100)

    machine = describe_machine()
    print_machine("register link: software time per frame vs wire time (8N1)", machine)
    results: dict[str, Any] = {"wire_bytes": {}, "codec": {}, "arq": {}}

    print("\nwire time of each frame, and of frame + ACK (a round trip's bytes)")
    for name, message in MESSAGES.items():
        size = frame_bytes(message)
        results["wire_bytes"][name] = size
        line = "  ".join(
            f"{baud:>6} baud {wire_us(size, baud) / 1000:6.2f} ms"
            f" (+ACK {wire_us(size + ACK_BYTES, baud) / 1000:6.2f} ms)"
            for baud in BAUD_RATES
        )
        print(f"  {name:<8} {size:>3} B  {line}")
    results["wire_bytes"]["ACK"] = ACK_BYTES

    print(f"\n1. codec per frame (message ↔ wire bytes), {pure_count} frames each")
    for name, message in MESSAGES.items():
        figures = bench_codec(message, pure_count)
        results["codec"][name] = figures
        for side, summary in figures.items():
            print(f"  {name:<8} {side:<7} {fmt(summary)}")

    print(f"\n2. ARQ exchange, both ends, pure (send → deliver → ACK → confirm), {pure_count} each")
    for name, message in MESSAGES.items():
        summary = bench_arq(message, pure_count)
        ratio = ratios(summary["p99_us"], frame_bytes(message) + ACK_BYTES)
        results["arq"][name] = {**summary, "p99_over_wire": ratio}
        print(
            f"  {name:<8}         {fmt(summary)}   p99/wire: "
            + "  ".join(f"{r:.4f} @{b}" for b, r in ratio.items())
        )

    print(f"\n3. real LinkDriver on a pty ↔ register emulator, {pty_count} exchanges each way")
    pty = asyncio.run(bench_pty(pty_count, warmup))
    exchanged = {
        "daemon_to_register_shown": frame_bytes(MESSAGES["DISPLAY"]),
        "daemon_to_register_acked": frame_bytes(MESSAGES["DISPLAY"]) + ACK_BYTES,
        "register_to_daemon_delivered": frame_bytes(MESSAGES["SALE"]),
        "register_to_daemon_acked": frame_bytes(MESSAGES["SALE"]) + ACK_BYTES,
    }
    results["pty"] = {}
    for name, summary in pty.items():
        ratio = ratios(summary["p99_us"], exchanged[name])
        results["pty"][name] = {**summary, "wire_bytes": exchanged[name], "p99_over_wire": ratio}
        print(
            f"  {name:<29} {fmt(summary)}   p99/wire: "
            + "  ".join(f"{r:.4f} @{b}" for b, r in ratio.items())
        )

    if args.json is not None:
        path = save_json(
            "register_link", args.json, {"benchmark": "register_link", "machine": machine,
                                         "quick": args.quick, "results": results}
        )
        print(f"\nJSON written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
