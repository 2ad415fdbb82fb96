"""A cash register built from the daemon's own link and message codec, in the register's role.

Theory of operation
-------------------
The emulator owns one side of the wire — a pty whose slave the daemon opens, or a TCP
listener the daemon reaches with ``socket://`` — and runs ``ArqConnection`` over it with
the same frames and ARQ rules as the daemon. It behaves as docs/register-protocol.md asks
of a register vendor:

* HELLO before any request on each connection, and again whenever the daemon answers
  ``hello_required`` (the daemon restarted or reopened its port);
* a SALE whose link failed is never replaced by a new sale: after reconnecting the
  emulator asks STATUS for it, takes a final state as the answer, re-sends the SALE with
  the same correlation id only if the daemon does not know it, and otherwise keeps
  waiting for the RESULT;
* every DISPLAY replaces the screen (``display``, ``on_display``);
* goods leave only on an approval that still stands: ``hand_over`` sends HANDOVER_DONE
  after an approved RESULT (or a STATUS saying ``handover=yes``), and refuses while the
  sale is held or after a WITHDRAW, until a new approved RESULT.

Fault knobs (``drop_next_ack_sent``, ``drop_next_ack_received``, ``corrupt_next_frame``,
``inject_noise``, ``unplug``/``replug``) damage the wire the way cables and adapters do.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from pointd.core.states import FINAL_STATES, SaleState
from pointd.link.arq import LinkTimers
from pointd.link.driver import ArqConnection
from pointd.link.errors import LinkError
from pointd.link.ports import Port, SocketPort
from pointd.register import messages as msg
from pointd.sim.register.ports import FaultyPort, FdPort

log = structlog.get_logger(__name__)

# Application timers of the register role (docs/register-protocol.md, "Timers").
HELLO_REPLY_TIMEOUT = 5.0  # HELLO_REPLY normally follows the ACK within milliseconds
REPLY_TIMEOUT = 5.0  # STATUS_REPLY / HANDOVER_REPLY come from the journal, not the cloud
# Mercado Pago abandons an unpaid intent after 15 minutes; the RESULT comes before that.
SALE_RESULT_TIMEOUT = 20 * 60.0
# Pause between connection attempts while the daemon is absent.
RECONNECT_PAUSE = 0.2

_FINAL_OUTCOMES = {
    SaleState.APPROVED: msg.Outcome.APPROVED,
    SaleState.OVERRIDDEN: msg.Outcome.APPROVED,
    SaleState.HANDOVER_UNCONFIRMED: msg.Outcome.APPROVED,
    # Paid, and the goods already left: an approved sale with nothing more to hand over.
    SaleState.HANDED_OVER: msg.Outcome.APPROVED,
    SaleState.DECLINED: msg.Outcome.DECLINED,
    SaleState.CANCELED: msg.Outcome.CANCELED,
    SaleState.FAILED: msg.Outcome.ERROR,
    SaleState.ABANDONED: msg.Outcome.ABANDONED,
}


class EmulatorError(Exception):
    """The emulated register could not complete a request."""


class DaemonRejected(EmulatorError):
    """The daemon answered with ERROR."""

    def __init__(self, error: msg.Error) -> None:
        super().__init__(f"{error.code.value}: {error.text}")
        self.error = error


@dataclass(frozen=True)
class SaleOutcome:
    """How a sale ended, from its RESULT or from a STATUS after a reconnect."""

    correlation_id: str
    outcome: msg.Outcome
    payment_id: str | None = None
    card_last4: str | None = None
    reason: str | None = None
    from_status: bool = False
    # Whether the goods may leave now: an approved RESULT, or STATUS handover=yes. False
    # for every other outcome, and for a sale whose goods already left (handed_over).
    may_hand_over: bool = False


def outcome_from_status(reply: msg.StatusReply) -> SaleOutcome | None:
    """The final outcome a STATUS_REPLY reports, or None while the sale is in progress."""
    try:
        state = SaleState(reply.state)
    except ValueError:
        return None
    if state not in FINAL_STATES and state is not SaleState.APPROVED:
        return None
    return SaleOutcome(
        reply.correlation_id,
        _FINAL_OUTCOMES[state],
        reply.payment_id,
        reply.card_last4,
        reason=state.value,
        from_status=True,
        may_hand_over=reply.handover,
    )


def _hello_required(future: asyncio.Future[msg.Message]) -> bool:
    error = None if future.cancelled() else future.exception()
    return isinstance(error, DaemonRejected) and error.error.code is msg.ErrorCode.HELLO_REQUIRED


class RegisterEmulator:
    """An emulated cash register on a pty or a TCP socket."""

    def __init__(
        self,
        *,
        timers: LinkTimers | None = None,
        register_name: str = "pointd-sim",
        versions: tuple[str, ...] = (msg.PROTOCOL_VERSION,),
    ) -> None:
        self._timers = timers
        self._register_name = register_name
        self._versions = versions
        self._port: FaultyPort | None = None
        self._connection: ArqConnection | None = None
        self._hello: msg.HelloReply | None = None
        self._hello_lock = asyncio.Lock()
        self._waiters: dict[tuple[msg.MessageType, str], list[asyncio.Future[msg.Message]]] = {}
        self._display_callbacks: list[Callable[[msg.Display], None]] = []
        # Replaced at every loss, so a waiter that took it before sending cannot miss one.
        self._loss = asyncio.Event()
        self._ids = itertools.count(1)
        self._closed = False
        self.display: tuple[str, ...] = ()
        self.severity: msg.Severity | None = None
        self.held: set[str] = set()
        # Sales whose approved RESULT the daemon withdrew (until a new approved RESULT).
        self.withdrawn: set[str] = set()
        # Sales whose goods this register reported gone (HANDOVER_DONE acknowledged).
        self.handed_over: set[str] = set()
        self.received: list[msg.Message] = []
        self.errors: list[msg.Error] = []
        self.hellos_sent = 0
        self.device_path = ""
        # pty mode
        self._link_path: Path | None = None
        self._master: int | None = None
        self._slave: int | None = None
        # socket mode
        self._listener: socket.socket | None = None

    # --- opening ----------------------------------------------------------------------

    @classmethod
    async def open_pty(
        cls,
        link_path: Path | None = None,
        *,
        timers: LinkTimers | None = None,
        register_name: str = "pointd-sim",
        versions: tuple[str, ...] = (msg.PROTOCOL_VERSION,),
    ) -> RegisterEmulator:
        """Emulate a register on a new pty; ``link_path`` is a stable symlink to its slave."""
        emulator = cls(timers=timers, register_name=register_name, versions=versions)
        emulator._link_path = link_path
        emulator._plug_pty()
        return emulator

    @classmethod
    async def open_socket(
        cls,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        timers: LinkTimers | None = None,
        register_name: str = "pointd-sim",
        versions: tuple[str, ...] = (msg.PROTOCOL_VERSION,),
    ) -> RegisterEmulator:
        """Emulate a register listening on ``host:port`` (0 picks a free port)."""
        emulator = cls(timers=timers, register_name=register_name, versions=versions)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1)
        listener.setblocking(False)
        emulator._listener = listener
        bound_host, bound_port = listener.getsockname()[:2]
        emulator.device_path = f"socket://{bound_host}:{bound_port}"
        asyncio.get_running_loop().add_reader(listener.fileno(), emulator._on_accept)
        return emulator

    def _plug_pty(self) -> None:
        master, slave = os.openpty()
        # The daemon's pyserial makes the line raw when it opens it; until then a cooked
        # line would echo our frames back to us.
        tty.setraw(slave)
        self._master, self._slave = master, slave
        slave_name = os.ttyname(slave)
        if self._link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link_path.unlink()
            self._link_path.symlink_to(slave_name)
            self.device_path = str(self._link_path)
        else:
            self.device_path = slave_name
        self._attach(FdPort(master))

    def _on_accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _address = self._listener.accept()
        except BlockingIOError:
            return
        if self._port is not None:
            sock.close()  # one daemon at a time, as on a serial line
            return
        self._attach(SocketPort(sock))

    def _attach(self, port: Port) -> None:
        self._port = FaultyPort(port)
        self._connect()

    def _connect(self) -> None:
        port = self._port
        assert port is not None
        self._hello = None
        self._connection = ArqConnection(
            port, on_payload=self._on_payload, on_lost=self._on_lost, timers=self._timers
        )

    def _on_lost(self, reason: str) -> None:
        log.info("sim.register.link_lost", reason=reason)
        self._hello = None
        loss, self._loss = self._loss, asyncio.Event()
        loss.set()
        port = self._port
        if port is None or self._closed:
            return
        if port.broken:
            # The other end is gone (socket closed): wait for the next daemon.
            with contextlib.suppress(OSError):
                port.close()
            self._port = None
            self._connection = None
            return
        # Only the ARQ gave up (no ACKs): the wire is still ours, start over on it.
        asyncio.get_running_loop().call_soon(self._reconnect_same_port)

    def _reconnect_same_port(self) -> None:
        current = self._connection
        if self._port is not None and not self._closed and not (current and current.is_open):
            self._connect()

    # --- fault knobs ------------------------------------------------------------------

    def drop_next_ack_sent(self) -> None:
        """Do not send the ACK for the next frame from the daemon."""
        if self._port is not None:
            self._port.drop_next_ack_sent = True

    def drop_next_ack_received(self) -> None:
        """Lose the daemon's next ACK, so our frame is retransmitted."""
        self.drop_acks_received(1)

    def drop_acks_received(self, count: int) -> None:
        """Lose the daemon's next ``count`` ACKs (MAX_SEND_ATTEMPTS of them: link down)."""
        if self._port is not None:
            self._port.acks_to_drop_received = count

    def restart_link(self) -> None:
        """Start the link again as a register does after declaring it down: SEQ from 01."""
        if self._connection is None:
            raise EmulatorError("the register is not connected")
        self._connection.close("the register restarted its link")
        self._connect()

    def corrupt_next_frame(self) -> None:
        """Send our next message frame with a wrong CRC."""
        if self._port is not None:
            self._port.corrupt_next_frame_sent = True

    def inject_noise(self, noise: bytes) -> None:
        """Put raw bytes on the wire, outside any frame."""
        if self._connection is not None:
            self._connection.write_raw(noise)

    async def unplug(self) -> None:
        """Pull the cable: close the pty (and remove the stable symlink)."""
        if self._master is None:
            raise EmulatorError("unplug works on a pty emulator")
        self._drop_port()
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        if self._link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link_path.unlink()

    async def replug(self) -> None:
        """Plug the cable back: a new pty behind the same symlink."""
        if self._port is not None:
            raise EmulatorError("the emulator is plugged in")
        self._plug_pty()

    def _drop_port(self) -> None:
        connection, port = self._connection, self._port
        self._connection, self._port, self._master = None, None, None
        if connection is not None:
            connection.close("unplugged")
        if port is not None:
            with contextlib.suppress(OSError):
                port.close()

    async def close(self) -> None:
        """Stop emulating and release the pty or socket."""
        self._closed = True
        self._drop_port()
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        if self._link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link_path.unlink()
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(EmulatorError("emulator closed"))
        self._waiters.clear()

    # --- what the register sees -------------------------------------------------------

    def on_display(self, callback: Callable[[msg.Display], None]) -> None:
        """Call ``callback`` with every DISPLAY, after the screen was updated."""
        self._display_callbacks.append(callback)

    @property
    def lane(self) -> int | None:
        """The lane the daemon gave us in HELLO_REPLY on this connection."""
        return self._hello.lane if self._hello else None

    def _on_payload(self, payload: bytes) -> None:
        try:
            message = msg.decode_message(payload)
        except msg.MessageError as exc:
            log.warning("sim.register.bad_message", code=exc.code.value, text=exc.text)
            return
        self.received.append(message)
        if isinstance(message, msg.Display):
            self.display, self.severity = message.lines, message.severity
            for callback in self._display_callbacks:
                callback(message)
        elif isinstance(message, msg.Hold):
            self.held.add(message.correlation_id)
        elif isinstance(message, msg.Release):
            self.held.discard(message.correlation_id)
        elif isinstance(message, msg.Withdraw):
            self.withdrawn.add(message.correlation_id)
        elif isinstance(message, msg.HelloReply):
            self._hello = message
            self._resolve((msg.MessageType.HELLO_REPLY, ""), message)
        elif isinstance(message, msg.Result):
            self.held.discard(message.correlation_id)
            if message.outcome is msg.Outcome.APPROVED:
                self.withdrawn.discard(message.correlation_id)
            self._resolve((msg.MessageType.RESULT, message.correlation_id), message)
        elif isinstance(message, msg.StatusReply):
            self._resolve((msg.MessageType.STATUS_REPLY, message.correlation_id), message)
        elif isinstance(message, msg.HandoverReply):
            self._resolve((msg.MessageType.HANDOVER_REPLY, message.correlation_id), message)
        elif isinstance(message, msg.RefundResult):
            self._resolve((msg.MessageType.REFUND_RESULT, message.correlation_id), message)
        elif isinstance(message, msg.Error):
            self.errors.append(message)
            self._fail_waiters(message)

    def _resolve(self, key: tuple[msg.MessageType, str], message: msg.Message) -> None:
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(message)

    def _fail_waiters(self, error: msg.Error) -> None:
        wanted = error.correlation_id or ""
        for key in [key for key in self._waiters if key[1] == wanted]:
            for future in self._waiters.pop(key):
                if not future.done():
                    future.set_exception(DaemonRejected(error))

    def _expect(self, kind: msg.MessageType, correlation_id: str) -> asyncio.Future[msg.Message]:
        future: asyncio.Future[msg.Message] = asyncio.get_running_loop().create_future()
        # A waiter abandoned by a timeout may still be failed at close(); mark it read.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiters.setdefault((kind, correlation_id), []).append(future)
        return future

    # --- requests ---------------------------------------------------------------------

    def new_correlation_id(self) -> str:
        """A correlation id unique to this emulator run."""
        return f"sim-{os.getpid()}-{next(self._ids)}"

    async def send_message(self, message: msg.RegisterMessage) -> None:
        """Send one message as is (no HELLO first); raise LinkError if it did not go."""
        await self.send_payload(message.to_payload())

    async def send_payload(self, payload: bytes) -> None:
        """Send raw payload bytes in a frame (for testing the daemon's error answers)."""
        connection = self._connection
        if connection is None:
            raise EmulatorError("the register is not connected")
        await connection.send(payload)

    async def hello(self, within: float = HELLO_REPLY_TIMEOUT) -> msg.HelloReply:
        """Shake hands on this connection, retrying while the daemon is absent."""
        async with self._hello_lock:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            while self._hello is None:
                if loop.time() >= deadline:
                    raise EmulatorError("no HELLO_REPLY from the daemon")
                future = self._expect(msg.MessageType.HELLO_REPLY, "")
                try:
                    self.hellos_sent += 1
                    await self.send_message(msg.Hello(self._versions, self._register_name))
                    # The protocol's HELLO_REPLY_TIMEOUT: no answer, say HELLO again.
                    async with asyncio.timeout(
                            max(0.0, min(HELLO_REPLY_TIMEOUT, deadline - loop.time()))):
                        await future
                except (LinkError, EmulatorError, TimeoutError) as exc:
                    if isinstance(exc, DaemonRejected):
                        raise
                    await asyncio.sleep(RECONNECT_PAUSE)
            return self._hello

    async def _request(
        self,
        message: msg.RegisterMessage,
        reply_kind: msg.MessageType,
        within: float,
    ) -> msg.Message:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        correlation_id = getattr(message, "correlation_id", "")
        while True:
            await self.hello(max(0.1, deadline - loop.time()))
            future = self._expect(reply_kind, correlation_id)
            try:
                await self.send_message(message)
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    return await future
            except DaemonRejected as exc:
                if exc.error.code is not msg.ErrorCode.HELLO_REQUIRED:
                    raise
                self._hello = None
            except (LinkError, EmulatorError):
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(RECONNECT_PAUSE)

    async def status(self, correlation_id: str, within: float = REPLY_TIMEOUT) -> msg.StatusReply:
        """Ask what happened to a sale."""
        reply = await self._request(
            msg.Status(correlation_id), msg.MessageType.STATUS_REPLY, within
        )
        assert isinstance(reply, msg.StatusReply)
        return reply

    async def handover_check(
        self, correlation_id: str, within: float = REPLY_TIMEOUT
    ) -> msg.HandoverReply:
        """Ask whether the goods may leave."""
        reply = await self._request(
            msg.HandoverCheck(correlation_id), msg.MessageType.HANDOVER_REPLY, within
        )
        assert isinstance(reply, msg.HandoverReply)
        return reply

    async def handover_done(self, correlation_id: str) -> None:
        """Report that the goods left (acknowledged by the link, no reply), whatever we hold."""
        await self.hello()
        await self.send_message(msg.HandoverDone(correlation_id))

    def may_hand_over(self, outcome: SaleOutcome) -> bool:
        """Whether the goods of this sale may leave now, by everything the daemon said."""
        cid = outcome.correlation_id
        return (outcome.outcome is msg.Outcome.APPROVED and outcome.may_hand_over
                and cid not in self.withdrawn and cid not in self.held
                and cid not in self.handed_over)

    async def hand_over(self, outcome: SaleOutcome) -> bool:
        """Give the goods and send HANDOVER_DONE, if the approval still stands; say whether."""
        if not self.may_hand_over(outcome):
            return False
        await self.handover_done(outcome.correlation_id)
        self.handed_over.add(outcome.correlation_id)
        return True

    async def cancel(self, correlation_id: str) -> None:
        """Ask the daemon to cancel a sale; its RESULT says whether it was canceled."""
        await self.hello()
        await self.send_message(msg.Cancel(correlation_id))

    async def refund(
        self,
        sale_correlation_id: str,
        amount_cents: int | None = None,
        correlation_id: str | None = None,
        within: float = SALE_RESULT_TIMEOUT,
    ) -> msg.RefundResult:
        """Refund (part of) a sale and wait for its REFUND_RESULT; repeats are the same refund.

        After a link drop the REFUND is sent again with the same correlation id: the daemon
        answers a repeat with the same refund's standing, never a second refund.
        """
        cid = correlation_id or self.new_correlation_id()
        reply = await self._request(
            msg.Refund(cid, sale_correlation_id, amount_cents),
            msg.MessageType.REFUND_RESULT,
            within,
        )
        assert isinstance(reply, msg.RefundResult)
        return reply

    async def sale(
        self,
        amount_cents: int,
        correlation_id: str | None = None,
        terminal_id: str | None = None,
        within: float = SALE_RESULT_TIMEOUT,
    ) -> SaleOutcome:
        """Run one sale to its outcome, recovering through STATUS if the link drops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        cid = correlation_id or self.new_correlation_id()
        request = msg.Sale(cid, amount_cents, terminal_id)
        result = self._expect(msg.MessageType.RESULT, cid)
        loss = self._loss
        await self._send_sale(request, deadline)
        while True:
            lost = asyncio.ensure_future(loss.wait())
            try:
                await asyncio.wait(
                    (result, lost),
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                lost.cancel()
            if result.done():
                if _hello_required(result):
                    self._hello = None
                    result = self._expect(msg.MessageType.RESULT, cid)
                    loss = self._loss
                    await self._send_sale(request, deadline)
                    continue
                answer = result.result()
                assert isinstance(answer, msg.Result)
                return SaleOutcome(
                    cid, answer.outcome, answer.payment_id, answer.card_last4, answer.reason,
                    may_hand_over=answer.outcome is msg.Outcome.APPROVED,
                )
            if loop.time() >= deadline:
                raise EmulatorError(f"no RESULT for sale {cid}")
            # The link dropped mid-sale: ask, never repeat blindly.
            loss = self._loss
            status = await self.status(cid, within=max(0.1, deadline - loop.time()))
            final = outcome_from_status(status)
            if final is not None:
                self._waiters.pop((msg.MessageType.RESULT, cid), None)
                return final
            if status.state == msg.UNKNOWN_STATE:
                await self._send_sale(request, deadline)

    async def _send_sale(self, request: msg.Sale, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.hello(max(0.1, deadline - loop.time()))
            try:
                await self.send_message(request)
                return
            except (LinkError, EmulatorError):
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(RECONNECT_PAUSE)
