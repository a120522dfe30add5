"""Whether the disk under the database is full, or the database damaged, for status."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.errors import DatabaseDamagedError, DiskFullError, StoreError
from daemon.logs import log_event

_LOG = logging.getLogger("shelfsync.store")
# Free space below which the disk counts as full, and at or above which it has room again.
ROOM_BYTES = 1 << 20


class DiskWatch:
    """Whether the file system under the database is full (issue 21 #9), for status: told by
    every SQLITE_FULL a store meets, and at start by the free space; looked at again at every
    report, so it clears by itself once another program frees room.

    While it is full the daemon is read-mostly: every book and note it holds still reads (the
    WAL and its index outlive each run, so even a start on a full disk needs no room to read),
    saves are refused visibly (507), downloads pause.
    """

    def __init__(self, directory: Path, wall: Callable[[], float]) -> None:
        self._directory = directory
        self._wall = wall
        self.reason: str | None = None
        self.since: float | None = None
        self.damage: str | None = None

    def free_bytes(self) -> int:
        try:
            fs = os.statvfs(self._directory)
        except OSError:
            return 0
        return fs.f_bavail * fs.f_frsize

    def at_start(self) -> None:
        free = self.free_bytes()
        if free < ROOM_BYTES:
            self.full(f"{free // 1024} KiB free at start")

    def full(self, detail: str) -> None:
        if self.reason is None:
            self.since = self._wall()
            log_event(_LOG, logging.WARNING, "disk_full", detail=detail, mode="read_mostly")
        self.reason = (
            f"the disk is full ({detail}): every book and note on the device still reads;"
            " saves are refused and downloads wait until space frees"
        )

    def met(self, error: StoreError) -> None:
        """A store met this error: a full disk or a damaged page is the watch's to tell."""
        if isinstance(error, DiskFullError):
            self.full(str(error).removeprefix("the disk is full, nothing was saved: "))
        elif isinstance(error, DatabaseDamagedError):
            self.damaged(str(error))

    def damaged(self, found: str) -> None:
        """The database was found damaged while running (a read, the idle check)."""
        if self.damage is None:
            log_event(_LOG, logging.ERROR, "database_damaged", found=found[:500])
        self.damage = (
            f"the database is damaged ({found[:200]}): at the next start it is set aside, the"
            " notes exported first, and the library rebuilt from the service"
        )

    def report(self) -> dict[str, Any]:
        if self.reason is not None and self.free_bytes() >= ROOM_BYTES:
            log_event(_LOG, logging.INFO, "disk_space_back", free_bytes=self.free_bytes())
            self.reason = self.since = None
        return {
            "full": self.reason is not None,
            "mode": "normal" if self.reason is None else "read_mostly",
            "reason": self.reason,
            "full_since": self.since,
            "damaged": self.damage,
        }
