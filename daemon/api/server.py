"""The local API that the reader software calls: the library, books, resources, status.

It reads the store only and never waits on the network. It listens on a Unix socket with 0600
permissions (only the reader software's user may connect) and, for development, optionally on a
loopback TCP port, where every request needs the token in `<state>/api-token` and a Host header
naming loopback (so a web page cannot reach it by DNS rebinding).

A resource is answered whole or not at all: if any of its frames is not on the device yet, the
answer is 503 `not_yet_on_device` with Retry-After, never a wait and never partial bytes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from daemon.api.library import LibraryApi
from daemon.api.notes import NotesApi
from daemon.api.notices import add_routes as add_notice_routes
from daemon.api.status import build_status
from daemon.content.reader import FrameOpener, resource_pieces
from daemon.errors import FrameHashError, NotOnDeviceError, VerificationError
from daemon.logs import log_event
from daemon.protocol.codec import Buffer
from daemon.protocol.manifest import check_resource_path
from daemon.store import Store

_LOG = logging.getLogger("shelfsync.api")
_BOOK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
_WRITE_PART = 128 * 1024  # bytes of a resource handed to the transport at a time
MAX_BODY_BYTES = 64 * 1024
# Concurrent reads; more requests wait their turn (back-pressure). Reads run on the event loop's
# one thread, so more connections add memory, not speed: two let one response stream to a slow
# client while the next page is read.
READERS = 2

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, detail: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "detail": detail, **extra}, status=status)


class ReaderPool:
    """Read-only connections, one per request in flight: each read is its own snapshot.

    Opened as requests need them, up to `size`, then kept: a warm connection holds about
    0.75 MiB (its page cache and schema), so an idle daemon keeps one, not `size`.
    """

    def __init__(self, db_path: Path, size: int, page_cache_kib: int | None = None) -> None:
        self._db_path = db_path
        self._page_cache_kib = page_cache_kib
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Store] = []
        self._all: list[Store] = []

    def open(self) -> None:
        """Open the first connection now, so a database that cannot be read fails at start."""
        self._idle.append(self._connect())

    def close(self) -> None:
        for store in self._all:
            store.close()

    def _connect(self) -> Store:
        store = Store.open(self._db_path, readonly=True)
        if self._page_cache_kib is not None:
            store.set_page_cache_kib(self._page_cache_kib)
        self._all.append(store)
        return store

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Store]:
        async with self._slots:
            store = self._idle.pop() if self._idle else self._connect()
            try:
                yield store
            finally:
                self._idle.append(store)


class LocalApi:
    def __init__(
        self,
        db_path: Path,
        opener: FrameOpener,
        runtime: Callable[[], dict[str, Any]],
        on_corrupt: Callable[[FrameHashError], None],
        socket_path: Path,
        tcp_port: int | None = None,
        token: str | None = None,
        notes: NotesApi | None = None,
        library: LibraryApi | None = None,
        page_cache_kib: int | None = None,
    ) -> None:
        self._readers = ReaderPool(db_path, READERS, page_cache_kib)
        self._notes = notes  # the reader's annotations: routes of their own (api_notes.py)
        self._library = library  # pin, opened, download, trip (api_library.py)
        self._opener = opener
        self._runtime = runtime
        self._on_corrupt = on_corrupt
        self.socket_path = socket_path
        self.tcp_port = tcp_port
        self._token = token
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard])
        app.router.add_get("/v1/status", self.status)
        app.router.add_get("/v1/library", self.library)
        app.router.add_get("/v1/books/{book_id}", self.book)
        app.router.add_get("/v1/books/{book_id}/toc", self.toc)
        app.router.add_get("/v1/books/{book_id}/resources/{path:.+}", self.resource)
        add_notice_routes(app, self._readers.reader)
        if self._notes is not None:
            self._notes.add_routes(app)
        if self._library is not None:
            self._library.add_routes(app)
        return app

    async def start(self) -> None:
        self._readers.open()
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        # TCP first: the Unix socket appearing is the sign that the API is ready, whole.
        if self.tcp_port is not None:
            site = web.TCPSite(self._runner, "127.0.0.1", self.tcp_port)
            await site.start()
            server = site._server
            if self.tcp_port == 0 and isinstance(server, asyncio.Server):
                self.tcp_port = server.sockets[0].getsockname()[1]
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)  # left by a killed daemon
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others connect
        try:
            await web.UnixSite(self._runner, str(self.socket_path)).start()
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        log_event(
            _LOG, logging.INFO, "api_listening", socket=self.socket_path, tcp_port=self.tcp_port
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._readers.close()
        self.socket_path.unlink(missing_ok=True)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.transport is not None and request.transport.get_extra_info("peername"):
            # TCP (the Unix socket has no peer name): loopback Host and the token, or nothing.
            host = (request.host or "").rsplit(":", 1)[0]
            if host not in _LOOPBACK_HOSTS:
                return _error(403, "forbidden_host", "the local API answers loopback hosts only")
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not self._token or not hmac.compare_digest(given, self._token):
                return _error(401, "unauthorized", "missing or wrong API token")
        book_id = request.match_info.get("book_id")
        if book_id is not None and not _BOOK_ID.match(book_id):
            return _error(400, "bad_book_id", "book ids are letters, digits, '_' and '-'")
        return await handler(request)

    async def status(self, request: web.Request) -> web.Response:
        async with self._readers.reader() as store:
            return web.json_response(build_status(store, self._runtime()))

    async def library(self, request: web.Request) -> web.Response:
        async with self._readers.reader() as store:
            return web.json_response({"books": store.library_view()})

    async def book(self, request: web.Request) -> web.Response:
        async with self._readers.reader() as store:
            details = store.book_details(request.match_info["book_id"])
        if details is None:
            return _error(404, "no_such_book", "this book is not on the device")
        return web.json_response(details)

    async def toc(self, request: web.Request) -> web.Response:
        async with self._readers.reader() as store:
            details = store.book_details(request.match_info["book_id"])
        if details is None:
            return _error(404, "no_such_book", "this book is not on the device")
        return web.json_response({"book_id": details["book_id"], "toc": details["toc"]})

    async def resource(self, request: web.Request) -> web.StreamResponse:
        book_id, path = request.match_info["book_id"], request.match_info["path"]
        try:
            check_resource_path(path)
        except ValueError as e:
            return _error(400, "bad_path", f"not a path inside a book: {e}")
        async with self._readers.reader() as store, _snapshot(store):
            resource = store.resource(book_id, path)
            if resource is None:
                return _error(404, "no_such_resource", "no such resource in this book")
            pieces = resource_pieces(store, resource, self._opener)
            try:
                first = next(pieces, b"")
            except NotOnDeviceError as e:
                return web.json_response(
                    {
                        "error": "not_yet_on_device",
                        "detail": str(e),
                        "missing_frames": e.missing_frames,
                    },
                    status=503,
                    headers={"Retry-After": "2"},
                )
            except VerificationError as e:
                self._unreadable(book_id, e)
                return _error(
                    500, "corrupt_on_device", "stored bytes failed verification; fetching again"
                )
            response = web.StreamResponse(
                headers={
                    "Content-Type": resource.media_type,
                    "Content-Length": str(resource.size),
                }
            )
            await response.prepare(request)
            await _write_bounded(response, first)
            try:
                for piece in pieces:
                    await _write_bounded(response, piece)
            except VerificationError as e:
                # Headers are gone: cut the connection so the reader sees a short body, never
                # wrong bytes.
                self._unreadable(book_id, e)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response

    def _unreadable(self, book_id: str, error: VerificationError) -> None:
        log_event(
            _LOG,
            logging.ERROR,
            "resource_unreadable",
            book=book_id,
            error=type(error).__name__,
            detail=str(error),
        )
        if isinstance(error, FrameHashError):
            self._on_corrupt(error)


async def _write_bounded(response: web.StreamResponse, piece: Buffer) -> None:
    """Write a piece in parts the transport can take: what the socket does not take at once is
    copied into the transport's buffer, so a 2 MiB piece written whole cost another 2 MiB.
    aiohttp drains between parts, which is the back-pressure of a slow reader."""
    if len(piece) <= _WRITE_PART:
        await response.write(piece)
        return
    view = memoryview(piece)  # parts share its bytes; the transport may hold one a while
    for start in range(0, len(view), _WRITE_PART):
        await response.write(view[start : start + _WRITE_PART])


@asynccontextmanager
async def _snapshot(store: Store) -> AsyncIterator[None]:
    with store.snapshot():
        yield
