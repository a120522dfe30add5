"""Shared highlights: keeps the popular passages of every book on the device, for offline reading.

The service publishes, per passage, how many distinct readers highlighted it (never who). The
device holds them for every book in its library: a book seen for the first time is fetched whole
(`?book=`), then one account-wide feed keeps all of them current from a cursor, so a refresh of a
library of any size is a request or two. Runs at once on start and when the link returns; when the
library changes, every REFRESH_S, and after a failure's backoff, it is deferrable work: it waits
for a wake window (daemon/radio/windows.py), at most the profile's batch window. The reader's
"sync now" (POST /v1/annotations/sync) and a trip refresh at once, and a trip is not ready until
a refresh that began after it was asked for has run.

Everything received is validated as strictly as the reader's own highlights (FAULTS.md #33): a
passage with an over-long or malformed quote is skipped, and quotes are kept and served as text.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from daemon.backoff import Backoff
from daemon.clock import Clock
from daemon.errors import AnnotationError, ShelfsyncError
from daemon.killpoints import killpoint
from daemon.logs import log_event
from daemon.notes.store import NotesStore, Passage
from daemon.protocol import annotation_input
from daemon.protocol.ids import BOOK_ID
from daemon.radio.windows import RadioWindows
from daemon.retry import Comeback, Decision, Retry
from daemon.service import ServiceAPI

_LOG = logging.getLogger("shelfsync.popular")
PAGE = 500
REFRESH_S = 6 * 3600.0


def check_passage(doc: Any) -> Passage:
    """A passage from the service, validated; AnnotationError names what is wrong."""
    if not isinstance(doc, dict):
        raise AnnotationError("passage", "must be a JSON object")
    readers = doc.get("readers")
    if isinstance(readers, bool) or not isinstance(readers, int) or not 0 <= readers < 2**31:
        raise AnnotationError("passage.readers", "must be a non-negative integer")
    passage_id = doc.get("passage_id")
    if not isinstance(passage_id, str) or not BOOK_ID.match(passage_id):
        raise AnnotationError("passage.passage_id", "must be 1-64 letters, digits, '_' or '-'")
    anchor = annotation_input.parse_anchor(doc.get("anchor"), "passage.anchor") if readers else {}
    return Passage(annotation_input.check_book_id(doc.get("book_id")), passage_id, readers, anchor)


class SharedHighlights:
    def __init__(
        self,
        notes: NotesStore,
        client: ServiceAPI,
        clock: Clock,
        windows: RadioWindows,
        *,
        batch_window_s: float,
        refresh_s: float = REFRESH_S,
        backoff: Backoff | None = None,
        comeback: Comeback | None = None,
    ) -> None:
        self._notes = notes
        self._client = client
        self._clock = clock
        self._windows = windows
        self._batch_window_s = batch_window_s
        self._refresh_s = refresh_s
        self.retry = Retry(
            "popular highlights", clock, backoff or Backoff(base_s=5.0, cap_s=600.0), comeback
        )
        self._wanted = asyncio.Event()
        self._now = asyncio.Event()
        self._refreshing = False

    def wake(self) -> None:
        """The library changed: refresh in the next wake window."""
        self._wanted.set()

    def link_up(self) -> None:
        """The link returned (or the daemon started): refresh now."""
        self._now.set()
        self._wanted.set()

    @property
    def busy(self) -> bool:
        """A refresh asked for at once or under way (a window's work: daemon/radio/windows.py);
        one the library's change asked for rides whatever window comes."""
        return self._now.is_set() or self._refreshing

    async def run(self) -> None:
        decision: Decision | None = None
        while True:
            if decision is None:
                due = self._clock.monotonic() + self._refresh_s
                await self._windows.wait(
                    "popular", due, due + self._batch_window_s, unless=self._wanted
                )
            else:
                await self.retry.wait(
                    decision,
                    partial(self._windows.wait, "popular"),
                    slack_s=self._batch_window_s,
                    unless=[self._wanted],
                )
            if self._wanted.is_set() and not self._now.is_set():
                soon = self._clock.monotonic()
                await self._windows.wait(
                    "popular", soon, soon + self._batch_window_s, unless=self._now
                )
            self._wanted.clear()
            self._now.clear()
            self._refreshing = True
            try:
                await self.refresh_once()
                self.retry.succeeded()
                decision = None
                continue
            except (ShelfsyncError, OSError) as e:
                decision = self.retry.failed(e)
            finally:
                self._refreshing = False
            level = logging.INFO if self.retry.failures == 1 else logging.DEBUG
            self.retry.log_failed(_LOG, "popular_refresh_failed", decision, level)

    async def refresh_once(self) -> int:
        """Bring the passages of every book on the device up to date; returns changes applied.
        The refresh is recorded at its start: everything published before then is here."""
        began = self._clock.wall()
        books = set(self._notes.books_on_device())
        self._notes.forget_popular(books)
        cursor = self._notes.popular_cursor()
        changes = 0
        if cursor:
            # Books added since the last refresh: their passages predate the cursor.
            for book_id in sorted(books - self._notes.popular_books()):
                changes += await self._pull(book_id, 0, books)
        changes += await self._pull(None, cursor, books)
        self._notes.record_popular_refresh(began)
        log_event(_LOG, logging.INFO, "popular_refreshed", books=len(books), changes=changes)
        return changes

    async def _pull(self, book_id: str | None, cursor: int, books: set[str]) -> int:
        """Page through one book's passages (from 0) or the account-wide feed (from `cursor`);
        the account-wide feed covers every book the device had when it ran."""
        changes = 0
        while True:
            page = await self._client.popular_highlights(cursor, PAGE, book_id)
            killpoint("popular_received")
            passages = []
            for doc in page.passages:
                try:
                    passage = check_passage(doc)
                except AnnotationError as e:
                    log_event(_LOG, logging.WARNING, "popular_passage_refused", detail=str(e))
                    continue
                if passage.book_id in books:
                    passages.append(passage)
            done = not page.has_more
            covered = ([book_id] if book_id else sorted(books)) if done else []
            self._notes.apply_popular(
                passages, cursor=None if book_id else page.cursor, covered=covered
            )
            changes += len(passages)
            cursor = page.cursor
            if done:
                return changes
