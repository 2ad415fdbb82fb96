"""The terminal layer's exception tree.

::

    TerminalError
    ├── UsbUnavailable       no pyusb backend (libusb missing) or the bus could not be read
    ├── HotplugUnavailable   no udev monitor here: the watch falls back to rescanning
    ├── VendorTableError     the configured USB vendor table is malformed
    ├── PdvSwitchFailed      Mercado Pago did not confirm the switch to PDV mode
    └── ModeChangeRefused    Mercado Pago answered and refused the mode change (nobody
                             logged in on the terminal, store/POS set up wrong): asking
                             again changes nothing until a person fixes the cause

Asking for the same operating mode twice has the same effect as once and never moves
money, so a switch that failed because Mercado Pago could not be reached is simply asked
again; one Mercado Pago refused needs a person first, and its message says what to fix.
"""

from __future__ import annotations


class TerminalError(Exception):
    """Base of every error raised by pointd.terminal."""


class UsbUnavailable(TerminalError):
    """The USB bus cannot be read: no backend, or enumeration failed."""


class HotplugUnavailable(TerminalError):
    """No hot-plug event source is available; rescan at an interval instead."""


class VendorTableError(TerminalError, ValueError):
    """A vendor table entry in the configuration is malformed; the message names it."""


class PdvSwitchFailed(TerminalError):
    """The operating-mode change to PDV was not confirmed by Mercado Pago.

    ``refused`` is True when Mercado Pago answered with a refusal (asking again will not
    help until a person acts), False when the request may simply not have got through.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class ModeChangeRefused(TerminalError):
    """Mercado Pago refused an operating-mode change; the message is its reason."""
