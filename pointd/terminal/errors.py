"""The terminal layer's exception tree.

::

    TerminalError
    ├── UsbUnavailable       no pyusb backend (libusb missing) or the bus could not be read
    ├── HotplugUnavailable   no udev monitor here: the watch falls back to rescanning
    ├── VendorTableError     the configured USB vendor table is malformed
    └── PdvSwitchFailed      Mercado Pago did not confirm the switch to PDV mode

A failed switch to PDV is safe to retry: setting the same operating mode twice has the
same effect as once, and it never moves money.
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
    """The operating-mode change to PDV was not confirmed by Mercado Pago."""
