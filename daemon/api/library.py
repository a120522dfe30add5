"""The local API for managing the books on the device: pin, opened, download, trip.

Routes:
  POST /v1/books/{book_id}/pin        {"pinned": bool}  never evict it (or allow it again)
  POST /v1/books/{book_id}/opened     the reader opened it: it is protected while open, and
                                      counts as likely to be read again
  POST /v1/books/{book_id}/download   bring a book from the cloud archive onto the device
  POST /v1/trip                       {"days": 1..90} get ready for days offline
  GET  /v1/trip                       how ready the device is, in a sentence
Each write is one small transaction on the daemon's store; the planner is woken to act on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from daemon.clock import Clock
from daemon.content.trip import MAX_TRIP_DAYS, readiness, start_trip, trip_state
from daemon.store import Store

_BOOK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        doc = json.loads(await request.read() or b"{}")
    except ValueError:
        return _error(400, "bad_json", "the body is not JSON")
    if not isinstance(doc, dict):
        return _error(400, "bad_json", "the body must be a JSON object")
    return doc


class LibraryApi:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        wake: Callable[[], None],
        runtime: Callable[[], dict[str, Any]],
        free_bytes: Callable[[], int],
    ) -> None:
        self._store = store
        self._clock = clock
        self._wake = wake  # the planner (and, for a trip, every sync) looks again
        self._runtime = runtime
        self._free_bytes = free_bytes  # room left for books: quota and file system both

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/books/{book_id}/pin", self.pin)
        app.router.add_post("/v1/books/{book_id}/opened", self.opened)
        app.router.add_post("/v1/books/{book_id}/download", self.download)
        app.router.add_post("/v1/trip", self.start_trip)
        app.router.add_get("/v1/trip", self.trip)

    def _book_id(self, request: web.Request) -> str | None:
        book_id = request.match_info["book_id"]
        return book_id if _BOOK_ID.match(book_id) else None

    async def pin(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        pinned = body.get("pinned")
        if not isinstance(pinned, bool):
            return _error(400, "bad_field", "'pinned' must be true or false")
        book_id = self._book_id(request)
        if book_id is None or not self._store.set_pinned(book_id, pinned):
            return _error(404, "no_such_book", "this book is not in the library")
        return web.json_response({"book_id": book_id, "pinned": pinned})

    async def opened(self, request: web.Request) -> web.Response:
        book_id = self._book_id(request)
        if book_id is None or not self._store.mark_opened(book_id, self._clock.wall()):
            return _error(404, "no_such_book", "this book is not in the library")
        return web.json_response({"book_id": book_id})

    async def download(self, request: web.Request) -> web.Response:
        book_id = self._book_id(request)
        if book_id is None or not self._store.request_download(book_id, self._clock.wall()):
            return _error(404, "no_such_book", "this book is not in the library")
        self._wake()
        return web.json_response({"book_id": book_id, "requested": True}, status=202)

    async def start_trip(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        days = body.get("days")
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_TRIP_DAYS:
            return _error(
                400, "bad_field", f"'days' must be a whole number from 1 to {MAX_TRIP_DAYS}"
            )
        start_trip(self._store, days, self._clock.wall())
        self._wake()
        return web.json_response(self._readiness(days), status=202)

    async def trip(self, request: web.Request) -> web.Response:
        trip = trip_state(self._store, self._clock.wall())
        if trip is None:
            return _error(404, "no_trip", 'no trip is planned; POST /v1/trip {"days": N}')
        return web.json_response(self._readiness(trip.days))

    def _readiness(self, days: int) -> dict[str, Any]:
        return readiness(
            days,
            self._store.library_view(),
            self._runtime().get("waiting", {}),
            self._store.shared_highlight_count(),
            self._store.notes_pending(),
            self._free_bytes(),
        )
