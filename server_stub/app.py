"""The stub's HTTP API (docs/PROTOCOL.md) and `running_stub`, the way tests and the demo run it.

Handlers are thin: authenticate, validate, one store call, answer. Manifests are signed per
request; packages stream from the store in 64 KiB slices, never compressed, with Range.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import hdrs, web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.protocol.crypto import WRAP_ALG, key_id, wrap_content_key, x25519_public_key
from daemon.protocol.ids import MAX_DEVICE_NAME
from daemon.protocol.manifest import Manifest, WrappedKey, parse_manifest
from server_stub.annotations import add_routes as add_annotation_routes
from server_stub.api_errors import ApiError, error_middleware, need_str, read_json_object
from server_stub.catalog import ImportReport, PackagingSettings, import_library
from server_stub.faults import FAULTS, FaultInjector, Fired, fault_middleware, fired, write_body
from server_stub.faults import install as install_faults
from server_stub.logs import AccessLogger
from server_stub.opds import import_opds
from server_stub.push import VERSIONS, PushHub, frames_message, library_message
from server_stub.receipts import add_routes as add_receipt_routes
from server_stub.signing import ServiceKey, TrustChain, load_or_create_key, sign_manifest
from server_stub.store import Device, PackageInfo, Store
from server_stub.store.catalog import PACKAGE_CHUNK
from server_stub.store.library import ORDER_REASONS

MAX_BODY = 64 * 1024  # bytes: every request body is a small JSON object
CHANGES_DEFAULT_LIMIT = 500
CHANGES_MAX_LIMIT = 1000
TEMPLATE_CACHE_SIZE = 64  # parsed manifest templates kept (mahabharata's is ~1 MB of JSON)
SHUTDOWN_TIMEOUT = 5.0  # seconds for in-flight requests when the stub stops

Clock = Callable[[], float]

STORE = web.AppKey("store", Store)
SERVICE_KEY = web.AppKey("service_key", ServiceKey)
TRUST = web.AppKey("trust_chain", TrustChain)
HUB = web.AppKey("push_hub", PushHub)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
TEMPLATES: web.AppKey[dict[tuple[str, int], Manifest]] = web.AppKey("manifest_templates")

_RANGE = re.compile(r"\Abytes=([0-9]*)-([0-9]*)\Z")


# -- authentication -------------------------------------------------------------------------------


def _bearer(request: web.Request) -> str:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send 'Authorization: Bearer <token>'")
    return token.strip()


def _unauthorized(detail: str) -> ApiError:
    return ApiError(
        401, "unauthorized", detail, {hdrs.WWW_AUTHENTICATE: 'Bearer realm="shelfsync"'}
    )


def _account(request: web.Request) -> str:
    account_id = request.app[STORE].account_for_token(_bearer(request))
    if account_id is None:
        raise _unauthorized("unknown account token (this route needs an account token)")
    return account_id


def _device(request: web.Request) -> Device:
    device = request.app[STORE].device_for_token(_bearer(request))
    if device is None:
        raise _unauthorized("unknown device token (this route needs a device token)")
    return device


def _account_or_device(request: web.Request) -> str:
    token = _bearer(request)
    store = request.app[STORE]
    account_id = store.account_for_token(token)
    if account_id is not None:
        return account_id
    device = store.device_for_token(token)
    if device is None:
        raise _unauthorized("unknown token")
    return device.account_id


# -- accounts, devices, the store -----------------------------------------------------------------


async def create_account(request: web.Request) -> web.Response:
    name = need_str(await read_json_object(request), "name")
    account_id, token = request.app[STORE].create_account(name, request.app[CLOCK]())
    return web.json_response({"account_id": account_id, "account_token": token}, status=201)


async def create_device(request: web.Request) -> web.Response:
    account_id = _account(request)
    body = await read_json_object(request)
    name = need_str(body, "name")
    public_key = need_str(body, "public_key")
    try:
        x25519_public_key(public_key)
    except ValueError as e:
        raise ApiError(400, "bad_public_key", f"public_key: {e}") from e
    now = request.app[CLOCK]()
    device_id, token = request.app[STORE].create_device(account_id, name, public_key, now)
    # The service's time: what the device's orders are measured against, whatever its clock.
    return web.json_response(
        {"device_id": device_id, "device_token": token, "registered_at": now}, status=201
    )


async def rename_device(request: web.Request) -> web.Response:
    """The reader named this device ("Hall Kindle"): the account's other devices show it."""
    device = _device(request)
    name = need_str(await read_json_object(request), "name", MAX_DEVICE_NAME)
    if not name.isprintable():
        raise ApiError(400, "bad_field", "'name' must be printable text")
    request.app[STORE].rename_device(device.device_id, name)
    await request.app[HUB].notify(device.account_id, None, 0, kind="devices_changed")
    return web.json_response({"device_id": device.device_id, "name": name})


async def account_devices(request: web.Request) -> web.Response:
    """The account's devices by name, so one device can say which other one wrote a note."""
    device = _device(request)
    devices = request.app[STORE].account_devices(device.account_id)
    return web.json_response({"devices": [{"device_id": d, "name": n} for d, n in devices]})


def _position_doc(position: float | None) -> float | int | None:
    """2 rather than 2.0: series positions are whole numbers but for the odd novella (1.5)."""
    return int(position) if position is not None and position.is_integer() else position


async def catalog(request: web.Request) -> web.Response:
    _account_or_device(request)
    books = [
        {
            "book_id": b.book_id,
            "title": b.title,
            "authors": list(b.authors),
            "language": b.language,
            "version": b.version,
            "package_size": b.package_size,
            "epub_size": b.epub_size,
            "series": [{"name": s.name, "position": _position_doc(s.position)} for s in b.series],
            "cover": None
            if b.cover is None
            else {
                "media_type": b.cover.media_type,
                "size": b.cover.size,
                "sha256": b.cover.sha256,
                "origin": b.cover.origin,
                "resource": b.cover.resource,
            },
        }
        for b in request.app[STORE].catalog()
    ]
    return web.json_response({"books": books})


def _catalog_book(request: web.Request, book_id: str) -> None:
    if request.app[STORE].book(book_id) is None:
        raise ApiError(404, "unknown_book", f"the catalog has no book {book_id!r}")


def _own_device(request: web.Request, account_id: str, device_id: str) -> None:
    device = request.app[STORE].device(device_id)
    if device is None or device.account_id != account_id:
        raise ApiError(404, "unknown_device", f"this account has no device {device_id!r}")


async def _add(
    request: web.Request, account_id: str, book_id: str, device_id: str | None, reason: str
) -> web.Response:
    """Add to the library (an order, or a hint), tell the devices, answer with the order's
    seq and time and the hints it brought."""
    _catalog_book(request, book_id)
    before = _feed_positions(request.app, account_id, device_id)
    added = request.app[STORE].add_to_library(
        account_id, book_id, device_id, reason, request.app[CLOCK]()
    )
    if not added:
        if device_id is None:
            raise ApiError(409, "already_in_library", f"{book_id} is already in this library")
        raise ApiError(409, "already_on_device", f"{book_id} is already on {device_id}")
    await _library_changed(request.app, account_id, device_id, added[-1].seq, before)
    order, hints = added[0], added[1:]
    return web.json_response(
        {
            "seq": order.seq,
            "at": order.at,
            "hints": [{"book_id": h.book_id, "reason": h.reason, "seq": h.seq} for h in hints],
        },
        status=201,
    )


async def _add_for_account(request: web.Request, reason: str) -> web.Response:
    """`{"book_id"}`: the book for every device of the account."""
    account_id = _account(request)
    book_id = need_str(await read_json_object(request), "book_id", 64)
    return await _add(request, account_id, book_id, None, reason)


async def _add_for_device(request: web.Request, reason: str) -> web.Response:
    """`{"book_id", "device_id"}`: the book for one device of the account."""
    account_id = _account(request)
    doc = await read_json_object(request)
    book_id = need_str(doc, "book_id", 64)
    device_id = need_str(doc, "device_id", 64)
    _own_device(request, account_id, device_id)
    return await _add(request, account_id, book_id, device_id, reason)


async def buy(request: web.Request) -> web.Response:
    return await _add_for_account(request, "bought")


async def send(request: web.Request) -> web.Response:
    return await _add_for_device(request, "sent")


async def sample(request: web.Request) -> web.Response:
    """The reader asked the store for a sample on one device: a hint, not an order."""
    return await _add_for_device(request, "sample")


async def wishlist(request: web.Request) -> web.Response:
    """The reader put a book on the wish list: a hint for every device of the account."""
    return await _add_for_account(request, "wishlist")


async def return_book(request: web.Request) -> web.Response:
    account_id = _account(request)
    book_id = need_str(await read_json_object(request), "book_id", 64)
    before = _feed_positions(request.app, account_id, None)
    change = request.app[STORE].remove_from_library(
        account_id, book_id, "returned", request.app[CLOCK]()
    )
    if change is None:
        raise ApiError(404, "not_in_library", f"{book_id} is not in this library")
    await _library_changed(request.app, account_id, None, change.seq, before)
    return web.json_response({"seq": change.seq, "at": change.at}, status=201)


async def get_service_key(request: web.Request) -> web.Response:
    key = request.app[SERVICE_KEY]
    return web.json_response({"public_key": key.public_key_text, "key_id": key.key_id})


async def trust_root(request: web.Request) -> web.Response:
    """Root version N of the chain a device walks from the key it was provisioned with."""
    version = _decimal(request.match_info["version"])
    envelope = None if version is None else request.app[TRUST].envelope(version)
    if envelope is None:
        raise ApiError(404, "unknown_root", f"no trust root {request.match_info['version'][:20]}")
    return web.Response(body=envelope, content_type="application/vnd.shelfsync.root")


async def rotate_key(request: web.Request) -> web.Response:
    """Admin (faults only): a new signing key in a new trust root, as --rotate-key does."""
    chain = request.app[TRUST]
    version = await asyncio.to_thread(chain.rotate, request.app[CLOCK]())
    key = chain.signing_key.public_key()
    return web.json_response({"version": version, "key_id": key_id(key)}, status=201)


# -- the changes feed and the push channel --------------------------------------------------------


def _feed_positions(app: web.Application, account_id: str, device_id: str | None) -> dict[str, int]:
    """Where the feed of each device listening on push version 2 ends, read before a change
    (no await between this and the change: nothing else can slip in)."""
    store = app[STORE]
    return {d: store.latest_seq(account_id, d) for d in app[HUB].carrying(account_id, device_id)}


async def _library_changed(
    app: web.Application,
    account_id: str,
    device_id: str | None,
    cursor: int,
    before: dict[str, int],
) -> None:
    """Tell the devices: version 2 sockets get the changes since `before` and, for an order,
    the manifest signed for that device, then the package's first frames that fit the room it
    said it has; the others the plain notice."""
    store = app[STORE]
    whole: dict[str, list[bytes]] = {}
    follows: dict[str, list[tuple[str, int, int]]] = {}
    for dev, after in before.items():
        device = store.device(dev)
        changes = store.changes(account_id, dev, after, CHANGES_MAX_LIMIT + 1)
        if device is None or len(changes) > CHANGES_MAX_LIMIT:
            continue  # more than a page: the plain notice, and the device pulls
        manifests, follow = [], []
        room = app[HUB].prefix_room(account_id, dev)
        for c in changes:
            if c.action != "add" or c.reason not in ORDER_REASONS:
                continue  # a hint or a return: nothing to fetch at once
            try:
                envelope = _signed_manifest(
                    app, device, c.book_id, app.get(FAULTS), "pushed_manifest"
                )
            except ApiError:
                continue  # no such version (a replay fault): the device fetches it
            manifests.append((c.book_id, envelope))
            length = _first_frames_length(app, c.book_id, c.version, room)
            if length:
                room -= length
                follow.append((c.book_id, c.version, length))
        whole[dev] = [
            library_message(
                changes[-1].seq if changes else after,
                after,
                [c.to_doc() for c in changes],
                manifests,
                follow,
                root_version=app[TRUST].version,
                now=app[CLOCK](),
            )
        ]
        follows[dev] = follow
    await app[HUB].notify(account_id, device_id, cursor, whole=whole)
    # The frames only once the change is on its way: reading them does not delay the news.
    frames = {
        dev: [
            frames_message(book_id, version, offset, data)
            for book_id, version, length in follow
            for offset, data in _first_frames(app, book_id, version, length)
        ]
        for dev, follow in follows.items()
        if follow
    }
    await app[HUB].send_carried(account_id, frames)


def _first_frames_length(app: web.Application, book_id: str, version: int, room: int) -> int:
    """How many of the package's first bytes are whole frames that fit `room` (0: none)."""
    end = 0
    for frame in _template(app, book_id, version).frames:
        if frame.offset + frame.length > room:
            break
        end = frame.offset + frame.length
    return end


def _first_frames(
    app: web.Application, book_id: str, version: int, length: int
) -> list[tuple[int, bytes]]:
    """The package's whole frames within its first `length` bytes, each (offset, its bytes)."""
    store = app[STORE]
    info = store.package_info(book_id, version)
    if info is None:
        return []
    data = store.read_package(info.rowid, 0, length)
    return [
        (f.offset, data[f.offset : f.offset + f.length])
        for f in _template(app, book_id, version).frames
        if f.offset + f.length <= length
    ]


def _dictionaries_doc(store: Store) -> list[dict[str, object]]:
    """The catalog's current dictionary, which a device fetches while idle (PROTOCOL.md)."""
    data = store.current_dictionary()
    if data is None:
        return []
    return [{"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]


def _decimal(text: str) -> int | None:
    """A plain ASCII decimal, or None (str.isdigit alone accepts '²')."""
    return int(text) if text.isascii() and text.isdigit() else None


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = _decimal(raw)
    if value is None or not low <= value <= high:
        raise ApiError(400, "bad_query", f"{name!r} must be an integer in [{low}, {high}]")
    return value


async def changes(request: web.Request) -> web.Response:
    device = _device(request)
    cursor = _query_int(request, "cursor", 0, 0, 2**63 - 1)
    limit = _query_int(request, "limit", CHANGES_DEFAULT_LIMIT, 1, CHANGES_MAX_LIMIT)
    # One row more than the page tells whether another page follows, without a count.
    rows = request.app[STORE].changes(device.account_id, device.device_id, cursor, limit + 1)
    page = rows[:limit]
    if not page:  # a cursor past the feed's end (a forged one the device stored) rewinds
        cursor = min(cursor, request.app[STORE].latest_seq(device.account_id, device.device_id))
    return web.json_response(
        {
            "changes": [c.to_doc() for c in page],
            "cursor": page[-1].seq if page else cursor,
            "has_more": len(rows) > limit,
            "root_version": request.app[TRUST].version,
            "now": request.app[CLOCK](),  # lets a device read order times on its own clock
        }
    )


async def push(request: web.Request) -> web.WebSocketResponse:
    device = _device(request)
    store = request.app[STORE]
    # The newest version served that the device speaks: a newer device gets what this
    # service has, as an older service (which reads no query) serves version 1 to anyone.
    version = min(_query_int(request, "version", 1, 1, 2**31), max(VERSIONS))
    injector = request.app.get(FAULTS)
    silence = fired(request).first("silence")
    return await request.app[HUB].serve(
        request,
        device.account_id,
        device.device_id,
        lambda: store.latest_seq(device.account_id, device.device_id),
        silence=injector.wait_released if silence and injector else None,
        hello_first=bool(silence and silence.after_hello),
        version=version,
        hello_extra={"dictionaries": _dictionaries_doc(store)},
        prefix_room=_query_int(request, "first_chapter_bytes", 0, 0, 2**31),
    )


# -- books ----------------------------------------------------------------------------------------


def _library_book(request: web.Request, device: Device) -> str:
    book_id = request.match_info["book_id"]
    if not request.app[STORE].in_library(device.account_id, device.device_id, book_id):
        raise ApiError(403, "not_in_library", f"{book_id[:64]!r} is not in this device's library")
    return book_id


def _template(app: web.Application, book_id: str, version: int) -> Manifest:
    cache = app[TEMPLATES]
    manifest = cache.get((book_id, version))
    if manifest is None:
        raw = app[STORE].manifest_template(book_id, version)
        if raw is None:
            raise ApiError(404, "unknown_version", f"{book_id} has no version {version}")
        manifest = parse_manifest(raw, template=True)
        if len(cache) >= TEMPLATE_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[(book_id, version)] = manifest
    return manifest


def _signed_manifest(
    app: web.Application,
    device: Device,
    book_id: str,
    faults: Fired | FaultInjector | None = None,
    route: str = "manifest",
) -> bytes:
    """The envelope of the book's current manifest, signed now with its content key wrapped
    for `device`: what the manifest route serves and what a version 2 push carries."""
    book = app[STORE].book(book_id)
    if book is None:
        raise ApiError(404, "unknown_book", f"{book_id} is in the library but not in the catalog")
    fault_state = faults.take(route) if isinstance(faults, FaultInjector) else faults or Fired()
    replay = fault_state.first("replay_manifest")
    swap = fault_state.first("swap_manifest")
    if swap is not None:  # mix-and-match: another book's manifest, validly signed
        book = app[STORE].book(swap.book_id)
        if book is None:
            raise ApiError(404, "unknown_book", f"the catalog has no book {swap.book_id!r}")
    template = _template(app, book.book_id, replay.version if replay else book.version)
    forged = fault_state.first("forge_version")
    if forged:  # a broken or stolen signing key fast-forwards the version (FAULTS.md #18)
        template = dataclasses.replace(template, version=forged.version)
    key = app[TRUST].signing_key
    if fault_state.first("bad_signature"):
        key = Ed25519PrivateKey.generate()
    ephemeral, wrapped = wrap_content_key(
        x25519_public_key(device.public_key), app[STORE].content_key(book.book_id), book.book_id
    )
    return sign_manifest(key, template, app[CLOCK](), WrappedKey(WRAP_ALG, ephemeral, wrapped))


async def manifest(request: web.Request) -> web.Response:
    device = _device(request)
    book_id = _library_book(request, device)
    body = _signed_manifest(request.app, device, book_id, fired(request))
    return web.Response(
        body=body,
        content_type="application/vnd.shelfsync.manifest",
        headers={hdrs.CACHE_CONTROL: "no-store"},
    )


async def cover(request: web.Request) -> web.Response:
    """The book's cover for a library view: catalog data, like `/v1/catalog`."""
    _account_or_device(request)
    book_id = request.match_info["book_id"]
    found = request.app[STORE].cover(book_id)
    if found is None:
        raise ApiError(404, "no_cover", f"{book_id} has no cover in the catalog")
    return web.Response(
        body=found.data,
        content_type=found.media_type,
        headers={hdrs.ETAG: f'"{found.sha256}"', hdrs.CACHE_CONTROL: "private, max-age=86400"},
    )


async def dictionary(request: web.Request) -> web.Response:
    """A compression dictionary by content address: immutable, cacheable anywhere."""
    _device(request)
    data = request.app[STORE].dictionary(request.match_info["sha256"])
    if data is None:
        raise ApiError(404, "unknown_dictionary", "no dictionary has that hash")
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={hdrs.CACHE_CONTROL: "public, max-age=31536000, immutable"},
    )


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The [start, end) a `Range` header asks of `size` bytes; None for the whole body.

    A malformed or multi-range header is ignored (RFC 9110 allows it); an unsatisfiable one
    raises the 416 answer."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0:
            raise _unsatisfiable(size)
        return max(size - n, 0), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(int(last) + 1, size) if last else size


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(
        416,
        "range_not_satisfiable",
        f"the package is {size} bytes",
        {hdrs.CONTENT_RANGE: f"bytes */{size}"},
    )


def _slices(store: Store, info: PackageInfo, start: int, end: int) -> Iterator[bytes]:
    """The bytes [start, end) of a package, one stored chunk at a time."""
    offset = start
    while offset < end:
        stop = min(end, (offset // PACKAGE_CHUNK + 1) * PACKAGE_CHUNK)
        yield store.read_package(info.rowid, offset, stop - offset)
        offset = stop


async def package(request: web.Request) -> web.StreamResponse:
    device = _device(request)
    book_id = _library_book(request, device)
    raw_version = request.match_info["version"]
    store = request.app[STORE]
    version = _decimal(raw_version)
    info = store.package_info(book_id, version) if version is not None else None
    if info is None:
        raise ApiError(404, "unknown_version", f"{book_id} has no version {raw_version[:20]!r}")
    wanted = None if fired(request).first("ignore_range") else request.headers.get(hdrs.RANGE)
    span = parse_range(wanted, info.size)
    start, end = span or (0, info.size)

    response = web.StreamResponse(status=206 if span else 200)
    response.content_type = "application/octet-stream"
    response.headers[hdrs.ACCEPT_RANGES] = "bytes"
    response.headers[hdrs.ETAG] = f'"{info.sha256}"'
    response.headers[hdrs.CACHE_CONTROL] = "public, max-age=31536000, immutable"
    if span:
        response.headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end - 1}/{info.size}"
    response.content_length = end - start
    await response.prepare(request)
    if request.method != hdrs.METH_HEAD:
        await write_body(request, response, _slices(store, info, start, end))
    return response


# -- the application ------------------------------------------------------------------------------


async def _close_push(app: web.Application) -> None:
    await app[HUB].close_all()


async def _parse_templates(app: web.Application) -> None:
    """Parse the manifest templates of the catalog's books (as many as the cache keeps) before
    serving, as a service keeps its books ready: a purchase then signs a manifest but parses
    none (mahabharata's took 33 ms of its first buyer's push)."""
    for book in app[STORE].catalog()[:TEMPLATE_CACHE_SIZE]:
        with contextlib.suppress(ApiError):  # no template: a purchase says so
            _template(app, book.book_id, book.version)


def make_app(
    store: Store,
    service_key: ServiceKey,
    *,
    faults_enabled: bool = False,
    clock: Clock = time.time,
    trust: TrustChain | None = None,
) -> web.Application:
    """The stub's aiohttp application over an open store (which the caller closes)."""
    middlewares = [fault_middleware, error_middleware] if faults_enabled else [error_middleware]
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
    app[STORE] = store
    app[SERVICE_KEY] = service_key
    app[TRUST] = trust or TrustChain(service_key)
    app[HUB] = PushHub()
    app[CLOCK] = clock
    app[TEMPLATES] = {}
    r = app.router
    r.add_post("/v1/accounts", create_account, name="accounts")
    r.add_post("/v1/devices", create_device, name="devices")
    r.add_get("/v1/devices", account_devices, name="account_devices")
    r.add_put("/v1/device", rename_device, name="device")
    r.add_get("/v1/catalog", catalog, name="catalog")
    r.add_post("/v1/library/buy", buy, name="library_buy")
    r.add_post("/v1/library/send", send, name="library_send")
    r.add_post("/v1/library/sample", sample, name="library_sample")
    r.add_post("/v1/library/wishlist", wishlist, name="library_wishlist")
    r.add_post("/v1/library/return", return_book, name="library_return")
    r.add_get("/v1/service-key", get_service_key, name="service_key")
    r.add_get("/v1/roots/{version}", trust_root, name="trust_root")
    r.add_get("/v1/library/changes", changes, name="changes")
    r.add_get("/v1/push", push, name="push", allow_head=False)
    r.add_get("/v1/books/{book_id}/manifest", manifest, name="manifest")
    r.add_get("/v1/books/{book_id}/cover", cover, name="cover")
    r.add_get("/v1/dictionaries/{sha256}", dictionary, name="dictionary")
    r.add_get("/v1/books/{book_id}/versions/{version}/package", package, name="package")
    add_annotation_routes(app, store, app[HUB], _device, _account, clock)
    add_receipt_routes(app, store, app[HUB], _device, clock)
    if faults_enabled:
        install_faults(app)
        r.add_post("/v1/admin/rotate-key", rotate_key, name="admin_rotate_key")
    app.on_startup.append(_parse_templates)
    app.on_shutdown.append(_close_push)
    return app


@dataclass(frozen=True, slots=True)
class RunningStub:
    url: str  # http://host:port, no trailing slash
    host: str
    port: int
    data_dir: Path
    store: Store  # open while the stub runs: tests seed large libraries through it
    service_key: ServiceKey
    import_report: ImportReport | None  # None when no library folder was given
    app: web.Application

    @property
    def public_key_text(self) -> str:
        """What a device is provisioned with (also DATA/service.pub)."""
        return self.service_key.public_key_text

    @property
    def key_path(self) -> Path:
        return self.service_key.key_path

    @property
    def pub_path(self) -> Path:
        return self.service_key.pub_path

    @property
    def faults(self) -> FaultInjector | None:
        return self.app.get(FAULTS)


@asynccontextmanager
async def running_stub(
    data_dir: Path,
    *,
    library_dir: Path | None = None,
    opds_urls: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    faults: bool = False,
    clock: Clock = time.time,
    keepalive_timeout: float = 75.0,
    packaging: PackagingSettings | None = None,
    rotate_key: bool = False,
) -> AsyncIterator[RunningStub]:
    """Run the stub on `host:port` (0 picks a free port) until the block exits.

    `data_dir` holds the database and the service key (created if missing). `library_dir`, if
    given, is imported first (unchanged files are skipped), then each OPDS catalog of `opds_urls`;
    without either the stored catalog is served as is. `faults` enables fault injection and the
    admin routes. `rotate_key` makes a new trust root with a new signing key first."""
    store = await asyncio.to_thread(Store.open, data_dir)
    try:
        key = await asyncio.to_thread(load_or_create_key, data_dir)
        trust = await asyncio.to_thread(TrustChain, key)
        if rotate_key:
            await asyncio.to_thread(trust.rotate, clock())
        report = None
        if library_dir is not None:
            report = await asyncio.to_thread(import_library, store, library_dir, clock, packaging)
        for url in opds_urls:
            report = report or ImportReport()
            report.merge(await import_opds(store, url, clock, packaging))
        app = make_app(store, key, faults_enabled=faults, clock=clock, trust=trust)
        runner = web.AppRunner(
            app,
            access_log=logging.getLogger("server_stub.access"),
            access_log_class=AccessLogger,
            keepalive_timeout=keepalive_timeout,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            bound_port = int(runner.addresses[0][1])
            url_host = f"[{host}]" if ":" in host else host
            yield RunningStub(
                url=f"http://{url_host}:{bound_port}",
                host=host,
                port=bound_port,
                data_dir=data_dir,
                store=store,
                service_key=key,
                import_report=report,
                app=app,
            )
        finally:
            await runner.cleanup()
    finally:
        store.close()
