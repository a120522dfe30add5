"""Library sync: pulls the service's library changes feed into the store, page by page.

Runs whenever asked (on start, on every push message, on every poll while push is down): always
urgent, as it is what announces a purchase; a failed pull is retried after its backoff. Each page
is applied with the cursor in one transaction, so a crash between pages resumes at the next page
and a page applied twice changes nothing. The delivery worker is woken after every page, so a
purchase starts downloading while a large library is still paging in.

A push that carries the changes (push version 2) is applied at once, as the pull from its `after`
would have been, when the stored cursor has reached `after` (else a change was missed, and a pull
is asked for); the order's signed manifests (and first frames) it carried go to the delivery
worker, which verifies them as if it had fetched them. The purchase then costs no round trip
before its package request (and none before its first chapter, when the push carried its frames).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from contextlib import suppress

from daemon.backoff import Backoff
from daemon.client import LibraryPush, ServiceClient
from daemon.clock import Clock
from daemon.errors import StoreError, TransportError
from daemon.logs import log_event
from daemon.radio.windows import RadioWindows
from daemon.store import Store

_LOG = logging.getLogger("shelfsync.library")
PAGE_SIZE = 500


class LibrarySync:
    def __init__(
        self,
        store: Store,
        client: ServiceClient,
        clock: Clock,
        windows: RadioWindows,
        on_change: Callable[[], None],
        backoff: Backoff | None = None,
        on_manifests: Callable[[LibraryPush], None] = lambda push: None,
    ) -> None:
        self._store = store
        self._client = client
        self._clock = clock
        self._windows = windows
        self._on_change = on_change
        self._on_manifests = on_manifests
        self._backoff = backoff or Backoff(base_s=2.0, cap_s=300.0)
        self._requested = asyncio.Event()

    def request(self) -> None:
        self._requested.set()

    async def run(self) -> None:
        failures = 0
        while True:
            await self._requested.wait()
            self._requested.clear()
            try:
                await self.sync_once()
                failures = 0
            except (TransportError, StoreError) as e:
                failures += 1
                delay = self._backoff.delay(failures)
                # On a full disk recording the failure fails too: the log line still says it.
                with suppress(StoreError):
                    self._store.set_meta("last_sync_error", f"{type(e).__name__}: {e}"[:500])
                log_event(
                    _LOG,
                    logging.INFO,
                    "library_sync_failed",
                    error=type(e).__name__,
                    detail=str(e),
                    retry_in_s=round(delay, 1),
                )
                # Exactly at its time, not deferred: this pull is what announces a purchase.
                retry_at = self._clock.monotonic() + delay
                await self._windows.wait("library", retry_at, retry_at)
                self._requested.set()

    def apply_push(self, push: LibraryPush) -> None:
        """Apply the changes a push carried, or ask for a pull if the feed moved past them."""
        cursor = self._store.library_cursor()
        if cursor < push.after:
            log_event(_LOG, logging.INFO, "library_push_gap", cursor=cursor, after=push.after)
            self.request()
            return
        fresh = [c for c in push.page.changes if c.seq > cursor]
        try:
            removed = self._store.apply_library_changes(fresh, push.page.cursor, self._clock.wall())
        except StoreError as e:
            log_event(_LOG, logging.WARNING, "library_push_not_applied", error=str(e))
            self.request()
            return
        for book_id in removed:
            log_event(_LOG, logging.INFO, "book_removed", book=book_id)
        self._store.set_meta("last_sync_at", repr(self._clock.wall()))
        self._store.set_meta("last_sync_error", "")
        held = {c.book_id for c in fresh}
        self._on_manifests(
            dataclasses.replace(
                push,
                envelopes={b: e for b, e in push.envelopes.items() if b in held},
                prefixes={b: f for b, f in push.prefixes.items() if b in held},
            )
        )
        if fresh:
            self._on_change()
        log_event(
            _LOG,
            logging.INFO,
            "library_synced",
            changes=len(fresh),
            requests=0,
            cursor=max(cursor, push.page.cursor),
            manifests=len(push.envelopes),
        )

    async def sync_once(self) -> int:
        """Pull every page after the stored cursor; returns the number of changes applied."""
        cursor = self._store.library_cursor()
        applied = 0
        requests = 0
        while True:
            page = await self._client.library_changes(cursor, PAGE_SIZE)
            requests += 1
            removed = self._store.apply_library_changes(
                page.changes, page.cursor, self._clock.wall()
            )
            for book_id in removed:
                log_event(_LOG, logging.INFO, "book_removed", book=book_id)
            cursor = page.cursor
            applied += len(page.changes)
            if page.changes:
                self._on_change()
            if not page.has_more:
                break
        now = self._clock.wall()
        self._store.set_meta("last_sync_at", repr(now))
        self._store.set_meta("last_sync_error", "")
        log_event(
            _LOG, logging.INFO, "library_synced", changes=applied, requests=requests, cursor=cursor
        )
        return applied
