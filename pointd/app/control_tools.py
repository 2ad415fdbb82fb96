"""The technician's tools beyond sales: a journal backup, and Mercado Pago's device events.

``backup`` copies the running daemon's journal with SQLite's online backup (in a worker
thread: the copy reads the whole file, the event loop must not wait for it) into
``backups/`` beside the journal, keeps the newest BACKUPS_KEPT, and answers what the copy
holds; ``backup_chunk`` hands it to pointctl piece by piece, since the daemon's sandbox
cannot write where the technician wants the file. ``integrator`` shows the account's
device-event channels and ``device_events`` turns the e-mail channel on or off (seed 001:
Mercado Pago then mails restarts, logouts and PDV/STANDALONE changes of every terminal of
the account, starting about 30 minutes after it is enabled).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from pointd.cloud.errors import CloudError
from pointd.cloud.models import Integrator
from pointd.cloud.port import CloudPort
from pointd.control.errors import MethodError
from pointd.control.protocol import ErrorCode
from pointd.control.server import Caller
from pointd.journal.backup import backup_journal
from pointd.journal.errors import JournalError

log = structlog.get_logger(__name__)

BACKUPS_KEPT = 3
# Each chunk is one answer line of about 1.4 MB once base64-encoded.
BACKUP_CHUNK_BYTES = 1 << 20
EMAIL_CHANNEL = "email"
# Seed 001: "As notificações estarão disponíveis 30 minutos após o processo de ativação."
EMAIL_DELAY_NOTICE = (
    "Mercado Pago starts e-mailing device events (restarts, logouts, PDV/STANDALONE "
    "changes of every terminal of the account) to the account's registered address about "
    "30 minutes after the channel is enabled; look in the spam folder too."
)
_BACKUP_NAME = re.compile(r"journal-[0-9]{8}T[0-9]{6}Z(-[0-9]+)?\.sqlite3")


class ToolMethods:
    """``backup``, ``backup_chunk``, ``integrator`` and ``device_events``."""

    def __init__(
        self,
        *,
        journal_path: Path,
        cloud: CloudPort,
        clock: Callable[[], float],
    ) -> None:
        self._journal_path = journal_path
        self._backups = journal_path.parent / "backups"
        self._cloud = cloud
        self._clock = clock
        self._backing_up = asyncio.Lock()

    async def backup(self, caller: Caller) -> dict[str, Any]:
        """Copy the journal now, consistently, while the daemon keeps running."""
        if self._backing_up.locked():
            raise MethodError(ErrorCode.CONFLICT, "a backup is already being made; wait for it")
        async with self._backing_up:
            target = self._next_backup_path()
            try:
                info = await asyncio.to_thread(backup_journal, self._journal_path, target)
            except (JournalError, OSError) as exc:
                raise MethodError(ErrorCode.UNAVAILABLE, f"the backup failed: {exc}") from None
        self._prune()
        log.info("journal.backed_up", name=target.name, size=info.size, sales=info.sales,
                 last_seq=info.last_seq, uid=caller.uid)
        return {
            "name": target.name,
            "size": info.size,
            "sha256": info.sha256,
            "schema": info.schema,
            "sales": info.sales,
            "last_seq": info.last_seq,
            "chunk_bytes": BACKUP_CHUNK_BYTES,
        }

    async def backup_chunk(self, caller: Caller, name: str, offset: int) -> dict[str, Any]:
        """``BACKUP_CHUNK_BYTES`` of a backup from ``offset`` on, as base64."""
        if _BACKUP_NAME.fullmatch(name) is None:
            raise MethodError(ErrorCode.BAD_PARAMS, "param 'name' is not a backup name",
                              param="name")
        path = self._backups / name
        try:
            with path.open("rb") as file:
                size = file.seek(0, 2)
                file.seek(offset)
                data = file.read(BACKUP_CHUNK_BYTES)
        except FileNotFoundError:
            raise MethodError(ErrorCode.NOT_FOUND, f"no backup {name} (only the newest "
                              f"{BACKUPS_KEPT} are kept)") from None
        return {
            "offset": offset,
            "size": size,
            "data_b64": base64.b64encode(data).decode("ascii"),
            "eof": offset + len(data) >= size,
        }

    async def integrator(self, caller: Caller) -> dict[str, Any]:
        """The account's integrator record and whether device events are e-mailed."""
        return integrator_row(await self._ask(self._cloud.get_integrator(), "read"))

    async def device_events(self, caller: Caller, email: bool) -> dict[str, Any]:
        """Turn the e-mail channel for device events on or off, keeping any other channel."""
        current = await self._ask(self._cloud.get_integrator(), "read")
        others = [c for c in current.event_channel_devices if c != EMAIL_CHANNEL]
        channels = [*others, EMAIL_CHANNEL] if email else others
        await self._ask(self._cloud.set_device_event_channels(channels), "change")
        after = await self._ask(self._cloud.get_integrator(), "read back")
        log.info("integrator.device_events_set", email=email, channels=channels, uid=caller.uid)
        row = integrator_row(after)
        row["notice"] = EMAIL_DELAY_NOTICE if email else (
            "Mercado Pago stops e-mailing device events for this account."
        )
        return row

    async def _ask(self, call: Any, what: str) -> Any:
        try:
            return await call
        except CloudError as exc:
            detail = getattr(exc, "message", "") or type(exc).__name__
            raise MethodError(
                ErrorCode.UNAVAILABLE,
                f"Mercado Pago's integrator settings could not be {what} ({detail})",
            ) from None

    def _next_backup_path(self) -> Path:
        self._backups.mkdir(mode=0o700, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        target = self._backups / f"journal-{stamp}.sqlite3"
        number = 1
        while target.exists():
            number += 1
            target = self._backups / f"journal-{stamp}-{number}.sqlite3"
        return target

    def _prune(self) -> None:
        kept = sorted(self._backups.glob("journal-*.sqlite3"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-BACKUPS_KEPT]:
            old.unlink(missing_ok=True)


def integrator_row(record: Integrator) -> dict[str, Any]:
    """The integrator record as the control socket shows it."""
    return {
        "id": record.id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "notification_url_enabled": record.notification_url_enabled,
        "event_channel_devices": list(record.event_channel_devices),
        "email": EMAIL_CHANNEL in record.event_channel_devices,
    }
