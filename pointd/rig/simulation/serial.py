"""A register's cable in the simulation: a serial line or a LAN connection, in memory.

The daemon opens a lane's register through ``Ports.open_register_port`` exactly as it opens
``/dev/pointd/register`` or ``socket://host:port``; in the simulation that opener returns a
``DaemonEnd`` of the lane's ``Cable``: a ``Port`` whose descriptor the ``SimLoop`` watches.
The register (``pointd.sim.ecr``) is on the other end.

* **Serial**: the register's side is always there while the cable is plugged; bytes sent
  while the daemon has the port closed are lost, as on a real UART. Unplugging makes the
  daemon's reads fail and its next opens fail until the cable is back (a pulled USB adapter);
  the register's link notices by its own timers.
* **LAN** (``socket://``): each open is a new TCP connection the register accepts; the
  daemon's close or death ends it and the register sees the connection go. Unplugging resets
  the connection and refuses new ones until the cable is back.

Bytes take the line's time to cross (about 87 µs a byte at 115 200 baud on serial) plus a
seeded jitter, in order. ``noise_to_register`` and the register's own ``inject_noise`` damage
either direction.
"""

from __future__ import annotations

import contextvars
import random
from collections.abc import Callable
from typing import Literal

from pointd.rig.simulation.loop import PROCESS, SimLoop
from pointd.sim.ecr.register import Register

CableKind = Literal["serial", "lan"]
# Seconds per byte on the wire: 10 bits a byte at 115 200 baud; a LAN's is negligible.
BYTE_TIME = {"serial": 10 / 115_200, "lan": 0.0}
# Fixed delay per chunk (an adapter's buffer, a switch), and its seeded jitter.
BASE_DELAY = {"serial": 0.001, "lan": 0.0003}
JITTER = 0.0005
# Bytes on the wire arrive whoever wrote them: their delivery belongs to no process.
_WIRE = contextvars.Context()


class DaemonEnd:
    """The daemon's side of a cable: a non-blocking ``Port`` on a virtual descriptor."""

    def __init__(self, cable: Cable, loop: SimLoop) -> None:
        self._cable = cable
        self._loop = loop
        self._fd = loop.new_fd(self)
        self._received = bytearray()
        self._error: OSError | None = None
        self.closed = False

    # Port
    def fileno(self) -> int:
        """The virtual descriptor the loop watches."""
        return self._fd

    def read(self, size: int) -> bytes:
        """What has arrived; raise once the cable failed."""
        if self._error is not None and (self._cable.kind == "serial" or not self._received):
            raise self._error
        data = bytes(self._received[:size])
        del self._received[:size]
        return data

    def write(self, data: bytes) -> int:
        """Send everything (the line takes it at its own pace)."""
        if self.closed or self._error is not None:
            raise self._error or OSError("the port is closed")
        self._cable.send_to_register(bytes(data), self)
        return len(data)

    def close(self) -> None:
        """Release the port."""
        if self.closed:
            return
        self.closed = True
        self._loop.close_fd(self._fd)
        self._cable.daemon_closed(self)

    # VirtualFd
    def readable(self) -> bool:
        """Data arrived, or the cable failed."""
        return bool(self._received) or self._error is not None

    def writable(self) -> bool:
        """Writes are always taken."""
        return True

    # the cable's side
    def arrive(self, data: bytes) -> None:
        """Bytes from the register reached this end."""
        if not self.closed:
            self._received += data

    def fail(self, error: OSError) -> None:
        """The cable is gone under this end."""
        self._error = error


class _RegisterSide:
    """The register's ``Line`` for one plug-in (serial) or one connection (LAN)."""

    def __init__(self, cable: Cable) -> None:
        self._cable = cable

    def write(self, data: bytes) -> None:
        self._cable.send_to_daemon(data, self)


class Cable:
    """Lane ``lane``'s register cable (module docstring)."""

    def __init__(self, loop: SimLoop, lane: int, kind: CableKind, register: Register, *,
                 rng: random.Random, trace: Callable[[str], None]) -> None:
        self._loop = loop
        self.lane = lane
        self.kind = kind
        self.register = register
        self._rng = rng
        self._trace = trace
        self.url = (f"/dev/pointd/register-{lane}" if kind == "serial"
                    else f"socket://10.0.0.{10 + lane}:7070")
        self.plugged = True
        self._end: DaemonEnd | None = None
        self._side: _RegisterSide | None = None
        self._busy_until = {"to_daemon": 0.0, "to_register": 0.0}

    def start(self) -> None:
        """Connect the register's side (a serial line is there from the start)."""
        if self.kind == "serial":
            self._attach_register()

    def _attach_register(self) -> None:
        self._side = _RegisterSide(self)
        self.register.attach(self._side)

    def _detach_register(self, reason: str) -> None:
        self._side = None
        self.register.detach(reason)

    # --- the daemon's side -------------------------------------------------------------

    async def open(self, url: str, baudrate: int) -> DaemonEnd:
        """``Ports.open_register_port`` for this lane."""
        if not self.plugged:
            if self.kind == "serial":
                raise FileNotFoundError(f"{url}: no such device (unplugged)")
            raise OSError(f"cannot connect to {url}: connection refused")
        if self._end is not None and not self._end.closed:
            # pyserial opens exclusively; a LAN register takes one connection at a time.
            raise OSError(f"{url} is busy")
        end = DaemonEnd(self, self._loop)
        process = PROCESS.get()
        if process is not None:
            process.on_death.append(end.close)  # the kernel closes a dead process's files
        self._end = end
        if self.kind == "lan":
            self._attach_register()
        self._trace(f"lane {self.lane} {self.kind} opened by the daemon")
        return end

    def daemon_closed(self, end: DaemonEnd) -> None:
        """The daemon closed its end (or died)."""
        if end is not self._end:
            return
        self._end = None
        if self.kind == "lan" and self._side is not None:
            self._detach_register("the daemon closed the connection")

    # --- bytes ---------------------------------------------------------------------------

    def _arrival(self, direction: str, size: int) -> float:
        now = self._loop.time()
        delay = BASE_DELAY[self.kind] + size * BYTE_TIME[self.kind] + self._rng.random() * JITTER
        arrival = max(now, self._busy_until[direction]) + delay
        self._busy_until[direction] = arrival
        return arrival

    def send_to_register(self, data: bytes, end: DaemonEnd) -> None:
        """Bytes the daemon wrote."""
        side = self._side
        if side is None:
            return  # nobody on the other end
        self._loop.call_at(self._arrival("to_register", len(data)), self._reach_register,
                           data, side, context=_WIRE)

    def _reach_register(self, data: bytes, side: _RegisterSide) -> None:
        if side is self._side:
            self.register.bytes_in(data)

    def send_to_daemon(self, data: bytes, side: _RegisterSide) -> None:
        """Bytes the register wrote."""
        if side is not self._side:
            return
        end = self._end if self.kind == "lan" else None
        self._loop.call_at(self._arrival("to_daemon", len(data)), self._reach_daemon,
                           data, end, context=_WIRE)

    def _reach_daemon(self, data: bytes, sent_on: DaemonEnd | None) -> None:
        end = self._end
        if end is None or (self.kind == "lan" and end is not sent_on):
            return  # the port was closed (serial) or that connection is gone (LAN)
        end.arrive(data)

    def noise_to_register(self, noise: bytes) -> bool:
        """Line noise towards the register; False when nothing is connected."""
        if self._side is None:
            return False
        self._loop.call_at(self._arrival("to_register", len(noise)), self._reach_register,
                           noise, self._side, context=_WIRE)
        return True

    # --- the cable itself ----------------------------------------------------------------

    def unplug(self) -> bool:
        """Pull the cable; False if it was already out."""
        if not self.plugged:
            return False
        self.plugged = False
        end = self._end
        if end is not None:
            end.fail(OSError("device disconnected") if self.kind == "serial"
                     else ConnectionResetError("connection reset by peer"))
        if self._side is not None:
            self._detach_register("cable unplugged")
        self._trace(f"lane {self.lane} {self.kind} unplugged")
        return True

    def replug(self) -> None:
        """Plug it back."""
        if self.plugged:
            return
        self.plugged = True
        if self.kind == "serial":
            self._attach_register()
        self._trace(f"lane {self.lane} {self.kind} plugged back")
