"""The local API that the reader software calls: the library, books, resources, status, and
the reading web app (daemon/api/web/; README, "The reading web app").

It reads the store only and never waits on the network. It listens on a Unix socket with 0600
permissions (only the reader software's user may connect) and, for development and for the
reading web app, optionally on a loopback TCP port, where every request needs a Host header
naming loopback (so a web page cannot reach it by DNS rebinding) and either the token in
`<state>/api-token` or the session cookie a one-time login link set (`shelfsync open`). No route
answers a cross-site request: a browser's `Origin` must be this origin and `Sec-Fetch-Site`
same-origin (or none: the reader typed or pasted the address).

A resource is answered whole or in the byte range asked for, with an ETag that names the book
version's bytes; if any of its frames is not on the device yet, the answer is 503
`not_yet_on_device` with Retry-After, never a wait and never partial bytes. Its answer carries a
Content-Security-Policy that runs no script and loads nothing from outside the device, so a
book's own scripts cannot reach the API (the web app also frames it sandboxed).

Every error, whoever refused, has the one shape of daemon/api/answers.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from http import HTTPStatus
from importlib import resources as package_files
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from daemon.api.answers import MAX_BODY_BYTES, Refused, error, json_answer, too_large
from daemon.api.library import LibraryApi, library_page
from daemon.api.notes import NotesApi
from daemon.api.notices import add_routes as add_notice_routes
from daemon.api.status import build_status
from daemon.clock import Clock, SystemClock
from daemon.content.reader import FrameOpener, resource_pieces
from daemon.errors import FrameHashError, NotOnDeviceError, VerificationError
from daemon.logs import log_event
from daemon.memory import give_back
from daemon.models import ResourceRow
from daemon.protocol.codec import Buffer
from daemon.protocol.ids import BOOK_ID
from daemon.protocol.manifest import check_resource_path
from daemon.store import Store
from daemon.store.disk import DiskWatch

_LOG = logging.getLogger("shelfsync.api")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
_WRITE_PART = 128 * 1024  # bytes of a resource handed to the transport at a time
# Concurrent reads; more requests wait their turn (back-pressure). Reads run on the event loop's
# one thread, so more connections add memory, not speed: two let one response stream to a slow
# client while the next page is read.
READERS = 2
# Bytes of a resource decoded per trip to the decoding thread: a hop costs tens of microseconds.
_DECODE_BATCH = 256 * 1024
# Connections each listener holds at once, far below a device's 256 open files: past it a new
# connection is closed at once, so a flood of idle sockets on one listener starves neither the
# daemon nor the other listener (issue 21).
MAX_CONNECTIONS = 64
# Idle seconds before a connection that sends no (next) request is closed: longer than
# aiohttp's client keeps an idle connection (15 s), so a client never reuses one as it closes.
IDLE_TIMEOUT_S = 30.0
LINGER_S = 1.0
# Seconds a request's line and headers may take to arrive once they start: a client sending
# them a byte at a time holds a connection (one of MAX_CONNECTIONS) no longer (issue 21 #4).
HEADER_TIMEOUT_S = 10.0
SESSION_COOKIE = "shelfsync_session"
LOGIN_CODE_TTL_S = 120.0
_MAX_LOGIN_CODES = 8  # unused codes kept; older ones are forgotten
_MAX_SESSIONS = 16  # browser sessions kept; the oldest is logged out first
_WEB_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# The web app: its own files only, the book in a frame of this origin, nothing from outside.
_APP_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'"
)
# A book's resource: no script at all, nothing from outside the device, only framed by the
# app. `sandbox allow-same-origin` keeps the app able to read the reader's selection.
_BOOK_POLICY = (
    "default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline';"
    " font-src 'self' data:; media-src 'self'; sandbox allow-same-origin;"
    " frame-ancestors 'self'"
)
# Bytes answered between two trims of the heap: what an answer decoded or built (a frame's
# pieces, a large JSON document) leaves holes that later answers only partly fill, and a reader
# paging through the corpus grew the daemon by megabytes that way. One trim is a fraction of a
# millisecond, so once a MiB costs nothing a reader would notice.
TRIM_EVERY_BYTES = 1024 * 1024
_RANGE = re.compile(r"\Abytes=(\d*)-(\d*)\Z")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ReaderPool:
    """Read-only connections, one per request in flight: each read is its own snapshot.

    Opened as requests need them, up to `size`, then kept: a warm connection holds about
    0.75 MiB (its page cache and schema), so an idle daemon keeps one, not `size`.
    """

    def __init__(
        self,
        db_path: Path,
        size: int,
        page_cache_kib: int | None = None,
        watch: DiskWatch | None = None,
    ) -> None:
        self._db_path = db_path
        self._page_cache_kib = page_cache_kib
        self._watch = watch  # told of a damaged page a read meets
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
        store = Store.open(self._db_path, readonly=True, watch=self._watch)
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
        watch: DiskWatch | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()  # the login links' expiry
        self._readers = ReaderPool(db_path, READERS, page_cache_kib, watch)
        self._notes = notes  # the reader's annotations: routes of their own (api/notes.py)
        self._library = library  # pin, opened, download, trip (api/library.py)
        self._opener = opener
        self._runtime = runtime
        self._on_corrupt = on_corrupt
        self.socket_path = socket_path
        self.tcp_port = tcp_port
        self._token = token
        self._login_codes: dict[str, float] = {}  # one-time code -> monotonic expiry
        self._sessions: dict[str, None] = {}  # browser sessions, oldest first
        self._runner: web.AppRunner | None = None
        self._decoding = ThreadPoolExecutor(1, thread_name_prefix="shelfsync-decode")
        self.answering = 0  # requests being answered now (the idle integrity check waits)
        self._untrimmed_bytes = 0  # answered since the heap was last trimmed

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard])
        app.on_response_prepare.append(_common_headers)
        app.router.add_get("/v1/status", self.status)
        app.router.add_get("/v1/library", self.library)
        app.router.add_get("/v1/books/{book_id}", self.book)
        app.router.add_get("/v1/books/{book_id}/toc", self.toc)
        app.router.add_get("/v1/books/{book_id}/resources/{path:.+}", self.resource)
        app.router.add_get("/v1/openapi.json", self.openapi)
        app.router.add_post("/v1/login-links", self.login_link)
        app.router.add_get("/login", self.login)
        app.router.add_get("/", self.home)
        app.router.add_get("/app/{name:[a-z.]*}", self.web_file)
        add_notice_routes(app, self._readers.reader)
        if self._notes is not None:
            self._notes.add_routes(app)
        if self._library is not None:
            self._library.add_routes(app)
        return app

    async def start(self) -> None:
        self._readers.open()
        self._runner = _Runner(
            self.make_app(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=IDLE_TIMEOUT_S,
            # A refused body (413) is drained this long at most; aiohttp's 10 s outlived the
            # daemon's stop, a task still reading a reader's socket after the API was closed.
            lingering_time=LINGER_S,
        )
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
        self._decoding.shutdown(wait=True)  # no read in flight when the readers close
        self._readers.close()
        self.socket_path.unlink(missing_ok=True)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.answering += 1
        try:
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
            response = await handler(request)
            self._answered(response.content_length or 0)
            return response
        except Refused as e:
            return e.response
        except web.HTTPException as e:
            if e.status < 400:
                raise  # a redirect
            return _http_error(e)
        finally:
            self.answering -= 1

    def _answered(self, size: int) -> None:
        self._untrimmed_bytes += size
        if self._untrimmed_bytes >= TRIM_EVERY_BYTES:
            self._untrimmed_bytes = 0
            give_back()

    def _refusal(self, request: web.Request) -> web.Response | None:
        """Why this request is refused before its route runs, or None."""
        fetch_site = request.headers.get("Sec-Fetch-Site", "same-origin")
        origin = request.headers.get("Origin")
        if fetch_site not in ("same-origin", "none") or (
            origin is not None and origin != f"http://{request.host}"
        ):
            return error(403, "cross_site", "the local API answers its own pages only")
        if _is_tcp(request):
            host = (request.host or "").rsplit(":", 1)[0]
            if host not in _LOOPBACK_HOSTS:
                return error(403, "forbidden_host", "the local API answers loopback hosts only")
            if request.path != "/login" and not self._authorised(request):
                return error(
                    401,
                    "unauthorized",
                    "missing or wrong API token; in a browser, open the link `shelfsync open`"
                    " prints",
                )
        declared = request.content_length
        if declared is not None and declared > MAX_BODY_BYTES:
            return too_large().response  # at once, without waiting for a body never sent
        book_id = request.match_info.get("book_id")
        if book_id is not None and not BOOK_ID.match(book_id):
            return error(400, "bad_book_id", "book ids are letters, digits, '_' and '-'")
        return None

    def _authorised(self, request: web.Request) -> bool:
        session = request.cookies.get(SESSION_COOKIE)
        if session is not None and session in self._sessions:
            return True
        given = request.headers.get("Authorization", "")
        if not self._token or not given.startswith("Bearer ") or not given.isascii():
            return False
        return hmac.compare_digest(given.removeprefix("Bearer ").encode(), self._token.encode())

    # -- the reader's browser: a one-time link, then a session cookie --------------------------

    async def login_link(self, request: web.Request) -> web.Response:
        """A one-time login link for the web app (`shelfsync open`): minted on the Unix socket
        only, so only the daemon's user can have one."""
        if _is_tcp(request):
            return error(403, "socket_only", "login links are made on the API socket only")
        if self.tcp_port is None:
            return error(
                409, "no_tcp_listener", "the daemon serves no web app: run it with --tcp-port"
            )
        now = self._clock.monotonic()
        self._login_codes = {c: t for c, t in self._login_codes.items() if t > now}
        while len(self._login_codes) >= _MAX_LOGIN_CODES:
            del self._login_codes[next(iter(self._login_codes))]
        code = secrets.token_urlsafe(24)
        self._login_codes[code] = now + LOGIN_CODE_TTL_S
        url = f"http://127.0.0.1:{self.tcp_port}/login?code={code}"
        return json_answer({"url": url, "expires_in_s": LOGIN_CODE_TTL_S}, 201)

    async def login(self, request: web.Request) -> web.Response:
        code = request.query.get("code", "")
        expiry = self._login_codes.pop(code, None)
        if expiry is None or expiry < self._clock.monotonic():
            return error(401, "bad_login_link", "this login link is used or expired")
        session = secrets.token_urlsafe(32)
        self._sessions[session] = None
        while len(self._sessions) > _MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        log_event(_LOG, logging.INFO, "web_login")
        response = web.Response(status=303, headers={"Location": "/app/"})
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="Strict", path="/")
        return response

    async def home(self, request: web.Request) -> web.Response:
        return web.Response(status=303, headers={"Location": "/app/"})

    async def web_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"] or "index.html"
        media_type = _WEB_FILES.get(name)
        if media_type is None:
            return error(404, "not_found", "no such page")
        body = package_files.files("daemon.api").joinpath("web", name).read_bytes()
        return web.Response(
            body=body,
            headers={
                "Content-Type": media_type,
                "Content-Security-Policy": _APP_POLICY,
                "Cache-Control": "no-cache",
            },
        )

    async def openapi(self, request: web.Request) -> web.Response:
        body = package_files.files("daemon.api").joinpath("openapi.json").read_bytes()
        return web.Response(body=body, content_type="application/json")

    # -- the library and its books ----------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        async with self._readers.reader() as store:
            return json_answer(build_status(store, self._runtime()))

    async def library(self, request: web.Request) -> web.Response:
        async with self._readers.reader() as store:
            return json_answer(library_page(store, request.query))

    async def book(self, request: web.Request) -> web.Response:
        async with self._readers.reader() as store:
            details = store.views.book_details(request.match_info["book_id"])
        if details is None:
            return error(404, "no_such_book", "this book is not in the library")
        return json_answer(details)

    async def toc(self, request: web.Request) -> web.Response:
        async with self._readers.reader() as store:
            details = store.views.book_details(request.match_info["book_id"])
        if details is None:
            return error(404, "no_such_book", "this book is not in the library")
        return json_answer({"book_id": details["book_id"], "toc": details["toc"]})

    async def resource(self, request: web.Request) -> web.StreamResponse:
        book_id, path = request.match_info["book_id"], request.match_info["path"]
        try:
            check_resource_path(path)
        except ValueError as e:
            return error(400, "bad_path", f"not a path inside a book: {e}")
        async with self._readers.reader() as store, _snapshot(store):
            resource = store.frames.resource(book_id, path)
            if resource is None:
                return error(404, "no_such_resource", "no such resource in this book")
            # A book version's bytes never change: its id, version and path name them.
            name = f"{book_id}\0{resource.version}\0{path}".encode()
            etag = f'"{hashlib.sha256(name).hexdigest()[:32]}"'
            return await self._send_resource(request, store, resource, etag)

    async def _send_resource(
        self, request: web.Request, store: Store, resource: ResourceRow, etag: str
    ) -> web.StreamResponse:
        headers = {
            "ETag": etag,
            "Cache-Control": "private, no-cache",  # revalidated: a new version changes it
            "Accept-Ranges": "bytes",
            "Content-Security-Policy": _BOOK_POLICY,
        }
        if etag in _tags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        wanted = _byte_range(request.headers.get("Range"), resource.size)
        if wanted is None:
            return error(
                416,
                "bad_range",
                "the range is not within the resource",
                headers={"Content-Range": f"bytes */{resource.size}"},
            )
        start, end = wanted
        pieces = _within(resource_pieces(store, resource, self._opener), start, end)
        try:
            batch = await self._decoded(pieces)
        except NotOnDeviceError as e:
            return error(
                503,
                "not_yet_on_device",
                str(e),
                headers={"Retry-After": "2"},
                missing_frames=e.missing_frames,
            )
        except VerificationError as e:
            self._unreadable(resource.book_id, e)
            return error(
                500, "corrupt_on_device", "stored bytes failed verification; fetching again"
            )
        status = 200
        if (start, end) != (0, resource.size):
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{resource.size}"
        response = web.StreamResponse(
            status=status,
            headers={
                **headers,
                "Content-Type": resource.media_type,
                "Content-Length": str(end - start),
            },
        )
        await response.prepare(request)
        try:
            while batch:
                for piece in batch:
                    await _write_bounded(response, piece)
                batch = await self._decoded(pieces)
        except VerificationError as e:
            # Headers are gone: cut the connection so the reader sees a short body, never
            # wrong bytes.
            self._unreadable(resource.book_id, e)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    async def _decoded(self, pieces: Iterator[Buffer]) -> list[Buffer]:
        """The next pieces of a resource, about _DECODE_BATCH bytes (none at its end), read,
        verified and decoded on the decoding thread: a 2 MiB frame decoded on the event loop
        held every other answer for as long (issue 22 #5). One thread, so the frame cache is
        never touched by two at once; the store's writer stays on the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decoding, _take, pieces, _DECODE_BATCH)

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


def _is_tcp(request: web.Request) -> bool:
    # By the socket's family: a Unix client that binds its own socket has a peer name too.
    return _family(request.transport) in (socket.AF_INET, socket.AF_INET6)


async def _common_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def _http_error(e: web.HTTPException) -> web.Response:
    """The router's and aiohttp's refusals (404, 405, 413, ...) in the one error shape."""
    code = e.reason.lower().replace(" ", "_").replace("-", "_")
    headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
    return error(e.status, code, f"{e.reason}", headers=headers)


def _tags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of the one range asked for; the whole resource when none (or one this does
    not parse, which RFC 9110 says to ignore); None when it lies outside the resource."""
    whole = (0, size)
    match = _RANGE.match(header or "")
    if match is None or match.groups() == ("", ""):
        return whole
    first, last = match.groups()
    if not first:  # the last N bytes
        return (max(0, size - int(last)), size) if int(last) > 0 else None
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or start >= end:
        return None
    return start, end


def _take(pieces: Iterator[Buffer], most: int) -> list[Buffer]:
    """The next pieces, until they come to `most` bytes or the end."""
    taken: list[Buffer] = []
    size = 0
    for piece in pieces:
        taken.append(piece)
        size += len(piece)
        if size >= most:
            break
    return taken


def _within(pieces: Iterator[Buffer], start: int, end: int) -> Iterator[Buffer]:
    """The parts of consecutive pieces that lie in [start, end), as views (no copies)."""
    at = 0
    for piece in pieces:
        lo, hi = max(start - at, 0), min(end - at, len(piece))
        at += len(piece)
        if lo < hi:
            yield memoryview(piece)[lo:hi]
        if at >= end:
            return


class _Protocol(RequestHandler):
    """aiohttp's connection handler, answering what its parser refused (a malformed request
    line or header) in the one error shape (its own page reflects the raw header), and closing
    at once a connection over its listener's cap."""

    _refused = False
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        family = _family(transport)
        if isinstance(server, _Server):
            held = sum(_family(h.transport) == family for h in server.connections)
            if held >= MAX_CONNECTIONS:
                self._refused = True
                transport.close()  # no answer: the cheapest refusal there is
                server.refusing(family, True)
                return
            server.refusing(family, False)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._end_header_deadline()
        if not self._refused:  # a refused connection never started
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        between_requests = self._waiting_for_headers()  # these bytes begin a request's headers
        super().data_received(data)
        if not self._waiting_for_headers():  # the line and headers are in (or no request is)
            self._end_header_deadline()
        elif between_requests and self._header_deadline is None:
            self._header_deadline = asyncio.get_running_loop().call_later(
                HEADER_TIMEOUT_S, self._headers_too_slow
            )

    def _waiting_for_headers(self) -> bool:
        waiter = self._waiter  # aiohttp's: pending while it waits for a whole request head
        return waiter is not None and not waiter.done()

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self._waiting_for_headers():
            self.force_close()  # unanswered: a client this slow is not reading answers either

    def _end_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log_event(_LOG, logging.ERROR, "api_failed", error=type(exc).__name__)
        code = "bad_request" if status < 500 else "internal_error"
        response = error(status, code, HTTPStatus(status).phrase)
        response.force_close()
        return response


class _Server(web.Server):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refusing: set[int] = set()  # families of the listeners refusing connections

    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)

    def refusing(self, family: int | None, refused: bool) -> None:
        """Log once when a listener starts refusing connections, and once when it stops."""
        if family is None or refused == (family in self._refusing):
            return
        self._refusing.symmetric_difference_update({family})
        transport = "unix" if family == socket.AF_UNIX else "tcp"
        event = "api_connections_refused" if refused else "api_connections_accepted_again"
        log_event(_LOG, logging.WARNING, event, transport=transport, cap=MAX_CONNECTIONS)


def _family(transport: asyncio.BaseTransport | None) -> int | None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    return None if sock is None else int(sock.family)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


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
