"""The local API for managing the books on the device: pin, opened, download, trip.

Routes:
  GET  /v1/library                    a page of the library, newest first:
                                      ?limit=1..500 (100), ?cursor= (the last page's
                                      next_cursor), ?state=complete,downloading,... ->
                                      {"books": [...], "next_cursor": str | null}
  GET  /v1/library/{book_id}          that book's entry alone
  POST /v1/books/{book_id}/pin        {"pinned": bool}  never evict it (or allow it again)
  POST /v1/books/{book_id}/opened     the reader opened it: it is protected while open, and
                                      counts as likely to be read again
  POST /v1/books/{book_id}/download   bring a book from the cloud archive onto the device
  POST /v1/trip                       {"days": 1..90} get ready for days offline
  GET  /v1/trip                       how ready the device is, in a sentence
  PUT  /v1/device                     {"name": str} what the reader calls this device (status)
Each write is one small transaction on the daemon's store; the planner is woken to act on it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from daemon.api.answers import Refused, error, json_answer, read_json
from daemon.clock import Clock
from daemon.content.trip import (
    MAX_TRIP_DAYS,
    Trip,
    mark_ready,
    readiness,
    start_trip,
    trip_state,
)
from daemon.notes.store import annotation_status
from daemon.protocol.ids import BOOK_ID, MAX_DEVICE_NAME
from daemon.store import Store

STATES = ("queued", "downloading", "retrying", "complete", "evicted", "in_cloud")
DEFAULT_PAGE = 100
MAX_PAGE = 500
_SCAN = 200  # rows read at a time while a state filter looks for a page's books


def library_page(store: Store, query: Mapping[str, str]) -> dict[str, Any]:
    """One page of GET /v1/library; Refused (400) for a bad limit, cursor or state."""
    limit = _limit(query.get("limit"))
    after = _cursor(query.get("cursor"))
    states = _states(query.get("state"))
    books: list[dict[str, Any]] = []
    last, exhausted = after, False
    while len(books) < limit and not exhausted:
        want = _SCAN if states else limit - len(books)
        chunk = store.views.library_view(after=last, limit=want)
        exhausted = len(chunk) < want
        for book in chunk:
            last = (book["ordered_at"], book["book_id"])
            if states is None or book["state"] in states:
                books.append(book)
                if len(books) == limit:
                    break
    # A full page points on when anything follows (with a state filter, the next page may
    # turn out empty); a short page is the end.
    more = (
        len(books) == limit and last is not None and store.views.library_view(after=last, limit=1)
    )
    return {"books": books, "next_cursor": _encode_cursor(last) if more and last else None}


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE
    if not text.isdecimal() or not 1 <= int(text) <= MAX_PAGE:
        raise Refused(error(400, "bad_query", f"limit must be a number from 1 to {MAX_PAGE}"))
    return int(text)


def _states(text: str | None) -> set[str] | None:
    if text is None:
        return None
    states = set(text.split(","))
    if not states <= set(STATES):
        raise Refused(error(400, "bad_query", f"state must be among {', '.join(STATES)}"))
    return states


def _encode_cursor(last: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(last)).encode()).decode().rstrip("=")


def _cursor(text: str | None) -> tuple[float, str] | None:
    """The (ordered_at, book_id) a cursor names; it is opaque to clients."""
    if text is None:
        return None
    try:
        ordered_at, book_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if isinstance(ordered_at, int | float) and isinstance(book_id, str):
            return float(ordered_at), book_id
    except (ValueError, TypeError, binascii.Error):
        pass
    raise Refused(error(400, "bad_cursor", "cursor must be a next_cursor this API gave"))


async def _body(request: web.Request) -> dict[str, Any]:
    doc = await read_json(request, default={})
    if not isinstance(doc, dict):
        raise Refused(error(400, "bad_json", "the body must be a JSON object"))
    return doc


class LibraryApi:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        wake: Callable[[], None],
        runtime: Callable[[], dict[str, Any]],
        free_bytes: Callable[[], int],
        renamed: Callable[[str], None] = lambda name: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._wake = wake  # the planner (and, for a trip, every sync) looks again
        self._runtime = runtime
        self._free_bytes = free_bytes  # room left for books: quota and file system both
        self._renamed = renamed  # the service learns the name at the next annotation sync

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/library/{book_id}", self.entry)
        app.router.add_post("/v1/books/{book_id}/pin", self.pin)
        app.router.add_post("/v1/books/{book_id}/opened", self.opened)
        app.router.add_post("/v1/books/{book_id}/download", self.download)
        app.router.add_post("/v1/trip", self.start_trip)
        app.router.add_get("/v1/trip", self.trip)
        app.router.add_put("/v1/device", self.name_device)

    def _book_id(self, request: web.Request) -> str | None:
        book_id = request.match_info["book_id"]
        return book_id if BOOK_ID.match(book_id) else None

    async def entry(self, request: web.Request) -> web.Response:
        book_id = self._book_id(request)
        found = [] if book_id is None else self._store.views.library_view(book_id=book_id)
        if not found:
            return error(404, "no_such_book", "this book is not in the library")
        return json_answer(found[0])

    async def pin(self, request: web.Request) -> web.Response:
        body = await _body(request)
        pinned = body.get("pinned")
        if not isinstance(pinned, bool):
            return error(400, "bad_field", "'pinned' must be true or false")
        book_id = self._book_id(request)
        if book_id is None or not self._store.library.set_pinned(book_id, pinned):
            return error(404, "no_such_book", "this book is not in the library")
        return json_answer({"book_id": book_id, "pinned": pinned})

    async def opened(self, request: web.Request) -> web.Response:
        book_id = self._book_id(request)
        if book_id is None or not self._store.library.mark_opened(book_id, self._clock.wall()):
            return error(404, "no_such_book", "this book is not in the library")
        return json_answer({"book_id": book_id})

    async def download(self, request: web.Request) -> web.Response:
        book_id = self._book_id(request)
        if book_id is None or not self._store.library.request_download(book_id, self._clock.wall()):
            return error(404, "no_such_book", "this book is not in the library")
        self._wake()
        return json_answer({"book_id": book_id, "requested": True}, status=202)

    async def start_trip(self, request: web.Request) -> web.Response:
        body = await _body(request)
        days = body.get("days")
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_TRIP_DAYS:
            return error(
                400, "bad_field", f"'days' must be a whole number from 1 to {MAX_TRIP_DAYS}"
            )
        trip = start_trip(self._store, days, self._clock.wall())
        self._wake()
        return json_answer(self._readiness(trip), status=202)

    async def trip(self, request: web.Request) -> web.Response:
        trip = trip_state(self._store, self._clock.wall())
        if trip is None:
            return error(404, "no_trip", 'no trip is planned; POST /v1/trip {"days": N}')
        return json_answer(self._readiness(trip))

    async def name_device(self, request: web.Request) -> web.Response:
        body = await _body(request)
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_DEVICE_NAME:
            return error(400, "bad_field", f"'name' must be 1 to {MAX_DEVICE_NAME} characters")
        if not name.isprintable():
            return error(400, "bad_field", "'name' must be printable text")
        self._store.set_meta("device_name", name.strip())
        self._renamed(name.strip())
        return json_answer({"device_id": self._store.get_meta("device_id"), "name": name.strip()})

    def _readiness(self, trip: Trip) -> dict[str, Any]:
        runtime = self._runtime()
        notes = annotation_status(self._store) or {}
        refreshed_at = notes.get("popular_refreshed_at")
        synced_at = float(self._store.get_meta("last_sync_at") or 0)
        report = readiness(
            trip.days,
            self._store.views.library_view(),
            runtime.get("waiting", {}),
            notes.get("shared_highlights", 0),
            notes.get("outbox_depth", 0),
            self._free_bytes(),
            highlights_refreshed=refreshed_at is not None and refreshed_at >= trip.started_at,
            library_synced=synced_at >= trip.started_at,
            online=bool(runtime.get("online")),
            next_attempt_at=runtime.get("next_attempt_at"),
            between_windows=bool(runtime.get("between_windows")),
            under_way=trip.ready_at is not None,
        )
        if report["ready"]:
            mark_ready(self._store, trip, self._clock.wall())
        return report
