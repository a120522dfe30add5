"""The local API for the reader's notes: annotations, reading positions, popular highlights.

Reads and writes go to the notes store only, never to the network. A write is answered once
the annotation and its outbox entry are committed together with synchronous=FULL, so what the
API confirmed survives a crash or a power cut; the sync worker is only nudged. Bodies are capped
(64 KiB, daemon/api/answers.py) and validated before anything is stored: a malformed or oversized
body gets a 4xx naming the field and changes nothing (FAULTS.md #32). JSON answers escape <, >
and & so a quote holding markup stays text wherever it is pasted (FAULTS.md #33).

Routes (docs/ANNOTATIONS.md has the bodies):
  GET    /v1/books/{book_id}/annotations           list (?include_deleted=1, ?kind=)
  POST   /v1/books/{book_id}/annotations           create
  GET    /v1/annotations/{item_id}                 one; 410 if deleted, 404 if never received
  PATCH  /v1/annotations/{item_id}                 edit, or resolve a conflict (`replaces`)
  DELETE /v1/annotations/{item_id}                 delete (a tombstone that syncs)
  GET    /v1/books/{book_id}/position              here, on each device, latest, furthest
  PUT    /v1/books/{book_id}/position              set this device's place
  GET    /v1/books/{book_id}/popular-highlights    the popular passages held for the book
  POST   /v1/annotations/sync                      sync now ("the network is back"); 202
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from daemon.api.answers import error, json_answer, read_json
from daemon.clock import Clock
from daemon.errors import AnnotationError, StoreError
from daemon.killpoints import killpoint
from daemon.logs import log_event
from daemon.notes.store import NotesStore
from daemon.protocol import annotation_input, merge
from daemon.protocol.hlc import HybridClock
from daemon.protocol.ids import ITEM_ID
from daemon.protocol.merge import Item

_LOG = logging.getLogger("shelfsync.api.notes")
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _bad(e: AnnotationError) -> web.Response:
    return error(400, "bad_annotation", str(e), field=e.field)


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


class NotesApi:
    def __init__(
        self,
        notes: NotesStore,
        hlc: HybridClock,
        clock: Clock,
        on_write: Callable[[], None],
        sync_now: Callable[[], None],
        service_offset: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._notes = notes
        self._hlc = hlc
        self._clock = clock
        self._on_write = on_write
        self._sync_now = sync_now
        self._service_offset = service_offset  # the service's clock minus this device's

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/books/{book_id}/annotations", self._guarded(self.list_annotations))
        r.add_post("/v1/books/{book_id}/annotations", self._guarded(self.create))
        r.add_get("/v1/annotations/{item_id}", self._guarded(self.get))
        r.add_patch("/v1/annotations/{item_id}", self._guarded(self.edit))
        r.add_delete("/v1/annotations/{item_id}", self._guarded(self.delete))
        r.add_get("/v1/books/{book_id}/position", self._guarded(self.get_position))
        r.add_put("/v1/books/{book_id}/position", self._guarded(self.set_position))
        r.add_get("/v1/books/{book_id}/popular-highlights", self._guarded(self.popular))
        r.add_post("/v1/annotations/sync", self._guarded(self.sync))

    @staticmethod
    def _guarded(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.Response:
            item_id = request.match_info.get("item_id")
            if item_id == "sync":  # /v1/annotations/sync, asked with another method than POST
                raise web.HTTPMethodNotAllowed(request.method, ["POST"])
            if item_id is not None and not ITEM_ID.match(item_id):
                return error(400, "bad_id", "annotation ids are 8-64 letters, digits, _ or -")
            try:
                response = await handler(request)
            except StoreError as e:
                # Disk full or a failing flash: the write did not happen, and the reader is told.
                log_event(_LOG, logging.ERROR, "note_not_saved", error=type(e).__name__)
                return error(507, "not_saved", f"nothing was saved: {e}")
            return response

        return guarded

    def _stamp(self) -> str:
        # The device's clock as the service's would read it: a clock a day behind would
        # otherwise stamp every offline edit with the last stamp it saw (the last sync), older
        # than what another device did meanwhile.
        return self._hlc.tick(int((self._clock.wall() + self._service_offset()) * 1000))

    def _committed(self) -> None:
        # Between the durable commit and the answer (FAULTS.md #3): a kill here loses nothing.
        killpoint("annotation_saved")
        self._on_write()

    def _view(self, item: Item, pending: bool) -> dict[str, Any]:
        return named(merge.item_view(item, pending), self._notes.device_names())

    # -- annotations ----------------------------------------------------------------------------

    async def list_annotations(self, request: web.Request) -> web.Response:
        book_id = request.match_info["book_id"]
        include_deleted = request.query.get("include_deleted") in ("1", "true")
        kind = request.query.get("kind")
        if kind is not None and kind not in annotation_input.KINDS:
            return error(
                400, "bad_query", f"kind must be one of {', '.join(annotation_input.KINDS)}"
            )
        names = self._notes.device_names()
        views = [
            named(merge.item_view(item, pending), names)
            for item, pending in self._notes.items(book_id, include_deleted)
        ]
        if kind is not None:
            views = [v for v in views if v["kind"] == kind]
        return json_answer({"book_id": book_id, "annotations": views})

    async def create(self, request: web.Request) -> web.Response:
        book_id = request.match_info["book_id"]
        try:
            new = annotation_input.parse_new(await read_json(request))
        except AnnotationError as e:
            return _bad(e)
        if not self._notes.book_on_device(book_id):
            return error(404, "no_such_book", "this book is not on the device")
        if new.item_id is not None:
            existing = self._notes.item(new.item_id)
            if existing is not None:
                return self._repeated_create(existing, book_id, new)
            item_id = new.item_id
        elif new.kind == "highlight":
            # Named by its range: highlighting a passage already highlighted (here, or on
            # another device) is that highlight again, recoloured, not a second one.
            item_id = merge.highlight_id(book_id, new.anchor)
        else:
            item_id = _new_id("an_")
        again = self._notes.item(item_id)
        stamp = self._stamp()
        delta = (
            merge.create_delta(item_id, book_id, stamp, new)
            if again is None
            else merge.recreate_delta(again, stamp, new)
        )
        item = self._notes.commit_item_edit(delta, _new_id("op_"), stamp, self._clock.wall())
        self._committed()
        log_event(_LOG, logging.INFO, "annotation_created", item=item_id, book=book_id)
        known = again is not None and merge.is_created(again) and not merge.is_deleted(again)
        return json_answer(self._view(item, True), 200 if known else 201)

    def _repeated_create(
        self, existing: Item, book_id: str, new: merge.NewAnnotation
    ) -> web.Response:
        """A create naming an id that exists: the same create again (a retry after a lost
        answer) is answered with the annotation; anything else is a conflict."""
        view = self._view(existing, self._notes.is_pending(existing.item_id))
        same = existing.book_id == book_id and (
            view["kind"],
            view["anchor"],
            view["color"],
            view["note"],
        ) == (new.kind, new.anchor, new.color, new.note)
        if not same:
            return error(409, "id_in_use", "another annotation already has this id")
        return json_answer(view, 200)

    def _live(self, item_id: str) -> Item | web.Response:
        """The annotation, or the answer for one that is deleted (410) or unknown (404)."""
        item = self._notes.item(item_id)
        if item is None or not merge.is_created(item):
            return error(
                404,
                "not_received",
                "no annotation with this id has reached this device (yet)",
            )
        if merge.is_deleted(item):
            view = self._view(item, self._notes.is_pending(item_id))
            return error(410, "deleted", "this annotation was deleted", annotation=view)
        return item

    async def get(self, request: web.Request) -> web.Response:
        item = self._live(request.match_info["item_id"])
        if isinstance(item, web.Response):
            return item
        return json_answer(self._view(item, self._notes.is_pending(item.item_id)))

    async def edit(self, request: web.Request) -> web.Response:
        try:
            edit = annotation_input.parse_edit(await read_json(request))
        except AnnotationError as e:
            return _bad(e)
        item = self._live(request.match_info["item_id"])
        if isinstance(item, web.Response):
            return item
        if edit.replaces is not None:
            unknown = set(edit.replaces) - merge.known_versions(item)
            if unknown:
                return error(
                    409,
                    "unknown_version",
                    "replaces names a note version this device has not seen",
                    versions=sorted(unknown),
                )
        stamp = self._stamp()
        delta = merge.edit_delta(item, stamp, edit)
        merged = self._notes.commit_item_edit(delta, _new_id("op_"), stamp, self._clock.wall())
        self._committed()
        return json_answer(self._view(merged, True))

    async def delete(self, request: web.Request) -> web.Response:
        item_id = request.match_info["item_id"]
        item = self._notes.item(item_id)
        if item is not None and merge.is_created(item) and merge.is_deleted(item):
            # Deleting again (a retry): the same answer, and no second op.
            return json_answer(self._view(item, self._notes.is_pending(item_id)))
        found = self._live(item_id)
        if isinstance(found, web.Response):
            return found
        stamp = self._stamp()
        delta = merge.delete_delta(found, stamp)
        merged = self._notes.commit_item_edit(delta, _new_id("op_"), stamp, self._clock.wall())
        self._committed()
        return json_answer(self._view(merged, True))

    # -- reading position -----------------------------------------------------------------------

    async def get_position(self, request: web.Request) -> web.Response:
        book_id = request.match_info["book_id"]
        position = self._notes.position(book_id)
        return json_answer(merge.position_view(position, book_id, self._hlc.node))

    async def set_position(self, request: web.Request) -> web.Response:
        book_id = request.match_info["book_id"]
        try:
            place = annotation_input.parse_place(await read_json(request))
        except AnnotationError as e:
            return _bad(e)
        if not self._notes.book_on_device(book_id):
            return error(404, "no_such_book", "this book is not on the device")
        stamp = self._stamp()
        delta = merge.position_delta(book_id, stamp, place)
        merged = self._notes.commit_position(delta, _new_id("op_"), stamp, self._clock.wall())
        self._committed()
        return json_answer(merge.position_view(merged, book_id, self._hlc.node))

    async def sync(self, request: web.Request) -> web.Response:
        """Start a sync at once, without waiting for it: the reader pressed "sync", or the
        system said the network is back. The status tells when it is done."""
        self._sync_now()
        return json_answer({"started": True}, 202)

    # -- popular highlights ---------------------------------------------------------------------

    async def popular(self, request: web.Request) -> web.Response:
        book_id = request.match_info["book_id"]
        return json_answer({"book_id": book_id, "passages": self._notes.popular(book_id)})


def named(view: dict[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """An annotation's view with each device it mentions also by the name its reader gave it
    (None for a device the service has not named): "edited on Phone", not on dev_3f2a."""
    for conflict in view["conflicts"]:
        conflict["device_name"] = names.get(conflict["device_id"])
    if view["delete_overruled"] is not None:
        view["delete_overruled"]["device_name"] = names.get(view["delete_overruled"]["device_id"])
    view["created_by_name"] = names.get(view["created_by"] or "")
    view["deleted_by_name"] = names.get(view["deleted_by"] or "")
    return view
