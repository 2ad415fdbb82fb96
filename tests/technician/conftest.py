"""A store on the rig around the real ``pointd run`` process, and the real pointctl against it.

Every test here uses the technician's own tools as they are installed: ``pointd run`` as
systemd starts it (its notify messages land on the rig's socket), ``pointctl`` as a
subprocess on the daemon's control socket, ``pointd relay`` as a process when the test is
about the relay. The cloud simulator is frozen (``time_scale=0``) and moved by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pointd.cloud.sites import Site
from pointd.control.client import ControlClient
from pointd.register import messages as msg
from pointd.rig import PACKAGE_ROOT, RigLane, StoreRig, StoreSpec, child_environment, merged
from pointd.sim.register.emulator import SaleOutcome
from tests.e2e_daemon.harness import EVENT_TIMEOUT, SIM_SALE_SECONDS
from tests.support.subprocesses import run_to_exit

STORE_ID = "tech-shop"
DEVICE = "PAX_A910__SMARTPOS1234345545"
OTHER_DEVICE = "GERTEC_MP35P__8701016695109435"
POINTCTL_TIMEOUT = 30.0
# How long a test waits for a change the daemon pushes: generous, for a machine whose cores
# are busy with other suites; a waiter wakes on the change, not at the ceiling.
WAIT_CEILING = EVENT_TIMEOUT * 4
# The line that ends each screen ``pointctl watch`` draws.
WATCH_SCREEN_END = b"to exit)\n"
# Timers at the configuration's minimum so a daemon poll follows a change within a second.
T = TypeVar("T")
FAST_TIMERS = {"poll_fallback_after": 1, "verify_initial_backoff": 1, "verify_max_backoff": 1}


@dataclass
class Shop:
    """The rig's store plus the technician's commands."""

    rig: StoreRig
    sales: list[asyncio.Task[SaleOutcome]] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        """The daemon's control socket."""
        return self.rig.state_dir / "control.sock"

    async def command(self, module: str, *args: str, within: float = POINTCTL_TIMEOUT,
                      env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
        """``python -m module ARGS`` (pointctl, pointd) to its exit: code, stdout, stderr."""
        return await run_to_exit([sys.executable, "-m", module, *args],
                                 env=child_environment(env), cwd=PACKAGE_ROOT, within=within)

    async def pointctl_text(self, *args: str) -> tuple[int, str, str]:
        """``pointctl --socket S ARGS`` as a person types it: code, stdout, stderr."""
        return await self.command("pointd.control.cli", "--socket", str(self.socket), *args)

    async def pointctl(self, *args: str) -> tuple[int, Any]:
        """``pointctl ARGS --json`` (the flag last, as people type it): code and the JSON."""
        code, out, err = await self.pointctl_text(*args, "--json")
        try:
            return code, json.loads(out)
        except ValueError:
            raise AssertionError(f"pointctl {args} exited {code}: {out!r} {err!r}") from None

    async def status(self) -> dict[str, Any]:
        """``pointctl status --json``."""
        _code, status = await self.pointctl("status")
        assert isinstance(status, dict)
        return status

    async def wait_status(self, what: str,
                          predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The daemon's status once ``predicate`` holds for it."""
        async def matching(client: ControlClient) -> dict[str, Any] | None:
            status: dict[str, Any] = await client.call("status")
            return status if predicate(status) else None

        return await self.until(what, matching)

    async def until(self, what: str, look: Callable[[ControlClient], Awaitable[T | None]]
                    ) -> T:
        """What ``look`` finds, looking again after each event the daemon pushes.

        Every change a test waits for (a sale's state, the status snapshot, a terminal's
        refresh) is pushed to subscribers, so this wakes on the change itself; the ceiling
        is generous because under load a daemon step can take seconds.
        """
        last: T | None = None
        async with await ControlClient.connect(self.socket) as client:
            await client.call("subscribe")
            events = client.events()
            try:
                async with asyncio.timeout(WAIT_CEILING):
                    while (last := await look(client)) is None:
                        await anext(events)
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what}") from None
            except StopAsyncIteration:
                raise AssertionError(f"the daemon went away waiting for {what}") from None
            finally:
                await events.aclose()
        return last

    async def lane_ready(self, lane: int = 1) -> dict[str, Any]:
        """Wait until the lane is ready (terminal known, register link up)."""
        return await self.wait_status(
            f"lane {lane} ready",
            lambda s: any(row["lane"] == str(lane) and row["condition"] == "ready"
                          for row in s["lanes"]),
        )

    async def watch(self, *args: str) -> tuple[asyncio.subprocess.Process, bytes]:
        """``pointctl watch ARGS`` running, and its first output: the screen (or with
        ``--json`` the status line) it prints once subscribed."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pointd.control.cli", "--socket", str(self.socket), "watch",
            *args, cwd=PACKAGE_ROOT, env=child_environment(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        first = (process.stdout.readline() if "--json" in args
                 else process.stdout.readuntil(WATCH_SCREEN_END))
        try:
            return process, await asyncio.wait_for(first, WAIT_CEILING)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError("pointctl watch printed nothing") from None

    async def stop_watch(self, process: asyncio.subprocess.Process) -> int:
        """Ctrl-C a ``pointctl watch``; its exit code."""
        process.send_signal(signal.SIGINT)
        return await asyncio.wait_for(process.wait(), WAIT_CEILING)

    def sale(self, amount_cents: int, correlation_id: str, lane: int = 1
             ) -> asyncio.Task[SaleOutcome]:
        """The register asks for a sale; the task ends with its RESULT."""
        task = asyncio.create_task(
            self.rig.registers[lane].sale(amount_cents, correlation_id,
                                          within=WAIT_CEILING),
            name=f"sale-{correlation_id}",
        )
        self.sales.append(task)
        return task

    async def approved_sale(self, correlation_id: str, amount_cents: int = 2500,
                            lane: int = 1) -> SaleOutcome:
        """A whole approved sale, handed over, as a cashier rings it."""
        sale = self.sale(amount_cents, correlation_id, lane)
        await self.until_intent(correlation_id)
        await self.rig.sim.advance(SIM_SALE_SECONDS)
        outcome = await asyncio.wait_for(sale, WAIT_CEILING)
        await self.hand_over(outcome, lane)
        return outcome

    async def hand_over(self, outcome: SaleOutcome, lane: int = 1) -> None:
        """The register checks an approved sale and hands the goods over (frees the lane)."""
        assert outcome.outcome is msg.Outcome.APPROVED, outcome
        register = self.rig.registers[lane]
        check = await register.handover_check(outcome.correlation_id)
        assert check.allowed
        await register.handover_done(outcome.correlation_id)

    async def until_intent(self, correlation_id: str) -> None:
        """Wait until the daemon created the sale's intent (the sale shows as open)."""
        async def created(client: ControlClient) -> bool | None:
            listing = await client.call("sales")
            return any(row["correlation_id"] == correlation_id and row["state"] == "open"
                       for row in listing["sales"]) or None

        await self.until(f"the intent of {correlation_id}", created)

    def daemon_log(self) -> str:
        """Everything the daemon processes wrote (stdout and stderr)."""
        return "".join(run.child.log_text() for run in self.rig.runs)

    async def close(self) -> None:
        """Cancel the sales still waiting."""
        for task in self.sales:
            task.cancel()
        for task in self.sales:
            with contextlib.suppress(BaseException):
                await task


OpenShop = Callable[..., contextlib.AbstractAsyncContextManager[Shop]]


@pytest.fixture
def open_shop(tmp_path: Path) -> OpenShop:
    """``async with open_shop(relay=..., daemon_config=..., ...) as shop``: the daemon is up."""

    @contextlib.asynccontextmanager
    async def start(
        *, relay: str = "none", lanes: tuple[RigLane, ...] = (RigLane(1, DEVICE),),
        daemon_config: Mapping[str, Any] | None = None, sim: Mapping[str, Any] | None = None,
        start: bool = True, relay_log_level: str = "warning",
    ) -> AsyncIterator[Shop]:
        spec = StoreSpec(
            store_id=STORE_ID, site=Site.MLA, lanes=lanes, relay=relay,  # type: ignore[arg-type]
            daemon="process", start_daemon=False, sim={"time_scale": 0.0, **(sim or {})},
            daemon_config=merged({"timers": FAST_TIMERS,
                                  "logging": {"level": "info", "format": "json"}},
                                 daemon_config or {}),
            relay_log_level=relay_log_level,
        )
        async with StoreRig(tmp_path, spec) as rig:
            shop = Shop(rig)
            try:
                if start:
                    await rig.start_daemon()
                    await rig.hello_all()
                yield shop
            finally:
                await shop.close()
            failures = [entry for run in rig.runs for entry in run.failures()]
            assert failures == [], f"the daemon logged errors: {failures}"

    return start
