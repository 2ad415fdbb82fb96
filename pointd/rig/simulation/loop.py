"""The simulation's event loop: virtual time, processes that can die, and no real I/O.

Theory of operation
-------------------
``SimLoop`` is an asyncio event loop whose clock is a number it moves itself. Whenever
nothing is ready to run, it jumps straight to the next timer instead of waiting for it, so
hours of a store's life pass in seconds and every run of the same program takes the same
path: there is no real time, no thread and no socket whose timing could differ.

* **Processes.** Each simulated OS process (the daemon, the relay, the cloud) is a
  ``Process``: a context variable set in the ``contextvars.Context`` its tasks run in. Every
  callback the loop schedules is bound to the process current when it was scheduled, and
  ``kill`` marks the process dead: from then on none of its callbacks runs, its pending
  coroutines are closed where they stand, and the cleanups the kernel would make (closing
  its files and sockets, releasing its locks) run. That is a SIGKILL: nothing of the dead
  process's memory survives, and it never runs another line of its own code afterwards.
* **Virtual descriptors.** ``add_reader``/``add_writer`` accept the numbers that
  ``new_fd`` hands out for in-memory endpoints (``VirtualFd``); readiness is level-triggered
  as with a real selector.
* **Executors** run their function at once on the loop's thread (the relay's SQLite calls);
  the result is delivered on a later turn, as a worker thread's would be.
* **Unix sockets.** ``create_unix_server`` and ``create_unix_connection`` connect in memory
  (the daemon's control socket and the supervisor's ``pointctl``-like client). Any other
  network call is refused: the simulation reaches everything through the daemon's ports.
* **Hangs are bugs.** If nothing is ready and no timer is armed, the program can never go
  on: ``Deadlock``. A million turns without the clock moving is a busy loop: ``Livelock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import itertools
import os
import random
import socket
import struct
import sys
import weakref
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, TypeVarTuple, Unpack, cast

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

PROCESS: contextvars.ContextVar[Process | None] = contextvars.ContextVar(
    "pointd_simulated_process", default=None
)
# Callbacks run on behalf of no process (a dead process's are dropped, these are not).
_KERNEL = contextvars.Context()
# Virtual descriptors are numbered far above any real one, so a mix-up fails loudly.
FIRST_VIRTUAL_FD = 1 << 20
# How often a dead process's coroutine is closed again while its finally blocks await.
CLOSE_ATTEMPTS = 100
# The loop collects cyclic garbage every this many turns (automatic collection is off).
GC_TURNS = 20_000
# Turns of the loop at one instant before a busy loop is declared.
LIVELOCK_TURNS = 1_000_000
_READ = 1
_WRITE = 2
# What the kernel reports as SO_PEERCRED for a unix-socket peer: pid, uid, gid.
_PEERCRED = struct.Struct("3i")


class SimulationError(RuntimeError):
    """The simulated program can make no more progress."""


class Deadlock(SimulationError):
    """Nothing is ready and no timer is armed: every task waits for something that never comes."""


class Livelock(SimulationError):
    """The loop turned a million times without its clock moving."""


class VirtualFd(Protocol):
    """An in-memory endpoint the loop can watch."""

    def readable(self) -> bool:
        """Whether a read would return data or fail now."""
        ...

    def writable(self) -> bool:
        """Whether a write would take data now."""
        ...


class Process:
    """A simulated OS process: its tasks, its callbacks and what dies with it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.alive = True
        # Its unfinished tasks in the order they were made (a set's order would follow
        # memory addresses, and a kill must close them in the same order every run).
        self.tasks: dict[asyncio.Task[Any], None] = {}
        # Run when it is killed, last first: what the kernel closes for a dead process;
        # ``after_death`` once its coroutines are closed too.
        self.on_death: list[Callable[[], None]] = []
        self.after_death: list[Callable[[], None]] = []
        self._context = contextvars.copy_context()
        self._context.run(PROCESS.set, self)

    def __repr__(self) -> str:
        return f"Process({self.name!r}, alive={self.alive})"

    def finished(self, task: asyncio.Future[Any]) -> None:
        """A task of this process ended."""
        self.tasks.pop(task, None)  # type: ignore[call-overload]

    def forget_if_dead(self, future: asyncio.Future[Any]) -> None:
        """A dead process's future failing is no one's unretrieved error: nobody is left."""
        if not self.alive and not future.cancelled():
            future.exception()

    def context(self) -> contextvars.Context:
        """A fresh context belonging to this process, for one task or callback."""
        return self._context.copy()

    def run(self, function: Callable[..., _T], *args: Any) -> _T:
        """Call ``function`` as this process (what it schedules belongs to it)."""
        return self.context().run(function, *args)

    def spawn(self, coroutine: Coroutine[Any, Any, _T], name: str) -> asyncio.Task[_T]:
        """Start a task of this process."""
        return asyncio.get_running_loop().create_task(coroutine, name=name,
                                                      context=self.context())


class _Guarded:
    """A callback that runs only while the process that scheduled it lives."""

    __slots__ = ("_callback", "_process")

    def __init__(self, process: Process, callback: Callable[..., object]) -> None:
        self._process = process
        self._callback = callback

    def __call__(self, *args: Any) -> None:
        if self._process.alive:
            self._callback(*args)

    def __repr__(self) -> str:
        return f"<{self._process.name}: {self._callback!r}>"


def _process_of(context: contextvars.Context | None) -> Process | None:
    return context.get(PROCESS) if context is not None else PROCESS.get()


class _Selector:
    """The loop's selector: reports ready virtual descriptors, or moves the clock."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop
        self._turns_at_instant = 0
        self._turns = 0

    def select(self, timeout: float | None) -> list[tuple[int, int]]:
        loop = self._loop
        self._turns += 1
        if self._turns % GC_TURNS == 0:
            # Collected garbage schedules work (an async generator's close): at a fixed
            # turn, not whenever the allocator decides, or a run would not replay.
            gc.collect()
        events = loop.ready_descriptors()
        if events or timeout == 0:
            self._turns_at_instant += 1
            if self._turns_at_instant > LIVELOCK_TURNS:
                raise Livelock(f"{LIVELOCK_TURNS} turns at t={loop.time():.6f} s")
            return events
        if timeout is None:
            raise Deadlock(f"at t={loop.time():.6f} s nothing is ready and no timer is armed")
        loop.advance(timeout)
        self._turns_at_instant = 0
        return []

    def close(self) -> None:
        """Nothing to release."""


class _Task(asyncio.Task):  # type: ignore[type-arg]
    """A task whose hash is its serial number, not its memory address.

    Code iterates sets of tasks and futures (cancelling what ``asyncio.wait`` left pending,
    say); a set's order follows its members' hashes, and an address differs between runs.
    """

    def __init__(self, coro: Any, *, loop: asyncio.AbstractEventLoop, serial: int,
                 context: contextvars.Context | None = None) -> None:
        self._serial = serial  # first: the task's registration hashes it
        super().__init__(coro, loop=loop, context=context)

    def __hash__(self) -> int:
        return self._serial


class _Future(asyncio.Future):  # type: ignore[type-arg]
    """A future whose hash is its serial number (see ``_Task``)."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop, serial: int) -> None:
        self._serial = serial
        super().__init__(loop=loop)

    def __hash__(self) -> int:
        return self._serial


class SimLoop(asyncio.BaseEventLoop):
    """An event loop on virtual time; see the module docstring."""

    def __init__(self, rng: random.Random, *, timer_lateness: float = 0.0) -> None:
        super().__init__()
        self._now = 0.0
        self._rng = rng
        self._lateness = timer_lateness
        self._selector = _Selector(self)
        self._fds: dict[int, VirtualFd] = {}
        self._readers: dict[int, asyncio.Handle] = {}
        self._writers: dict[int, asyncio.Handle] = {}
        self._fd_numbers = itertools.count(FIRST_VIRTUAL_FD)
        self._unix_servers: dict[str, UnixServer] = {}
        # Unhandled errors of living processes (each a bug or a harness mistake).
        self.errors: list[dict[str, Any]] = []
        # Tasks of killed processes (by id: reported when collected): whatever becomes of
        # them is the kernel's business.
        self.killed: set[int] = set()
        # Those whose coroutine refused to close: kept, so that no collection in the middle
        # of a run reports them; ``bury`` lets them go once the run is over.
        self.zombies: list[Any] = []
        self.set_exception_handler(_on_exception)
        self._serials = itertools.count(1)
        self.set_task_factory(self._new_task)

    # --- time ----------------------------------------------------------------------------

    def time(self) -> float:
        """Virtual seconds since the loop was made."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the selector does it whenever the loop is idle)."""
        self._now += seconds

    # --- scheduling, bound to processes --------------------------------------------------

    def _guard(self, callback: Callable[[Unpack[_Ts]], object],
               context: contextvars.Context | None) -> Callable[[Unpack[_Ts]], object]:
        process = _process_of(context)
        if process is None:
            return callback
        return cast("Callable[[Unpack[_Ts]], object]", _Guarded(process, callback))

    def call_soon(self, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts,
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        return super().call_soon(self._guard(callback, context), *args, context=context)

    def call_at(self, when: float, callback: Callable[[Unpack[_Ts]], object],
                *args: *_Ts,
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        if self._lateness:
            # A timer never fires exactly on time on a real machine; by how much decides
            # which of two timers due together runs first.
            when += self._rng.random() * self._lateness
        return super().call_at(when, self._guard(callback, context), *args, context=context)

    def create_task(self, coro: Coroutine[Any, Any, _T] | Any, *, name: object = None,
                    context: contextvars.Context | None = None) -> asyncio.Task[_T]:
        task = super().create_task(coro, name=name, context=context)
        process = _process_of(context)
        if process is not None:
            if not process.alive:
                # Dead code cleaning up asks for a task: it is never started.
                task.get_coro().close()
            process.tasks[task] = None
            task.add_done_callback(process.finished, context=_KERNEL)
            task.add_done_callback(process.forget_if_dead, context=_KERNEL)
        return task

    def _new_task(self, loop: asyncio.AbstractEventLoop, coro: Any,
                  context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        return _Task(coro, loop=loop, serial=next(self._serials), context=context)

    def create_future(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = _Future(loop=self, serial=next(self._serials))
        process = PROCESS.get()
        if process is not None:
            future.add_done_callback(process.forget_if_dead, context=_KERNEL)
        return future

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        # An async generator collected unfinished is closed in a task of its own, as
        # asyncio does; one that a killed process left suspended cannot close ("already
        # running"), which is the kernel's business, not an error of the store.
        self._asyncgens.discard(agen)  # type: ignore[attr-defined]
        if not self.is_closed():
            task = super().create_task(agen.aclose(), name="asyncgen-aclose")
            self.killed.add(id(task))

    def run_in_executor(self, executor: Executor | None, func: Callable[[Unpack[_Ts]], _T],
                        *args: *_Ts) -> asyncio.Future[_T]:
        """Run ``func`` now, on this thread; its result arrives on the next turn."""
        future: asyncio.Future[_T] = self.create_future()
        try:
            result = func(*args)
        except BaseException as exc:  # delivered to the awaiting task, as a worker's would be
            self.call_soon(_deliver_exception, future, exc)
        else:
            self.call_soon(_deliver_result, future, result)
        return future

    # --- processes -----------------------------------------------------------------------

    def kill(self, process: Process) -> None:
        """SIGKILL ``process``: see the module docstring."""
        if not process.alive:
            return
        process.alive = False
        for cleanup in reversed(process.on_death):
            cleanup()
        process.on_death.clear()
        for task in list(process.tasks):
            if not task.done():
                self.killed.add(id(task))
                if not _close_where_it_stands(task):
                    self.zombies.append(task.get_coro())
        for cleanup in process.after_death:
            cleanup()
        process.after_death.clear()

    def bury(self) -> None:
        """Let the dead processes' unclosable coroutines go, quietly (the run is over)."""
        with _refusals_unreported():
            self.zombies.clear()
            gc.collect()

    # --- virtual descriptors -------------------------------------------------------------

    def new_fd(self, endpoint: VirtualFd) -> int:
        """A descriptor number for an in-memory endpoint."""
        number = next(self._fd_numbers)
        self._fds[number] = endpoint
        return number

    def close_fd(self, number: int) -> None:
        """Forget a descriptor and its watchers."""
        self._fds.pop(number, None)
        for watchers in (self._readers, self._writers):
            handle = watchers.pop(number, None)
            if handle is not None:
                handle.cancel()

    def _watch(self, watchers: dict[int, asyncio.Handle], fd: Any,
               callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        number = fd if isinstance(fd, int) else fd.fileno()
        if number not in self._fds:
            raise OSError(f"descriptor {number} is not a simulated endpoint")
        previous = watchers.pop(number, None)
        if previous is not None:
            previous.cancel()
        watchers[number] = asyncio.Handle(self._guard(callback, None), args, self, None)

    def _unwatch(self, watchers: dict[int, asyncio.Handle], fd: Any) -> bool:
        number = fd if isinstance(fd, int) else fd.fileno()
        handle = watchers.pop(number, None)
        if handle is None:
            return False
        handle.cancel()
        return True

    def add_reader(self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], Any],
                   *args: *_Ts) -> None:
        self._watch(self._readers, fd, callback, args)

    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        return self._unwatch(self._readers, fd)

    def add_writer(self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], Any],
                   *args: *_Ts) -> None:
        self._watch(self._writers, fd, callback, args)

    def remove_writer(self, fd: FileDescriptorLike) -> bool:
        return self._unwatch(self._writers, fd)

    def ready_descriptors(self) -> list[tuple[int, int]]:
        """The watched descriptors that are ready now."""
        ready = [(n, _READ) for n in self._readers if n in self._fds and self._fds[n].readable()]
        ready += [(n, _WRITE) for n in self._writers
                  if n in self._fds and self._fds[n].writable()]
        return ready

    def _process_events(self, event_list: list[tuple[int, int]]) -> None:
        for number, kind in event_list:
            handle = (self._readers if kind == _READ else self._writers).get(number)
            if handle is not None and not handle.cancelled():
                self._ready.append(handle)  # type: ignore[attr-defined]

    def _write_to_self(self) -> None:
        """Nothing to wake: no other thread schedules into the simulation."""

    # --- unix sockets in memory ----------------------------------------------------------

    async def create_unix_server(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], path: str | None = None,
        *, sock: socket.socket | None = None, **_options: Any,
    ) -> UnixServer:
        if sock is not None:
            path = sock.getsockname()
        if not isinstance(path, str):
            raise OSError("a simulated unix server needs a path")
        process = PROCESS.get()
        server = UnixServer(self, path, protocol_factory, sock, process)
        self._unix_servers[path] = server
        if process is not None:
            process.on_death.append(server.close)
        return server

    async def create_unix_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], path: str | None = None,
        **_options: Any,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        server = self._unix_servers.get(os.fspath(path)) if path is not None else None
        if server is None or not server.is_serving():
            raise ConnectionRefusedError(f"nothing listens on {path}")
        client_process = PROCESS.get()
        client = MemoryTransport(self, client_process)
        served = MemoryTransport(self, server.process)
        client.pair(served)
        client_protocol = protocol_factory()
        server_protocol = (server.process.run(server.protocol_factory)
                           if server.process is not None else server.protocol_factory())
        served.start(server_protocol)
        client.start(client_protocol)
        server.connections.add(served)
        return client, client_protocol

    def forget_unix_server(self, server: UnixServer) -> None:
        """The server closed: the path no longer answers."""
        if self._unix_servers.get(server.path) is server:
            del self._unix_servers[server.path]


def _deliver_result(future: asyncio.Future[_T], result: _T) -> None:
    if not future.done():
        future.set_result(result)


def _deliver_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


@contextlib.contextmanager
def _refusals_unreported() -> Iterator[None]:
    """A coroutine of a dead process that refuses to close is no error of the store."""
    previous = sys.unraisablehook

    def quiet(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and "ignored GeneratorExit" in str(unraisable.exc_value)):
            previous(unraisable)

    sys.unraisablehook = quiet
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _close_where_it_stands(task: asyncio.Task[Any]) -> bool:
    """Close a dead process's coroutine; False when it would not be closed.

    Its finally blocks run up to their first await (which cannot suspend a closing
    coroutine); everything it touched outside memory was already closed by the "kernel".
    A finally block that awaits refuses the close ("coroutine ignored GeneratorExit") and
    stops at that await: closing again ends that await too, until the coroutine is done.
    """
    coroutine = task.get_coro()
    with _refusals_unreported():
        for _ in range(CLOSE_ATTEMPTS):
            try:
                coroutine.close()
            except RuntimeError:
                continue
            except Exception:  # whatever dead code raises dies with it
                return True
            return True
    return False


def _on_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    assert isinstance(loop, SimLoop)
    task = context.get("task") or context.get("future")
    if isinstance(task, asyncio.Task) and id(task) in loop.killed:
        return
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if not task.done() and frame is None:
            return  # a task of a killed process, destroyed where it stood
    loop.errors.append(context)


class MemoryTransport(asyncio.Transport):
    """One end of an in-memory stream connection (a unix socket)."""

    def __init__(self, loop: SimLoop, process: Process | None) -> None:
        super().__init__()
        self._loop = loop
        self._process = process
        self._protocol: asyncio.BaseProtocol | None = None
        self._peer: MemoryTransport | None = None
        self._closing = False
        self._reading = True
        if process is not None:
            process.on_death.append(self.abort)

    def pair(self, peer: MemoryTransport) -> None:
        """Connect two ends."""
        self._peer, peer._peer = peer, self

    def start(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the end to its protocol (in the owning process)."""
        self._protocol = protocol
        if self._process is not None:
            self._process.run(protocol.connection_made, self)
        else:
            protocol.connection_made(self)

    def _context(self) -> contextvars.Context | None:
        return self._process.context() if self._process is not None else None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return _PeerSocket()
        if name in ("peername", "sockname"):
            return ""
        return default

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Writes never back up in memory."""

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        peer = self._peer
        if self._closing or peer is None or peer._closing:
            return
        peer._loop.call_soon(peer._received, bytes(data), context=peer._context())

    def _received(self, data: bytes) -> None:
        if self._closing or not isinstance(self._protocol, asyncio.Protocol):
            return
        self._protocol.data_received(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        peer = self._peer
        if peer is not None and not peer._closing:
            peer._loop.call_soon(peer._eof, context=peer._context())

    def _eof(self) -> None:
        if isinstance(self._protocol, asyncio.Protocol) and not self._closing:
            self._protocol.eof_received()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.call_soon(self._lost, context=self._context())
        peer = self._peer
        if peer is not None and not peer._closing:
            peer._closing = True
            peer._loop.call_soon(peer._eof_then_lost, context=peer._context())

    def abort(self) -> None:
        self.close()

    def _lost(self) -> None:
        if self._protocol is not None:
            self._protocol.connection_lost(None)

    def _eof_then_lost(self) -> None:
        if isinstance(self._protocol, asyncio.Protocol):
            self._protocol.eof_received()
        self._lost()


class _PeerSocket:
    """What ``get_extra_info("socket")`` gives: the peer's credentials, as the kernel would."""

    def getsockopt(self, level: int, option: int, size: int = 0) -> bytes:
        if (level, option) != (socket.SOL_SOCKET, socket.SO_PEERCRED):
            raise OSError(f"option {option} is not simulated")
        return _PEERCRED.pack(os.getpid(), os.geteuid(), os.getegid())


class UnixServer(asyncio.AbstractServer):
    """A unix-socket listener in memory."""

    def __init__(self, loop: SimLoop, path: str,
                 protocol_factory: Callable[[], asyncio.BaseProtocol],
                 sock: socket.socket | None, process: Process | None) -> None:
        self._loop = loop
        self.path = path
        self.protocol_factory = protocol_factory
        self.process = process
        self.connections: weakref.WeakSet[MemoryTransport] = weakref.WeakSet()
        self._sock = sock
        self._serving = True

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        self._loop.forget_unix_server(self)
        if self._sock is not None:
            self._sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        """Serving from the start."""

    async def serve_forever(self) -> None:
        raise NotImplementedError("the daemon never serves forever")

    async def wait_closed(self) -> None:
        """Closing is immediate."""
