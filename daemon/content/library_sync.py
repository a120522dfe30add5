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
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial

from daemon.backoff import Backoff
from daemon.client import ChangesPage, LibraryPush
from daemon.clock import Clock
from daemon.errors import ProtocolError, ShelfsyncError, StoreError, TransportError
from daemon.logs import log_event
from daemon.radio.windows import RadioWindows
from daemon.retry import Comeback, Retry, record_failure
from daemon.service import ServiceAPI
from daemon.store import Store

_LOG = logging.getLogger("shelfsync.library")
PAGE_SIZE = 500


class LibrarySync:
    def __init__(
        self,
        store: Store,
        client: ServiceAPI,
        clock: Clock,
        windows: RadioWindows,
        on_change: Callable[[], None],
        backoff: Backoff | None = None,
        comeback: Comeback | None = None,
        on_root: Callable[[int], Awaitable[None]] | None = None,
        on_manifests: Callable[[LibraryPush], None] = lambda push: None,
    ) -> None:
        self._store = store
        self._client = client
        self._clock = clock
        self._windows = windows
        self._on_change = on_change
        self.retry = Retry(
            "library sync", clock, backoff or Backoff(base_s=2.0, cap_s=300.0), comeback
        )
        # Told the service's newest trust root version with every page: a rotation reaches the
        # device with the next pull, not only when a manifest is refused.
        self._on_root = on_root
        self._root_followed = 1  # the newest root a pull has passed on (1: the pinned key)
        self._on_manifests = on_manifests
        self._requested = asyncio.Event()
        self._syncing = False

    def request(self) -> None:
        self._requested.set()

    @property
    def busy(self) -> bool:
        """A pull asked for or under way (a window's work: daemon/radio/windows.py)."""
        return self._requested.is_set() or self._syncing

    async def run(self) -> None:
        while True:
            await self._requested.wait()
            self._requested.clear()
            self._syncing = True
            try:
                await self.sync_once()
                with suppress(StoreError):  # a full disk: the receipts' clock stays as it was
                    self._store.receipts.mark_contact(self._clock.wall())
                self.retry.succeeded()
                continue
            except (ShelfsyncError, OSError) as e:
                decision = self.retry.failed(e)
                lost_contact = isinstance(e, TransportError)
            finally:
                self._syncing = False
            now = self._clock.wall()
            record_failure("library sync", self._store.set_meta, "last_sync_error", decision.error)
            record_failure("library sync", self._store.set_meta, "last_sync_error_at", repr(now))
            if lost_contact:
                record_failure("library sync", self._store.receipts.mark_contact_lost, now)
            self.retry.log_failed(_LOG, "library_sync_failed", decision, logging.INFO)
            # Exactly at its time, not deferred: this pull is what announces a purchase. Asked
            # again meanwhile (a push, a poll, the reader), it goes at once.
            await self.retry.wait(
                decision, partial(self._windows.wait, "library"), unless=[self._requested]
            )
            self._requested.set()

    def apply_push(self, push: LibraryPush) -> None:
        """Apply the changes a push carried, or ask for a pull if the feed moved past them."""
        cursor = self._store.library.library_cursor()
        if cursor < push.after or push.page.cursor < cursor or self._new_root(push.page):
            # Changes missed between, a cursor past the feed's end (where a forged page can
            # put it), or a trust root not yet followed: the pull finds the first, rewinds from
            # the second and follows the third.
            log_event(
                _LOG,
                logging.INFO,
                "library_push_gap",
                cursor=cursor,
                after=push.after,
                push_cursor=push.page.cursor,
            )
            self.request()
            return
        fresh = [c for c in push.page.changes if c.seq > cursor]
        try:
            removed = self._store.library.apply_library_changes(
                fresh, push.page.cursor, self._clock.wall()
            )
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
                frames_follow={b: f for b, f in push.frames_follow.items() if b in held},
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

    def _new_root(self, page: ChangesPage) -> bool:
        return self._on_root is not None and page.root_version > self._root_followed

    async def sync_once(self) -> int:
        """Pull every page after the stored cursor; returns the number of changes applied.
        The sync is recorded at its start: every change made before then is in (a trip is
        ready only after a sync that began after it was asked for)."""
        began = self._clock.wall()
        cursor = self._store.library.library_cursor()
        applied = 0
        requests = 0
        rewound = False
        while True:
            asked = self._clock.wall()
            page = await self._client.library_changes(cursor, PAGE_SIZE)
            requests += 1
            if page.service_now is not None:
                # Before the page is applied and delivery woken: order times read on this
                # device's clock decide what is a new purchase. The service's clock was read
                # between asking and hearing: the midpoint halves the error (as NTP does).
                offset = page.service_now - (asked + self._clock.wall()) / 2
                self._store.set_meta("service_clock_offset", repr(offset))
            if page.cursor < cursor:
                # The feed ends before our cursor: a forged entry (the feed is unsigned) moved
                # it past every later change. Pull again from the start: changes already
                # applied are skipped by their seq, so only the ones missed are applied.
                if rewound:  # once per pull: a service that keeps saying so is not believed
                    raise ProtocolError(f"the changes feed rewound twice, to {page.cursor}")
                log_event(_LOG, logging.WARNING, "library_cursor_ahead", cursor=cursor)
                cursor, rewound = 0, True
                continue
            removed = self._store.library.apply_library_changes(
                page.changes, page.cursor, self._clock.wall(), rewound=rewound
            )
            for book_id in removed:
                log_event(_LOG, logging.INFO, "book_removed", book=book_id)
            if self._on_root is not None:
                await self._on_root(page.root_version)
                self._root_followed = max(self._root_followed, page.root_version)
            cursor = page.cursor
            applied += len(page.changes)
            if page.changes:
                self._on_change()
            if not page.has_more:
                break
        self._store.set_meta("last_sync_at", repr(began))
        self._store.set_meta("last_sync_error", "")
        log_event(
            _LOG, logging.INFO, "library_synced", changes=applied, requests=requests, cursor=cursor
        )
        return applied
