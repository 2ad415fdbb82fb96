"""``pointd run --check``: what the daemon needs, tried one by one, each line ok or fail + fix.

Theory of operation: the checks run in the order an installer fixes things, and each one
only reads or opens and closes again; none starts a sale, acknowledges a notification or
writes the journal. The configuration comes first: without it nothing else can be tried,
so a bad one ends the check at once with EXIT_CONFIG (the exit code ``pointd relay
--check`` and ``pointd run`` use for it). Then the credentials and their file modes, the
journal's directory, every lane's register port, Mercado Pago with the access token (the
device list), each lane's terminal in PDV mode in that list, and the relay with the store
token. While the daemon runs (it holds the journal's lock) the register ports are its own
and are not opened again.

Exit codes: 0 every line ok; EXIT_CONFIG (78) the configuration or a credential is wrong;
1 something outside the file failed (a port, the network, the account, the relay).
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx

from pointd.cloud.backends import build_cloud_port
from pointd.cloud.client import Timeouts
from pointd.cloud.errors import CloudError, NotSent, Rejected, Unauthorized
from pointd.cloud.port import TerminalView
from pointd.cloud.sites import Site
from pointd.config import (
    EXIT_CONFIG,
    MP_ACCESS_TOKEN,
    MP_WEBHOOK_SECRET,
    RELAY_STORE_TOKEN,
    ConfigError,
    DaemonConfig,
    Secret,
    load_config,
    read_optional_secret,
    read_secret,
)
from pointd.config.daemon import LaneConfig
from pointd.link.ports import open_port
from pointd.logging import configure_logging
from pointd.terminal.identity import serials_match

EXIT_OK = 0
EXIT_FAILED = 1
PDV_MODE = "PDV"
# A check that waits for the network gives up after this long (seconds).
NETWORK_TIMEOUT = 10.0
# Where pointd.service's LoadCredential= lines take the secrets from (docs/operations.md).
UNIT_CREDENTIALS = Path("/etc/pointd/credentials")


@dataclass(frozen=True)
class Line:
    """One check's outcome: what was checked, what was found, and the fix when it failed."""

    ok: bool
    what: str
    found: str
    fix: str | None = None

    def render(self) -> str:
        """``ok   what: found`` or ``fail what: found`` and an indented ``fix:`` line."""
        text = f"{'ok  ' if self.ok else 'fail'} {self.what}: {self.found}"
        return text if self.fix is None else f"{text}\n     fix: {self.fix}"


class SelfCheck:
    """Runs the checks for one configuration file and prints each line as it is known."""

    def __init__(self, config_path: Path, out: TextIO) -> None:
        self._path = config_path
        self._out = out
        self._config_wrong = False
        self._failed = False

    def _say(self, line: Line) -> None:
        self._failed |= not line.ok
        print(line.render(), file=self._out, flush=True)

    async def run(self) -> int:
        """Every check in order; the exit code."""
        try:
            config = load_config(self._path, DaemonConfig)
        except ConfigError as exc:
            self._say(Line(False, "configuration", "; ".join(exc.problems),
                           f"edit {self._path} (every key: docs/configuration.md)"))
            return EXIT_CONFIG
        lanes = ", ".join(str(lane.number) for lane in config.lanes)
        self._say(Line(True, "configuration",
                       f"{self._path}: store {config.store.id}, lanes {lanes}"))
        token = self._credential(MP_ACCESS_TOKEN, config.cloud.access_token_file, required=True)
        self._credential(MP_WEBHOOK_SECRET, config.cloud.webhook_secret_file, required=False)
        store_token = (
            self._credential(RELAY_STORE_TOKEN, config.relay.store_token_file, required=True)
            if config.relay.url is not None else None
        )
        daemon_running = self._journal(config)
        for lane in config.lanes:
            self._say(await _register_port(lane, daemon_running))
        if token is not None:
            devices = await self._mercado_pago(config, token)
            if devices is not None:
                for lane in config.lanes:
                    self._say(_terminal_mode(lane, devices))
        await self._relay(config, store_token)
        if self._config_wrong:
            return EXIT_CONFIG
        return EXIT_FAILED if self._failed else EXIT_OK

    def _credential(self, name: str, file: Path | None, *, required: bool) -> Secret | None:
        # Run by hand there is no $CREDENTIALS_DIRECTORY: read the file the unit's
        # LoadCredential= would load, with the same mode check as a *_file.
        unit_file = UNIT_CREDENTIALS / name
        if file is None and not os.environ.get("CREDENTIALS_DIRECTORY") and unit_file.exists():
            file = unit_file
        try:
            secret = read_secret(name, file=file) if required else read_optional_secret(
                name, file=file
            )
        except ConfigError as exc:
            self._config_wrong = True
            self._say(Line(False, f"credential {name}", "; ".join(exc.problems),
                           "systemd: LoadCredential= in the unit (docs/operations.md); by "
                           "hand: the *_file key and chmod 600"))
            return None
        if secret is None:
            self._say(Line(True, f"credential {name}",
                           "not configured (optional: x-signature is checked by the relay)"))
            return None
        self._say(Line(True, f"credential {name}", _credential_source(name, file)))
        return secret

    def _journal(self, config: DaemonConfig) -> bool:
        """Say whether the journal's directory is usable; True when a daemon holds it."""
        path = Path(config.journal.path)
        directory = path.parent
        if not directory.is_dir():
            self._say(Line(False, "journal", f"directory {directory} does not exist",
                           "systemd creates it (StateDirectory=pointd); by hand: "
                           f"install -d -m 0750 {directory}"))
            return False
        if not os.access(directory, os.W_OK):
            self._say(Line(False, "journal", f"{directory} is not writable by this user",
                           "run the check as the service's user (pointd) or as root"))
            return False
        running = _journal_locked(path)
        found = f"{path} in use by the running pointd" if running else (
            f"{path} ({'exists' if path.exists() else 'created at the first start'})"
        )
        self._say(Line(True, "journal", found))
        return running

    async def _mercado_pago(
        self, config: DaemonConfig, token: Secret
    ) -> list[TerminalView] | None:
        what = f"Mercado Pago {config.cloud.base_url}"
        cloud, close = build_cloud_port(
            config.cloud.backend, config.cloud.base_url, token.reveal(), Site(config.store.site),
            Timeouts(connect=min(config.cloud.connect_timeout, NETWORK_TIMEOUT),
                     read=min(config.cloud.read_timeout, NETWORK_TIMEOUT)),
        )
        try:
            devices = await cloud.list_terminals()
        except Unauthorized:
            self._say(Line(False, what, "the access token was refused (401)",
                           "put the account's production access token (APP_USR-...) in the "
                           f"credential {MP_ACCESS_TOKEN}"))
            return None
        except NotSent as exc:
            self._say(Line(False, what, f"cannot be reached ({exc})",
                           "check this PC's network, DNS and proxy, and cloud.base_url"))
            return None
        except Rejected as exc:
            self._say(Line(False, what, f"refused the device list: {exc}",
                           "check the account's Point integration and the access token"))
            return None
        except CloudError as exc:
            self._say(Line(False, what, f"no usable answer ({type(exc).__name__}: {exc})",
                           "try again; if it persists, see docs/cloud-client.md"))
            return None
        finally:
            await close()
        self._say(Line(True, what,
                       f"the access token works ({len(devices)} terminals on the account)"))
        return devices

    async def _relay(self, config: DaemonConfig, token: Secret | None) -> None:
        url = config.relay.url
        if url is None:
            self._say(Line(True, "relay", "none configured: the daemon polls Mercado Pago "
                                          "for every sale (slower, more API calls)"))
            return
        if token is None:
            return  # its credential's line already says why
        what = f"relay {url}"
        store = config.store.id
        try:
            async with httpx.AsyncClient(base_url=url, timeout=NETWORK_TIMEOUT) as http:
                answer = await http.get(
                    f"/stores/{store}/events", params={"wait": 0, "limit": 1},
                    headers={"authorization": f"Bearer {token.reveal()}"},
                )
        except httpx.HTTPError as exc:
            self._say(Line(False, what, f"cannot be reached ({type(exc).__name__})",
                           "check relay.url, this PC's network and the relay's TLS proxy"))
            return
        if answer.status_code == 200:
            self._say(Line(True, what, f"store {store} is served with this store token"))
        elif answer.status_code in (401, 403, 404):
            self._say(Line(False, what, f"refused store {store}'s token ({answer.status_code})",
                           f"the relay's [[stores]] entry id = \"{store}\" needs token_sha256 = "
                           f"the sha256 of this PC's {RELAY_STORE_TOKEN} "
                           "(printf %s \"$TOKEN\" | sha256sum)"))
        else:
            self._say(Line(False, what, f"answered {answer.status_code}",
                           "look at the relay's log (journalctl -u pointd-relay)"))


async def _register_port(lane: LaneConfig, daemon_running: bool) -> Line:
    what = f"lane {lane.number} register {lane.register}"
    if daemon_running:
        return Line(True, what, "held by the running pointd (pointctl status shows the link)")
    try:
        port = await open_port(lane.register, lane.baud)
    except ValueError as exc:
        return Line(False, what, str(exc), "fix the lane's register = in the configuration")
    except OSError as exc:
        return Line(False, what, f"cannot be opened: {exc}",
                    "is the register's USB adapter plugged in and named by the udev rules "
                    "(docs/terminals.md)? a pty needs DeviceAllow=char-pts rw")
    port.close()
    return Line(True, what, "opens")


def _terminal_mode(lane: LaneConfig, devices: Sequence[TerminalView]) -> Line:
    what = f"lane {lane.number} terminal"
    if lane.terminal is not None:
        found = [d for d in devices if d.id == lane.terminal]
        named = f"pinned {lane.terminal}"
    elif lane.terminal_serial is not None:
        found = [d for d in devices if serials_match(lane.terminal_serial, d.id)]
        named = f"serial {lane.terminal_serial}"
    else:
        return Line(True, what, "found on USB at run time (no pin or serial to check here)")
    if not found:
        return Line(False, what, f"{named} is not in the account's device list",
                    "check the pin or serial (pointctl terminals) and that the access token "
                    "is the terminal's account's")
    if len(found) > 1:
        ids = ", ".join(d.id for d in found)
        return Line(False, what, f"{named} matches several devices: {ids}",
                    "pin the lane with terminal = \"<device id>\"")
    device = found[0]
    mode = (device.operating_mode or "").strip().upper()
    if mode and mode != PDV_MODE:
        return Line(False, what, f"{device.id} is in {device.operating_mode} mode",
                    "switch it to PDV in the Mercado Pago app (or set "
                    "terminals.switch_to_pdv = true), then restart the terminal")
    return Line(True, what, f"{device.id} in {device.operating_mode or 'unknown'} mode")


def _credential_source(name: str, file: Path | None) -> str:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / name).exists():
        return "from the systemd credential"
    if file == UNIT_CREDENTIALS / name:
        return f"from {file} (what the unit's LoadCredential= loads; mode 0600)"
    return f"from {file} (mode 0600)"


def _journal_locked(path: Path) -> bool:
    lock = path.with_name(path.name + ".lock")
    try:
        descriptor = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(descriptor)
    return False


async def check(config_path: Path, out: TextIO = sys.stdout) -> int:
    """Run every check for ``config_path``; the exit code.

    The lines are the output: the parts' own log lines (a refused call is also a warning
    there) would only repeat them, so only errors are logged, to stderr.
    """
    configure_logging("error", "auto", sys.stderr, library_level="error")
    return await SelfCheck(config_path, out).run()
