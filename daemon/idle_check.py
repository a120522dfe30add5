"""The idle integrity check (issue 15 #3, FAULTS.md #25): `PRAGMA integrity_check` while the
daemon has nothing else to do, never on the hot path.

Once a day (the first a while after start, which already ran a quick_check), when no download
runs and the local API answers no request, the whole database is checked on a connection of
its own in a worker thread, so the event loop keeps serving. Its cost is bounded by the daemon's
own work: SQLite asks every few thousand steps whether to go on, and the check is given up the
moment a download starts or a request comes in, to run again at the next idle time. A damage it
finds is logged, shown in status, and recorded in the database (if it can still be written), so
the next start sets the file aside and rebuilds it from the service (daemon/store/database.py,
check_at_start) even where the quick check would pass.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from daemon.clock import Clock
from daemon.errors import StoreError
from daemon.logs import log_event
from daemon.store import Store
from daemon.store.database import IntegrityRecord

_LOG = logging.getLogger("shelfsync.integrity")
CHECK_EVERY_S = 86_400.0
FIRST_AFTER_S = 600.0  # after a start, whose quick_check has just looked
LOOK_AGAIN_S = 60.0  # while a due check waits for the daemon to be idle


class IdleCheck:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        busy: Callable[[], bool],
        on_damage: Callable[[str], None],
        every_s: float = CHECK_EVERY_S,
        first_after_s: float = FIRST_AFTER_S,
    ) -> None:
        self._store = store  # the writer: reads when the last check was, records this one
        self._clock = clock
        self._busy = busy
        self._on_damage = on_damage
        self._every_s = every_s
        self._first_after_s = first_after_s

    async def run(self) -> None:
        last = self._store.integrity_record()
        now = self._clock.wall()
        due_in = self._first_after_s if last is None else last.at + self._every_s - now
        await self._clock.sleep(max(self._first_after_s, due_in))
        while True:
            verdict = await self.check_once()
            await self._clock.sleep(self._every_s if verdict is not None else LOOK_AGAIN_S)

    async def check_once(self) -> str | None:
        """Check the whole database now: its verdict, or None if there is work to do, or work
        arrived before the check was through."""
        if self._busy():
            return None
        stop = threading.Event()  # a cancelled wait does not stop the thread: this does
        try:
            verdict = await asyncio.to_thread(_check, self._store.path, self._busy, stop)
        finally:
            stop.set()
        if verdict is None:
            log_event(_LOG, logging.DEBUG, "integrity_check_deferred")
            return None
        record = IntegrityRecord(self._clock.wall(), verdict)
        try:
            self._store.record_integrity(record)
        except StoreError as e:  # a full or damaged disk: status and the log still say it
            log_event(_LOG, logging.WARNING, "integrity_check_not_recorded", error=e)
        if record.ok:
            log_event(_LOG, logging.INFO, "integrity_checked", result="ok")
        else:
            self._on_damage(verdict)  # logs it
        return verdict


def _check(path: Path, busy: Callable[[], bool], stop: threading.Event) -> str | None:
    store = Store.open(path, readonly=True)
    try:
        return store.integrity_check(give_up=lambda: stop.is_set() or busy())
    finally:
        store.close()
