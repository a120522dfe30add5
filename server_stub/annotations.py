"""Annotation sync and popular highlights, the service side (docs/PROTOCOL.md "Annotation sync"
and "Popular highlights").

Devices push batches of ops (each a small state to join, with a client-made op_id) and pull the
account's changed annotation states from a cursor. The service applies each op_id once, merges with
the same pure code as the devices (daemon/protocol/merge.py), and keeps a hybrid logical clock that
every answer carries, so a device whose clock is wrong (1970) stamps its next edits after everything
it has seen.

Popular passages: every live highlight of an account that shares them counts towards its
passage (the same resource and the same quoted words, whitespace and case aside). A passage is
published with its count of distinct readers once it reaches the threshold, never with who.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from daemon.errors import AnnotationError
from daemon.protocol import annotation_input, hlc, merge
from daemon.protocol.ids import BOOK_ID
from daemon.protocol.merge import Item
from server_stub.api_errors import ApiError, read_json_object
from server_stub.push import PushHub
from server_stub.store import AnnotationOp, Device, Store

MAX_PUSH_BYTES = 8 * 1024 * 1024  # a batch, decoded; gzip on the wire makes it ~4x smaller
MAX_BATCH_OPS = 5000
CHANGES_DEFAULT_LIMIT = 200
CHANGES_MAX_LIMIT = 1000
CHANGES_MAX_BYTES = 1024 * 1024  # a page stops growing past this (at least one state is sent)
POPULAR_DEFAULT_LIMIT = 500
POPULAR_MAX_LIMIT = 1000
POSITION_TARGET = "position:"
_OP_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def passage_of(item: Item) -> tuple[str, str] | None:
    """The popular passage (id, anchor JSON) a live highlight counts towards, or None."""
    if merge.is_deleted(item) or item.fields.get("kind", ("", None))[1] != "highlight":
        return None
    anchor = item.fields.get("anchor", ("", None))[1]
    if not isinstance(anchor, dict) or "quote" not in anchor:
        return None
    words = " ".join(anchor["quote"]["exact"].split()).casefold()
    key = f"{item.book_id}\n{anchor['resource']}\n{words}".encode()
    passage_id = "pa_" + hashlib.sha256(key).hexdigest()[:24]
    # Book text and where it is; never the reader's note, colour or ids.
    shown = {k: anchor[k] for k in ("resource", "start", "end", "cfi", "quote") if k in anchor}
    return passage_id, json.dumps(shown, ensure_ascii=False, separators=(",", ":"))


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ApiError(400, "bad_query", f"{name!r} must be an integer in [{low}, {high}]")
    return int(raw)


async def _read_batch(request: web.Request) -> bytes:
    """The request body, decoded (aiohttp undoes gzip), refused past MAX_PUSH_BYTES.

    Read from the stream rather than request.read(): the application's 64 KiB body limit is for
    the small JSON routes, and a batch of a thousand notes is bigger."""
    if request.content_length is not None and request.content_length > MAX_PUSH_BYTES:
        raise _too_large()
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_PUSH_BYTES:
            raise _too_large()
    return bytes(body)


def _too_large() -> ApiError:
    return ApiError(413, "body_too_large", f"a batch is at most {MAX_PUSH_BYTES} bytes decoded")


def _parse_op(doc: Any, device_id: str) -> AnnotationOp:
    """One op of a batch; AnnotationError names what is wrong (the op is refused alone)."""
    if not isinstance(doc, dict) or set(doc) not in ({"op_id", "item"}, {"op_id", "position"}):
        raise AnnotationError("op", "must be {op_id, item} or {op_id, position}")
    if "item" in doc:
        item = annotation_input.item_from_doc(doc["item"])
        if merge.author_nodes(item) - {device_id}:
            raise AnnotationError("op.item", "carries edits stamped by another device")
        return AnnotationOp(doc["op_id"], item.item_id, item)
    position = annotation_input.position_from_doc(doc["position"])
    if merge.position_author_nodes(position) - {device_id}:
        raise AnnotationError("op.position", "carries a place stamped by another device")
    return AnnotationOp(doc["op_id"], POSITION_TARGET + position.book_id, position)


def _op_id(doc: Any) -> str:
    op_id = doc.get("op_id") if isinstance(doc, dict) else None
    if not isinstance(op_id, str) or not 8 <= len(op_id) <= 64 or set(op_id) - _OP_ID_CHARS:
        raise ApiError(400, "bad_op_id", "every op needs an op_id of 8-64 letters, digits, _ or -")
    return op_id


class AnnotationRoutes:
    def __init__(
        self,
        store: Store,
        hub: PushHub,
        clock: Callable[[], float],
        device: Callable[[web.Request], Device],
        account: Callable[[web.Request], str],
    ) -> None:
        self._store = store
        self._hub = hub
        self._clock = clock
        self._device = device
        self._account = account
        self._hlc = hlc.HybridClock("service")

    def add_to(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/annotations/ops", self.push_ops, name="annotation_ops")
        r.add_get("/v1/annotations/changes", self.changes, name="annotation_changes")
        r.add_get("/v1/popular-highlights", self.popular, name="popular_highlights")
        r.add_put("/v1/account/sharing", self.sharing, name="account_sharing")

    def _stamp(self) -> str:
        return self._hlc.tick(int(self._clock() * 1000))

    async def push_ops(self, request: web.Request) -> web.Response:
        device = self._device(request)
        try:
            doc = json.loads(await _read_batch(request))
        except (ValueError, RecursionError) as e:
            raise ApiError(400, "bad_json", f"the body is not JSON ({e})") from e
        raw_ops = doc.get("ops") if isinstance(doc, dict) else None
        if not isinstance(raw_ops, list) or not 0 < len(raw_ops) <= MAX_BATCH_OPS:
            raise ApiError(400, "bad_batch", f"'ops' must be a list of 1-{MAX_BATCH_OPS} ops")
        ops: list[AnnotationOp] = []
        rejected: dict[str, str] = {}
        for raw in raw_ops:
            op_id = _op_id(raw)
            try:
                op = _parse_op(raw, device.device_id)
            except AnnotationError as e:
                rejected[op_id] = str(e)
                continue
            ops.append(op)
            self._hlc.observe(
                merge.max_stamp(op.delta)
                if isinstance(op.delta, Item)
                else merge.position_max_stamp(op.delta)
            )
        result = self._store.apply_annotation_ops(
            device.account_id, device.device_id, ops, self._clock(), passage_of
        )
        rejected.update(result.rejected)
        if result.applied:
            await self._hub.notify(device.account_id, None, result.seq, kind="annotations_changed")
        for told, seq in result.notices.items():
            await self._hub.notify(device.account_id, told, seq, kind="notices_changed")
        for reader in result.popular_readers:
            await self._hub.notify(reader, None, 0, kind="popular_changed")
        return web.json_response(
            {
                "acked": result.applied + result.duplicates,
                "rejected": [{"op_id": k, "detail": v} for k, v in rejected.items()],
                "clock": self._stamp(),
            }
        )

    async def changes(self, request: web.Request) -> web.Response:
        device = self._device(request)
        cursor = _query_int(request, "cursor", 0, 0, 2**63 - 1)
        limit = _query_int(request, "limit", CHANGES_DEFAULT_LIMIT, 1, CHANGES_MAX_LIMIT)
        page = self._store.annotation_changes(
            device.account_id, device.device_id, cursor, limit, CHANGES_MAX_BYTES
        )
        # States are stored as JSON already: splice them in rather than parse and re-encode.
        entries = ",".join(
            f'{{"seq":{seq},"{"position" if target.startswith(POSITION_TARGET) else "item"}":'
            f"{state}}}"
            for seq, target, state in page.entries
        )
        tail = json.dumps(
            {"cursor": page.cursor, "has_more": page.has_more, "clock": self._stamp()}
        )
        return web.Response(
            body=f'{{"changes":[{entries}],{tail[1:]}'.encode(),
            content_type="application/json",
        )

    async def popular(self, request: web.Request) -> web.Response:
        device = self._device(request)
        cursor = _query_int(request, "cursor", 0, 0, 2**63 - 1)
        limit = _query_int(request, "limit", POPULAR_DEFAULT_LIMIT, 1, POPULAR_MAX_LIMIT)
        book_id = request.query.get("book")
        if book_id is not None and not (
            BOOK_ID.match(book_id)
            and self._store.in_library(device.account_id, device.device_id, book_id)
        ):
            raise ApiError(403, "not_in_library", "that book is not in this device's library")
        page = self._store.popular_changes(
            device.account_id, device.device_id, cursor, limit, book_id
        )
        return web.json_response(
            {
                "passages": [
                    {
                        "seq": seq,
                        "book_id": book,
                        "passage_id": passage_id,
                        "readers": readers,
                        "anchor": json.loads(anchor),
                    }
                    for seq, book, passage_id, readers, anchor in page.entries
                ],
                "cursor": page.cursor,
                "has_more": page.has_more,
            }
        )

    async def sharing(self, request: web.Request) -> web.Response:
        account_id = self._account(request)
        share = (await read_json_object(request)).get("share_highlights")
        if not isinstance(share, bool):
            raise ApiError(400, "bad_field", "'share_highlights' must be true or false")
        self._store.set_sharing(account_id, share)
        return web.json_response({"share_highlights": share})


def add_routes(
    app: web.Application,
    store: Store,
    hub: PushHub,
    device: Callable[[web.Request], Device],
    account: Callable[[web.Request], str],
    clock: Callable[[], float] = time.time,
) -> None:
    """Register the annotation routes on the stub's application."""
    AnnotationRoutes(store, hub, clock, device, account).add_to(app)
