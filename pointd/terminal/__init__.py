"""Point terminals at the checkout: USB discovery, hot-plug, identity, health."""

from pointd.terminal.discovery import (
    TerminalChange,
    TerminalView,
    UsbDevice,
    default_usb_backend,
    scan_usb,
)
from pointd.terminal.errors import (
    HotplugUnavailable,
    ModeChangeRefused,
    PdvSwitchFailed,
    TerminalError,
    UsbUnavailable,
    VendorTableError,
)
from pointd.terminal.health import (
    DeviceCatalog,
    DeviceRecord,
    PdvSwitchResult,
    check_lane,
    lane_condition,
    switch_to_pdv,
)
from pointd.terminal.identity import (
    CloudDevice,
    IdentityProblem,
    Resolution,
    UsbPresence,
    resolve_lane_terminal,
)
from pointd.terminal.vendors import (
    DEFAULT_VENDORS,
    VendorEntry,
    VendorTable,
    vendor_table_from_config,
)
from pointd.terminal.watch import (
    USB_RESCAN_INTERVAL,
    HotplugSource,
    TerminalWatch,
    UdevHotplugSource,
    open_udev_hotplug,
)

__all__ = [
    "DEFAULT_VENDORS",
    "USB_RESCAN_INTERVAL",
    "CloudDevice",
    "DeviceCatalog",
    "DeviceRecord",
    "HotplugSource",
    "HotplugUnavailable",
    "IdentityProblem",
    "ModeChangeRefused",
    "PdvSwitchFailed",
    "PdvSwitchResult",
    "Resolution",
    "TerminalChange",
    "TerminalError",
    "TerminalView",
    "TerminalWatch",
    "UdevHotplugSource",
    "UsbDevice",
    "UsbPresence",
    "UsbUnavailable",
    "VendorEntry",
    "VendorTable",
    "VendorTableError",
    "check_lane",
    "default_usb_backend",
    "lane_condition",
    "open_udev_hotplug",
    "resolve_lane_terminal",
    "scan_usb",
    "switch_to_pdv",
    "vendor_table_from_config",
]
