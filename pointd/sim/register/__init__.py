"""The cash register emulator: a register on a pty or a socket, for tests, demos and integrators."""

from pointd.sim.register.emulator import (
    DaemonRejected,
    EmulatorError,
    RegisterEmulator,
    SaleOutcome,
)

__all__ = ["DaemonRejected", "EmulatorError", "RegisterEmulator", "SaleOutcome"]
