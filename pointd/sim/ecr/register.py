"""The register's application (register protocol §5, §7, §8) on the event loop, over a ``Line``.

Theory of operation
-------------------
A ``Line`` is whatever carries the register's bytes: a pty, a TCP connection the daemon
opened, or the deterministic simulation's virtual cable. Its owner calls ``attach`` when a
line opens, ``bytes_in`` with what arrives, and ``detach`` when it is gone; the register
writes with ``line.write``. Over each attached line runs one ``Link`` (pure, ``link.py``)
whose single timer is armed on the loop.

The register behaves as the page asks of a vendor's register:

* HELLO after every open and every link-down (§5), again after ``HELLO_REPLY_TIMEOUT``, and
  whenever a request is answered ``hello_required``, which it then repeats (§5);
* one correlation id per sale; after a reconnect, STATUS for the sale still waiting for its
  RESULT before anything else, and the page's table for the answer (§7): a final state (or
  ``approved``) is the outcome, ``unknown`` means the SALE never arrived and is re-sent with
  the same id, anything else means keep waiting;
* STATUS and HANDOVER_CHECK asked again after ``REPLY_TIMEOUT`` (§8);
* HOLD, RELEASE, WITHDRAW and a later RESULT update what the cashier may do (§6.2): the
  goods may leave only on an ``approved`` RESULT that was not withdrawn since, and never
  while the sale is held.

Fault knobs (``inject_noise``, ``corrupt_next_frame``, ``drop_next_ack_sent``,
``drop_next_ack_received``) damage the wire as a noisy cable does, and count in ``fired``
only when they actually damaged something.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pointd.sim.ecr import fields as f
from pointd.sim.ecr.link import Action, Confirmed, Deliver, Down, Link, Write
from pointd.sim.ecr.wire import ACK, ENQ, NAK, STX, Frame, Receiver, crc16, stuff

# §8 "Application timers (register side)".
HELLO_REPLY_TIMEOUT = 5.0
REPLY_TIMEOUT = 5.0
SALE_RESULT_TIMEOUT = 20 * 60.0
# Requests remembered per correlation id (a sale sees a SALE, a CANCEL, a few STATUS).
REQUESTS_REMEMBERED = 8
# §5: the versions this register implements, best first.
VERSIONS = ("1.0",)
# The reply each request waits for (§6.1 "Answer"); None: the link ACK is the receipt.
REPLY_OF = {
    f.HELLO: f.HELLO_REPLY,
    f.STATUS: f.STATUS_REPLY,
    f.HANDOVER_CHECK: f.HANDOVER_REPLY,
    f.SALE: f.RESULT,
    f.CANCEL: None,
    f.HANDOVER_DONE: None,
}
HELLO_REQUIRED = "hello_required"
# §6.3: the requests an ERROR code can answer, where the page names them.
ANSWERED_BY = {
    "unknown_sale": frozenset({f.CANCEL, f.HANDOVER_DONE}),
    "id_reused": frozenset({f.SALE}),
}
UNSUPPORTED_VERSION = "unsupported_version"


class Line(Protocol):
    """Where the register's bytes go."""

    def write(self, data: bytes) -> None:
        """Send bytes (a line that is gone drops them)."""
        ...


class RegisterError(Exception):
    """A request could not be completed."""


class LinkTrouble(RegisterError):
    """The line or the link failed under a request; asking again is safe (§7)."""


class Refused(RegisterError):
    """The daemon answered ERROR (§6.3)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


class NoResult(RegisterError, TimeoutError):
    """No RESULT within the time given, and STATUS shows no outcome either."""


@dataclass(frozen=True, slots=True)
class Result:
    """How a sale ended: its RESULT, or a final STATUS after a reconnect (§7)."""

    correlation_id: str
    outcome: str
    reason: str | None = None
    payment: str | None = None
    from_status: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    """A STATUS_REPLY."""

    correlation_id: str
    state: str
    handover: bool

    @property
    def outcome(self) -> str | None:
        """The outcome this state means per §7, None while the sale is in progress."""
        if self.state in f.FINAL_STATES or self.state == "approved":
            return f.OUTCOME_OF_STATE.get(self.state)
        return None


@dataclass(frozen=True, slots=True)
class HandoverReply:
    """A HANDOVER_REPLY."""

    correlation_id: str
    allowed: bool
    reason: str | None


def _hello_was_required(future: asyncio.Future[f.Message]) -> bool:
    error = None if future.cancelled() else future.exception()
    return isinstance(error, Refused) and error.code == HELLO_REQUIRED


class Register:
    """One cash register speaking the protocol over whatever line is attached."""

    def __init__(self, *, name: str = "pointd-ecr", versions: tuple[str, ...] = VERSIONS,
                 on_trace: Callable[[str], None] | None = None) -> None:
        self.name = name
        self._versions = versions
        self._on_trace = on_trace
        self._line: Line | None = None
        self._link: Link | None = None
        self._receiver = Receiver()
        self._timer: asyncio.TimerHandle | None = None
        self._sends: dict[int, asyncio.Future[None]] = {}
        self._waiters: dict[tuple[str, str], list[asyncio.Future[f.Message]]] = {}
        # Requests sent under each correlation id and not yet refused with hello_required,
        # oldest first: a SALE and its CANCEL share an id, and an ERROR names only the id.
        self._requests: dict[str, list[tuple[str, dict[str, str]]]] = {}
        # Set while this connection's HELLO is answered; replaced at every loss.
        self._greeted = asyncio.Event()
        self._lost = asyncio.Event()
        self._hello_task: asyncio.Task[None] | None = None
        self._repeats: set[asyncio.Task[None]] = set()
        self._connections = 0
        self.hello_reply: f.Message | None = None
        self.version_refused = False
        self.display: tuple[str, ...] = ()
        # §6.2: HOLD until RELEASE or a RESULT; WITHDRAW (or a HOLD or another RESULT after
        # an approval) until a new approved RESULT.
        self.held: set[str] = set()
        self.withdrawn: set[str] = set()
        self.results: dict[str, f.Message] = {}
        self.errors: list[f.Message] = []
        # Set (and replaced) after every message from the daemon: what ``until`` waits on.
        self._heard = asyncio.Event()
        self._armed: Counter[str] = Counter()
        # Faults that damaged something (not merely armed).
        self.fired: Counter[str] = Counter()

    # --- the line ------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        """Whether a line is attached."""
        return self._line is not None

    @property
    def lane(self) -> int | None:
        """The lane the daemon named in its HELLO_REPLY."""
        text = self.hello_reply.get("lane") if self.hello_reply is not None else None
        return int(text) if text is not None and text.isdigit() else None

    def attach(self, line: Line) -> None:
        """A line opened: a fresh link on it, and HELLO (§5)."""
        if self._line is not None:
            self.detach("replaced by a new line")
        self._line = line
        self._receiver = Receiver()
        self._connections += 1
        self._link = Link(self._now())
        self._trace(f"attached (connection {self._connections})")
        self._start_hello()
        self._arm()

    def detach(self, reason: str) -> None:
        """The line is gone: every send in progress fails, the HELLO must be said again."""
        if self._line is None:
            return
        self._line = None
        self._link = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._trace(f"detached: {reason}")
        self._lose(reason, unknown=tuple(self._sends), not_sent=())

    def bytes_in(self, chunk: bytes) -> None:
        """Bytes arrived on the attached line."""
        link = self._link
        if link is None:
            return
        frames = self._receiver.feed(chunk)
        if self._armed["drop_ack_received"]:
            kept = []
            for frame in frames:
                if (self._armed["drop_ack_received"] and isinstance(frame, Frame)
                        and frame.kind == ACK):
                    self._armed["drop_ack_received"] -= 1
                    self.fired["serial_lost_ack_received"] += 1
                    continue
                kept.append(frame)
            frames = kept
        self._apply(link.received(frames, self._now()))

    # --- fault knobs ---------------------------------------------------------------------

    def inject_noise(self, noise: bytes) -> bool:
        """Put raw bytes on the line outside any frame; False when no line is attached."""
        if self._line is None or not noise:
            return False
        self._line.write(noise)
        self.fired["serial_noise"] += 1
        return True

    def corrupt_next_frame(self) -> None:
        """Send the next message frame with a CRC that cannot match."""
        self._armed["corrupt"] += 1

    def drop_next_ack_sent(self) -> None:
        """Swallow the next ACK this register would send."""
        self._armed["drop_ack_sent"] += 1

    def drop_next_ack_received(self) -> None:
        """Lose the next ACK that arrives, so the frame it answers is sent again."""
        self._armed["drop_ack_received"] += 1

    # --- requests ------------------------------------------------------------------------

    async def hello(self, within: float = HELLO_REPLY_TIMEOUT) -> f.Message:
        """Wait until this connection's HELLO is answered."""
        async with asyncio.timeout(within):
            await self._greeted.wait()
        assert self.hello_reply is not None
        return self.hello_reply

    async def status(self, correlation_id: str, within: float = 60.0) -> Status:
        """STATUS for a sale (§6.1), asked again until answered."""
        reply = await self._exchange(f.STATUS, {"id": correlation_id}, within)
        return Status(correlation_id, reply.get("state") or "", reply.get("handover") == "yes")

    async def handover_check(self, correlation_id: str, within: float = 60.0) -> HandoverReply:
        """HANDOVER_CHECK: may the goods leave now?"""
        reply = await self._exchange(f.HANDOVER_CHECK, {"id": correlation_id}, within)
        return HandoverReply(correlation_id, reply.get("allowed") == "yes", reply.get("reason"))

    async def handover_done(self, correlation_id: str, within: float = 60.0) -> None:
        """HANDOVER_DONE: the goods left (its link ACK is the receipt)."""
        await self._exchange(f.HANDOVER_DONE, {"id": correlation_id}, within)

    async def cancel(self, correlation_id: str, within: float = 60.0) -> None:
        """CANCEL: the sale's RESULT says what came of it."""
        await self._exchange(f.CANCEL, {"id": correlation_id}, within)

    async def until(self, condition: Callable[[], bool], within: float) -> None:
        """Wait until ``condition`` holds after something the daemon said (TimeoutError)."""
        async with asyncio.timeout(within):
            while not condition():
                await self._heard.wait()

    def may_hand_over(self, correlation_id: str) -> bool:
        """Whether the goods may leave on what the daemon said (§9 item 7)."""
        result = self.results.get(correlation_id)
        return (result is not None and result.get("outcome") == "approved"
                and correlation_id not in self.withdrawn and correlation_id not in self.held)

    async def sale(self, correlation_id: str, amount_cents: int, *,
                   terminal: str | None = None, within: float = SALE_RESULT_TIMEOUT) -> Result:
        """Sell: SALE, then its RESULT, riding out reconnects as §7 says."""
        request = {"id": correlation_id, "amount": f.amount_text(amount_cents)}
        if terminal is not None:
            request["terminal"] = terminal
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        result = self._expect(f.RESULT, correlation_id)
        try:
            asked_before = False
            while True:
                if asked_before:
                    # §7: after a reconnect, STATUS for the sale first; act on the answer.
                    status = await self._status_before(correlation_id, deadline)
                    if status.outcome is not None:
                        return self._from_status(status)
                    resend = status.state == f.UNKNOWN_STATE
                else:
                    resend = True
                lost = self._lost
                if resend:
                    asked_before = True
                    try:
                        await self._send_when_greeted(f.SALE, request, deadline)
                    except LinkTrouble:
                        continue
                ended = await self._wait_either(result, lost, deadline)
                if ended and _hello_was_required(result):
                    # The daemon did not take the SALE: HELLO, then the same SALE again.
                    result = self._expect(f.RESULT, correlation_id)
                    asked_before = False
                    continue
                if ended:
                    return self._result(result.result(), correlation_id)
                if loop.time() >= deadline:
                    status = await self._status_before(correlation_id, loop.time() + 60.0)
                    if status.outcome is not None:
                        return self._from_status(status)
                    raise NoResult(f"{correlation_id}: no RESULT in {within:g} s; "
                                   f"STATUS says {status.state}")
        finally:
            self._forget(f.RESULT, correlation_id, result)

    # --- exchanges -----------------------------------------------------------------------

    async def _status_before(self, correlation_id: str, deadline: float) -> Status:
        remaining = max(deadline - asyncio.get_running_loop().time(), REPLY_TIMEOUT)
        return await self.status(correlation_id, within=remaining)

    async def _wait_either(self, result: asyncio.Future[f.Message], lost: asyncio.Event,
                           deadline: float) -> bool:
        """True once the result came; False when the line was lost or the time ran out."""
        loss = asyncio.ensure_future(lost.wait())
        try:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            waited: list[asyncio.Future[Any]] = [result, loss]
            await asyncio.wait(waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loss.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loss
        return result.done()

    async def _exchange(self, kind: str, request: dict[str, str], within: float) -> f.Message:
        """Send a request until it is answered (or, without an answer, acknowledged)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        reply_kind = REPLY_OF[kind]
        correlation_id = request["id"]
        while True:
            waiter = self._expect(reply_kind, correlation_id) if reply_kind else None
            try:
                await self._send_when_greeted(kind, request, deadline)
                if waiter is None:
                    return f.Message(kind, request)
                timeout = min(REPLY_TIMEOUT, max(0.0, deadline - loop.time()))
                async with asyncio.timeout(timeout):
                    return await asyncio.shield(waiter)
            except (LinkTrouble, TimeoutError):
                if loop.time() >= deadline:
                    raise NoResult(f"{kind} {correlation_id}: no answer in {within:g} s") from None
            except Refused as exc:
                if exc.code != HELLO_REQUIRED:
                    raise
            finally:
                if waiter is not None:
                    self._forget(reply_kind or "", correlation_id, waiter)

    async def _send_when_greeted(self, kind: str, request: dict[str, str],
                                 deadline: float) -> None:
        """Wait for this connection's HELLO_REPLY, then send and wait for the ACK."""
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            async with asyncio.timeout(timeout):
                await self._greeted.wait()
        except TimeoutError:
            raise LinkTrouble("the daemon has not answered HELLO") from None
        sent = self._requests.setdefault(request["id"], [])
        sent.append((kind, request))
        del sent[:-REQUESTS_REMEMBERED]
        await self._send(kind, request)

    async def _send(self, kind: str, request: dict[str, str]) -> None:
        link = self._link
        if link is None or self._line is None:
            raise LinkTrouble("no line")
        type_byte, data = f.encode(kind, request)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tag, actions = link.send(type_byte, data, self._now())
        self._sends[tag] = future
        self._trace(f"send {kind} {request}")
        self._apply(actions)
        await asyncio.shield(future)

    def _expect(self, kind: str, correlation_id: str) -> asyncio.Future[f.Message]:
        future: asyncio.Future[f.Message] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((kind, correlation_id), []).append(future)
        return future

    def _forget(self, kind: str, correlation_id: str, future: asyncio.Future[f.Message]) -> None:
        waiting = self._waiters.get((kind, correlation_id), [])
        if future in waiting:
            waiting.remove(future)
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # retrieved: an ERROR no one waited for is not reported

    def _resolve(self, kind: str, correlation_id: str, message: f.Message) -> None:
        for future in self._waiters.pop((kind, correlation_id), []):
            if not future.done():
                future.set_result(message)

    def _result(self, message: f.Message, correlation_id: str) -> Result:
        return Result(correlation_id, message.get("outcome") or "", message.get("reason"),
                      message.get("payment"))

    def _from_status(self, status: Status) -> Result:
        assert status.outcome is not None
        return Result(status.correlation_id, status.outcome, status.state, from_status=True)

    # --- HELLO ---------------------------------------------------------------------------

    def _start_hello(self) -> None:
        self._greeted.clear()
        self.hello_reply = None
        if self._hello_task is not None:
            self._hello_task.cancel()
        self._hello_task = asyncio.get_running_loop().create_task(
            self._say_hello(), name=f"ecr-hello-{self.name}")

    async def _say_hello(self) -> None:
        request = {"versions": ",".join(self._versions), "register": self.name}
        waiter: asyncio.Future[f.Message] | None = None
        try:
            while not self.version_refused:
                waiter = self._expect(f.HELLO_REPLY, "")
                try:
                    await self._send(f.HELLO, request)
                    async with asyncio.timeout(HELLO_REPLY_TIMEOUT):
                        self.hello_reply = await asyncio.shield(waiter)
                except (LinkTrouble, TimeoutError):
                    if self._line is None:
                        return  # the next attach says HELLO again
                    continue
                except Refused:
                    return  # unsupported_version: no requests on this installation
                finally:
                    self._forget(f.HELLO_REPLY, "", waiter)
                self._trace(f"greeted: {dict(self.hello_reply.fields)}")
                self._greeted.set()
                return
        except asyncio.CancelledError:
            return

    # --- what arrives --------------------------------------------------------------------

    def _on_message(self, message: f.Message) -> None:
        kind = message.kind
        correlation_id = message.get("id") or ""
        self._trace(f"recv {kind} {dict(message.fields)}")
        if kind == f.HELLO_REPLY:
            self._resolve(f.HELLO_REPLY, "", message)
        elif kind == f.DISPLAY:
            self.display = tuple(message.get(f"l{n}") or "" for n in range(1, 5))
        elif kind == f.RESULT:
            previous = self.results.get(correlation_id)
            if (previous is not None and previous.get("outcome") == "approved"
                    and message.get("outcome") != "approved"):
                self.withdrawn.add(correlation_id)  # §6.2: a RESULT after an approval
            if message.get("outcome") == "approved":
                self.withdrawn.discard(correlation_id)
            self.held.discard(correlation_id)
            self.results[correlation_id] = message
            self._resolve(f.RESULT, correlation_id, message)
        elif kind == f.HOLD:
            previous = self.results.get(correlation_id)
            if previous is not None and previous.get("outcome") == "approved":
                self.withdrawn.add(correlation_id)  # §6.2: a HOLD after an approval
            self.held.add(correlation_id)
        elif kind == f.RELEASE:
            self.held.discard(correlation_id)
        elif kind == f.WITHDRAW:
            self.withdrawn.add(correlation_id)
        elif kind in (f.STATUS_REPLY, f.HANDOVER_REPLY):
            self._resolve(kind, correlation_id, message)
        elif kind == f.ERROR:
            self._on_error(message)
        heard, self._heard = self._heard, asyncio.Event()
        heard.set()

    def _on_error(self, message: f.Message) -> None:
        self.errors.append(message)
        code = message.get("code") or ""
        refused = Refused(code, message.get("text") or "")
        correlation_id = message.get("id")
        if correlation_id is None:
            # Only a HELLO carries no id (§6.3 unsupported_version).
            self.version_refused = code == UNSUPPORTED_VERSION
            self._fail(f.HELLO_REPLY, "", refused)
            return
        if code != HELLO_REQUIRED:
            # §6.3 names the requests some codes answer: unknown_sale never answers a SALE.
            kinds = ANSWERED_BY.get(code)
            sent = [kind for kind, _ in self._requests.get(correlation_id, [])
                    if kinds is None or kind in kinds]
            reply_kind = REPLY_OF.get(sent[-1]) if sent else None
            if reply_kind is not None:
                self._fail(reply_kind, correlation_id, refused)
            return
        # §5: the daemon took none of the requests sent before its HELLO was answered, and
        # answers each with hello_required in order; the first such ERROR settles them all.
        self._start_hello()
        for kind, fields in self._requests.pop(correlation_id, []):
            reply_kind = REPLY_OF.get(kind)
            if reply_kind is not None:
                self._fail(reply_kind, correlation_id, refused)
                continue
            # A CANCEL or HANDOVER_DONE has no answer to fail: repeat it after the HELLO.
            task = asyncio.get_running_loop().create_task(
                self._repeat(kind, fields), name=f"ecr-repeat-{self.name}")
            self._repeats.add(task)
            task.add_done_callback(self._repeats.discard)

    async def _repeat(self, kind: str, request: dict[str, str]) -> None:
        with contextlib.suppress(RegisterError):
            await self._exchange(kind, request, REPLY_TIMEOUT * 6)

    def _fail(self, kind: str, correlation_id: str, error: RegisterError) -> None:
        for future in self._waiters.pop((kind, correlation_id), []):
            if not future.done():
                future.set_exception(error)

    # --- the link ------------------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Write):
                self._write(action)
            elif isinstance(action, Deliver):
                try:
                    message = f.decode(action.kind, action.data)
                except f.MessageError as exc:
                    self._trace(f"undecodable message: {exc}")
                    continue
                self._on_message(message)
            elif isinstance(action, Confirmed):
                future = self._sends.pop(action.tag, None)
                if future is not None and not future.done():
                    future.set_result(None)
            elif isinstance(action, Down):
                self._trace(f"link down: {action.reason}")
                unknown = () if action.unknown is None else (action.unknown,)
                self._lose(action.reason, unknown=unknown, not_sent=action.not_sent)
                if self._line is not None:
                    self._start_hello()  # §5: HELLO after every link-down
        self._arm()

    def _write(self, action: Write) -> None:
        line = self._line
        if line is None:
            return
        data = action.data
        if action.kind == ACK and self._armed["drop_ack_sent"]:
            self._armed["drop_ack_sent"] -= 1
            self.fired["serial_lost_ack_sent"] += 1
            return
        if action.kind not in (ACK, NAK, ENQ) and self._armed["corrupt"]:
            self._armed["corrupt"] -= 1
            self.fired["serial_corrupt_frame"] += 1
            body = bytes((action.seq, action.kind)) + action.payload
            bad = crc16(body) ^ 0xFFFF
            data = bytes((STX,)) + stuff(body + bad.to_bytes(2, "big")) + bytes((0x03,))
        line.write(data)

    def _lose(self, reason: str, *, unknown: tuple[int, ...], not_sent: tuple[int, ...]) -> None:
        self._greeted.clear()
        self.hello_reply = None
        for tag in (*unknown, *not_sent):
            future = self._sends.pop(tag, None)
            if future is not None and not future.done():
                what = "outcome unknown" if tag in unknown else "not sent"
                future.set_exception(LinkTrouble(f"{reason} ({what})"))
        lost, self._lost = self._lost, asyncio.Event()
        lost.set()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        link = self._link
        if link is None:
            return
        self._timer = asyncio.get_running_loop().call_at(link.deadline(), self._tick)

    def _tick(self) -> None:
        self._timer = None
        link = self._link
        if link is not None:
            self._apply(link.tick(self._now()))

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _trace(self, line: str) -> None:
        if self._on_trace is not None:
            self._on_trace(f"{self.name}: {line}")

    async def close(self) -> None:
        """Stop: detach the line and end the HELLO task."""
        self.detach("closed")
        tasks = [*self._repeats, *([self._hello_task] if self._hello_task else [])]
        self._hello_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
