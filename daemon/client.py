"""The client: the only code that speaks HTTP to the service.

One aiohttp session per daemon. No total timeout (aiohttp's default 300 s would kill a long
download on a slow link): a connect timeout, a per-read timeout, and a minimum-rate watchdog
instead, on every request: per frame on package bodies, over the whole exchange (headers
included) on the others. Bodies are never content-decoded (`Accept-Encoding: identity`,
`auto_decompress=False`): what is hashed is what travelled. Foreign exceptions become
TransportError subclasses here, so callers handle one family.
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import ClientRequest, ClientResponse, hdrs
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType

from daemon.errors import (
    AnnotationError,
    NoRouteError,
    ProtocolError,
    RangeError,
    ServiceHTTPError,
    StalledError,
    TransportError,
    UnreachableError,
)
from daemon.logs import log_event
from daemon.models import LibraryChange, Notice
from daemon.profile import DeviceProfile
from daemon.protocol import annotation_input, hlc, merge
from daemon.protocol.crypto import ENVELOPE_SLACK, MAX_ROOT_ENVELOPE_BYTES
from daemon.protocol.ids import BOOK_ID, MAX_DEVICE_NAME
from daemon.protocol.manifest import MAX_DICTIONARY_BYTES, MAX_MANIFEST_BYTES

_LOG = logging.getLogger("shelfsync.client")
# The changes feed is not signed: every field is bounded before it reaches the store, where an
# integer past 2^63 or a NaN once ended the daemon at every restart (issue 24 #3).
_MAX_SEQ = 2**53  # seqs, cursors and versions: far beyond any catalog, exact in a float too
_MAX_PACKAGE_BYTES = 2**40
_MAX_AT = 2.0**40  # seconds since 1970: year 36812
# What a library view shows before the manifest arrives: bounded, as a manifest's would be shown.
_MAX_TITLE_CHARS = 500
_MAX_AUTHORS = 16
_MAX_AUTHOR_CHARS = 200
_MAX_COVER_BYTES = 64 * 1024 * 1024


def _bounded(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} {str(value)[:40]} is outside [{low}, {high}]")
    return value


def _book_id(value: Any) -> str:
    if not isinstance(value, str) or not BOOK_ID.match(value):
        raise ValueError(f"book id {str(value)[:80]!r} is not one")
    return value


def _shown(c: Any) -> dict[str, Any]:
    """A change's title, authors and cover size, if the service gave them: strings and a
    count, or the page is refused; long texts are cut to what a library view shows."""
    title, authors, cover = c.get("title"), c.get("authors", []), c.get("cover_size")
    if title is not None and not isinstance(title, str):
        raise ValueError("a change's title is not a string")
    if not isinstance(authors, list) or not all(isinstance(a, str) for a in authors):
        raise ValueError("a change's authors are not a list of strings")
    return {
        "title": None if title is None else title[:_MAX_TITLE_CHARS],
        "authors": tuple(a[:_MAX_AUTHOR_CHARS] for a in authors[:_MAX_AUTHORS]),
        "cover_size": None if cover is None else _bounded(cover, 0, _MAX_COVER_BYTES, "cover"),
    }


def _changes_page(doc: Any, asked: int) -> ChangesPage:
    """A page of the changes feed, checked: bounded fields, seqs after the cursor asked for
    and increasing, and a cursor that is the last seq sent (on an empty page, the one asked for,
    or the feed's end if that is lower: the asked cursor is ahead of the feed): a page that
    claims more to come but does not advance is refused, not re-asked forever, and a forged
    cursor is never stored."""
    changes: list[LibraryChange] = []
    for c in doc["changes"]:
        at = float(c["at"])
        if not 0 <= at <= _MAX_AT:  # NaN fails this too
            raise ValueError(f"change time {at} is out of range")
        size = c.get("package_size")
        change = LibraryChange(
            seq=_bounded(c["seq"], 1, _MAX_SEQ, "seq"),
            book_id=str(c["book_id"]),
            action=str(c["action"]),
            reason=str(c["reason"])[:64],
            version=_bounded(c["version"], 1, _MAX_SEQ, "version"),
            at=at,
            package_size=None if not size else _bounded(size, 1, _MAX_PACKAGE_BYTES, "size"),
            **_shown(c),
        )
        if not BOOK_ID.match(change.book_id) or change.action not in ("add", "update", "remove"):
            raise ValueError(f"change {change.seq}: {change.book_id[:80]!r} {change.action!r}")
        if change.seq <= (changes[-1].seq if changes else asked):
            raise ValueError(f"change {change.seq} does not come after {asked} and the rest")
        changes.append(change)
    cursor = _bounded(doc["cursor"], 0, _MAX_SEQ, "cursor")
    expected = changes[-1].seq if changes else asked
    if cursor != expected and (changes or cursor > asked):
        raise ValueError(f"cursor {cursor} is not where the page ends ({expected})")
    has_more = doc["has_more"]
    if not isinstance(has_more, bool) or (has_more and not changes):
        raise ValueError("the page says more follow but brings none")
    root_version = _bounded(doc.get("root_version", 1), 1, _MAX_SEQ, "root_version")
    return ChangesPage(changes, cursor, has_more, root_version, _service_time(doc.get("now")))


def _service_time(value: Any) -> float | None:
    """The service's clock as an answer gives it, or None if it gives none (an older service)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= _MAX_AT:
        raise ValueError(f"service time {str(value)[:40]} is out of range")
    return float(value)


PUSH_VERSION = 2  # the push protocol this daemon asks for (PROTOCOL.md "Push channel")
MAX_PUSHED_PREFIX = 256 * 1024  # bytes of an order's first frames this daemon takes in a push
# The header, its JSON, the manifests (a frames message is far smaller).
_MAX_ENVELOPE_BYTES = MAX_MANIFEST_BYTES + ENVELOPE_SLACK
MAX_PUSH_MESSAGE_BYTES = 4 + 4 * 1024 * 1024 + _MAX_ENVELOPE_BYTES


@dataclass(frozen=True, slots=True)
class LibraryPush:
    """A version 2 `library_changed`: the device's changes after seq `after` (what a pull from
    `after` would bring, checked the same way) and the signed envelopes of the orders among
    them, by book: unverified bytes, for the delivery worker to verify as if fetched."""

    after: int
    page: ChangesPage
    envelopes: dict[str, bytes]
    # By book: (version, how many of the package's first bytes `PushedFrames` bring next).
    frames_follow: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PushedFrames:
    """A version 2 `package_frames`: whole frames of a package from byte `offset`, which a
    `library_changed` announced (`frames_follow`); unverified, checked against the manifest's
    hashes as fetched frames are."""

    book_id: str
    version: int
    offset: int
    data: bytes


def _push_header(data: bytes) -> tuple[dict[str, Any], int]:
    """The JSON header of a binary push message and where its payload starts."""
    size = int.from_bytes(data[:4], "big")
    if len(data) < 4 or size > MAX_JSON_BYTES or len(data) < 4 + size:
        raise ValueError(f"a header of {size} bytes in a message of {len(data)}")
    doc = json.loads(data[4 : 4 + size])
    if not isinstance(doc, dict):
        raise TypeError("the header is not an object")
    return doc, 4 + size


def parse_push_message(data: bytes) -> LibraryPush | PushedFrames:
    """A binary push message: a `library_changed` or a `package_frames` (ValueError etc. if
    malformed)."""
    doc, payload = _push_header(data)
    if doc["type"] == "package_frames":
        length = _bounded(doc["length"], 1, MAX_PUSHED_PREFIX, "frames length")
        if payload + length != len(data):
            raise ValueError(f"frames of {length} bytes in a payload of {len(data) - payload}")
        return PushedFrames(
            _book_id(doc["book_id"]),
            _bounded(doc["version"], 1, _MAX_SEQ, "version"),
            _bounded(doc["offset"], 0, MAX_PUSHED_PREFIX - length, "frames offset"),
            data[payload:],
        )
    return parse_library_push(data)


def parse_library_push(data: bytes) -> LibraryPush:
    """Parse `u32be(n) ‖ n bytes of JSON ‖ envelopes` (ValueError etc. if malformed)."""
    doc, offset = _push_header(data)
    if doc["type"] != "library_changed":
        raise ValueError(f"binary message of type {str(doc['type'])[:40]!r}")
    after = _bounded(doc["after"], 0, _MAX_SEQ, "after")
    page = _changes_page(
        {
            "changes": doc["changes"],
            "cursor": doc["cursor"],
            "has_more": False,
            **{k: doc[k] for k in ("root_version", "now") if k in doc},
        },
        after,
    )
    ordered = {c.book_id for c in page.changes if c.action == "add"}
    envelopes: dict[str, bytes] = {}
    for entry in doc["manifests"]:
        book_id = str(entry["book_id"])
        length = _bounded(entry["length"], 1, _MAX_ENVELOPE_BYTES, "manifest length")
        if book_id not in ordered or book_id in envelopes:
            raise ValueError(f"a manifest for {book_id[:80]!r}, which no change orders")
        envelopes[book_id] = data[offset : offset + length]
        offset += length
    if offset != len(data):
        raise ValueError(f"the manifests end at byte {offset} of {len(data)}")
    follow: dict[str, tuple[int, int]] = {}
    for entry in doc.get("frames_follow", []):
        book_id = str(entry["book_id"])
        version = _bounded(entry["version"], 1, _MAX_SEQ, "version")
        length = _bounded(entry["length"], 1, MAX_PUSHED_PREFIX, "frames length")
        if book_id not in envelopes or book_id in follow:
            raise ValueError(f"frames for {book_id[:80]!r}, whose manifest is not carried")
        follow[book_id] = (version, length)
    return LibraryPush(after, page, envelopes, follow)


_CONTENT_RANGE = re.compile(r"\Abytes (\d+)-(\d+)/(\d+|\*)\Z")
MAX_JSON_BYTES = 4 * 1024 * 1024  # a changes page of 1,000 entries is ~150 KB
# An annotation page is ~1 MiB (the service stops adding states past that), but one state with
# many long conflicting note versions may be alone bigger.
MAX_ANNOTATION_JSON_BYTES = 16 * 1024 * 1024
COMPRESS_ABOVE_BYTES = 1024  # push batches: smaller ones are not worth a gzip header


@dataclass(frozen=True, slots=True)
class ClientLimits:
    connect_timeout_s: float = 15.0
    stall_timeout_s: float = 30.0  # no byte for this long: stalled
    min_rate_bytes_per_s: int = 1024  # slower than this over a whole frame: stalled too
    # An idle pooled connection is kept this long: as long as the push channel's keep-alive
    # period, which the profile sets under the carrier NAT's idle timeout. aiohttp's default
    # (15 s) closed it between purchases, so each new purchase paid a new TCP handshake (on 3G,
    # 0.57 s to "told" became 0.92 s); longer, a reused connection could have lost its NAT
    # mapping and stall a request for stall_timeout_s.
    idle_connection_s: float = 15.0

    @classmethod
    def of(cls, profile: DeviceProfile) -> ClientLimits:
        """The limits a device of `profile` talks to the service with."""
        return cls(
            connect_timeout_s=profile.downloads.connect_timeout_s,
            stall_timeout_s=profile.downloads.stall_timeout_s,
            min_rate_bytes_per_s=profile.downloads.min_rate_bytes_per_s,
            idle_connection_s=profile.sync.keepalive_s,
        )


@dataclass(frozen=True, slots=True)
class ChangesPage:
    changes: list[LibraryChange]
    cursor: int
    has_more: bool
    root_version: int = 1  # the service's newest trust root (a hint: roots are signed)
    service_now: float | None = None  # the service's clock when it made the page


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    device_id: str
    device_token: str
    registered_at: float | None = None  # the service's clock at the registration


MAX_DEVICES = 100  # an account's devices a device keeps names of


# What connect() says with no network at all (the radio off, no signal, no default route).
_NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN})


def _transport_error(what: str, e: BaseException) -> TransportError:
    if isinstance(e, TransportError):
        return e
    if isinstance(e, aiohttp.ClientPayloadError):
        return TransportError(f"{what}: body cut short ({e})")
    if isinstance(e, TimeoutError):
        return StalledError(f"{what}: timed out")
    if isinstance(e, aiohttp.ClientConnectorDNSError) or (
        isinstance(e, aiohttp.ClientConnectorError) and e.os_error.errno in _NO_ROUTE
    ):
        return NoRouteError(f"{what}: {type(e).__name__}: {e}")
    if isinstance(e, aiohttp.ClientConnectorError) and not isinstance(e, aiohttp.ClientSSLError):
        # Refused: nothing answered for the service (an SSL error is something answering).
        return UnreachableError(f"{what}: {type(e).__name__}: {e}")
    return TransportError(f"{what}: {type(e).__name__}: {e}")


@asynccontextmanager
async def _watchdog(limits: ClientLimits, what: str) -> AsyncIterator[Callable[[int], None]]:
    """Give up an exchange that does not keep the minimum rate: nothing within stall_timeout_s,
    then fewer than min_rate_bytes_per_s on average. Yields the callback that counts bytes as
    they arrive. A drip of one byte every 5 s passes every per-read timeout, and held the
    changes feed (so every purchase) and manifests for minutes (issue 24 #4)."""
    rate = limits.min_rate_bytes_per_s
    if rate <= 0:  # the profile turned the watchdog off: per-read timeouts only
        yield lambda n: None
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    received = 0
    try:
        async with asyncio.timeout(start + limits.stall_timeout_s) as deadline:

            def arrived(n: int) -> None:
                nonlocal received
                received += n
                deadline.reschedule(start + limits.stall_timeout_s + received / rate)

            yield arrived
    except TimeoutError as e:
        raise StalledError(
            f"{what}: {received} bytes in {loop.time() - start:.0f} s, under {rate} B/s"
        ) from e


async def _read_capped(
    response: aiohttp.ClientResponse, cap: int, arrived: Callable[[int], None] = lambda n: None
) -> bytes:
    if response.content_length is not None and response.content_length > cap:
        raise ProtocolError(f"{response.url.path}: body of {response.content_length} bytes")
    body = bytearray()
    while chunk := await response.content.read(64 * 1024):
        arrived(len(chunk))
        body += chunk
        if len(body) > cap:
            raise ProtocolError(f"{response.url.path}: body over {cap} bytes")
    return bytes(body)


def _parsed(raw: bytes, path: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as e:
        raise ProtocolError(f"{path}: not JSON ({e})") from e


async def _json(response: aiohttp.ClientResponse) -> Any:
    return _parsed(await _read_capped(response, MAX_JSON_BYTES), response.url.path)


async def _raise_for_status(
    response: aiohttp.ClientResponse, arrived: Callable[[int], None] = lambda n: None
) -> None:
    if response.status < 400:
        return
    detail, from_service = "", False
    with suppress(TransportError, AttributeError, aiohttp.ClientError):
        raw = await _read_capped(response, MAX_JSON_BYTES, arrived)
        doc = _parsed(raw, response.url.path)
        detail = str(doc.get("detail", ""))[:200]
        from_service = isinstance(doc.get("error"), str)  # the one error shape of the service
    raise ServiceHTTPError(
        response.status,
        response.url.path,
        detail,
        response.headers.get("Retry-After"),
        from_service=from_service,
    )


def _fresh_when_stale(fresh: aiohttp.ClientSession) -> ClientMiddlewareType:
    """A GET met by a pooled connection the server had closed (its keep-alive timer fired as the
    request went out: aiohttp #9138) is sent once more on a new connection. aiohttp's own retry
    takes the next pooled one, which the same timer has closed too (FAULTS.md #15). POSTs carry
    op and receipt ids: their workers send them again, a no-op on the service."""

    async def middleware(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        try:
            return await handler(request)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            upgrade = hdrs.UPGRADE in request.headers  # the push channel: its own reconnects
            if request.method != "GET" or upgrade or isinstance(e, aiohttp.ClientConnectorError):
                raise
            log_event(_LOG, logging.INFO, "stale_connection", path=request.url.path)
            return await fresh.get(request.url, headers=request.headers)

    return middleware


def _session(
    connect_timeout_s: float,
    stall_timeout_s: float,
    idle_connection_s: float = 15.0,
    on_request: Callable[[], None] = lambda: None,
    fresh: aiohttp.ClientSession | None = None,
    force_close: bool = False,
) -> aiohttp.ClientSession:
    """A session; with `fresh` (one made with `force_close`: a new connection for every
    request), one whose GETs refused by a stale pooled connection are sent again through it."""
    timeout = aiohttp.ClientTimeout(
        total=None, connect=connect_timeout_s, sock_read=stall_timeout_s
    )
    trace = aiohttp.TraceConfig()

    async def request_traced(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: object
    ) -> None:
        on_request()

    trace.on_request_start.append(request_traced)
    trace.on_request_end.append(request_traced)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True)
        if force_close
        else aiohttp.TCPConnector(keepalive_timeout=idle_connection_s),
        timeout=timeout,
        auto_decompress=False,
        headers={"Accept-Encoding": "identity"},
        trace_configs=[trace],
        middlewares=() if fresh is None else (_fresh_when_stale(fresh),),
    )


class AccountClient:
    """Account-side calls, as the store's website makes them: sign up, add a device, buy.

    The daemon uses it once, to register; the demo and tests use it to play the customer.
    """

    def __init__(self, base_url: str, account_token: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.account_token = account_token

    async def _post(self, path: str, body: dict[str, Any], method: str = "POST") -> Any:
        headers = {"Authorization": f"Bearer {self.account_token}"} if self.account_token else {}
        async with _session(15, 30) as session:
            try:
                async with session.request(
                    method, self.base_url + path, json=body, headers=headers
                ) as r:
                    await _raise_for_status(r)
                    return await _json(r)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                raise _transport_error(f"{method} {path}", e) from e

    async def create_account(self, name: str) -> str:
        """Sign up; keeps and returns the new account's token."""
        doc = await self._post("/v1/accounts", {"name": name})
        self.account_token = str(doc["account_token"])
        return self.account_token

    async def register_device(self, name: str, public_key: str) -> DeviceCredentials:
        """Register a device whose X25519 public key (base64) content keys are wrapped for."""
        doc = await self._post("/v1/devices", {"name": name, "public_key": public_key})
        try:
            registered_at = _service_time(doc.get("registered_at"))
        except ValueError as e:
            raise ProtocolError(f"malformed registration answer: {e}") from e
        return DeviceCredentials(str(doc["device_id"]), str(doc["device_token"]), registered_at)

    async def buy(self, book_id: str) -> float:
        """Buy a book; returns the service time of the purchase (the 60 s clock's start)."""
        return float((await self._post("/v1/library/buy", {"book_id": book_id}))["at"])

    async def send_to_device(self, book_id: str, device_id: str) -> float:
        body = {"book_id": book_id, "device_id": device_id}
        return float((await self._post("/v1/library/send", body))["at"])

    async def return_book(self, book_id: str) -> float:
        return float((await self._post("/v1/library/return", {"book_id": book_id}))["at"])

    async def share_highlights(self, share: bool) -> None:
        """Let this account's highlights count towards popular passages (or stop)."""
        await self._post("/v1/account/sharing", {"share_highlights": share}, method="PUT")


PACKAGE_READ_AHEAD_BYTES = 1024 * 1024


class PackageBody:
    """A package byte range being read, frame by frame, under a stall watchdog."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        start: int,
        limits: ClientLimits,
        on_radio: Callable[[], None],
    ):
        self._response = response
        self._limits = limits
        self._on_radio = on_radio
        self._rest = memoryview(b"")  # of the last chunk received, what no frame took yet
        self._frame = bytearray()  # every frame read into one buffer: see read_exactly
        self.position = start
        # aiohttp stops reading the socket past 128 KiB buffered, and starts again below 64:
        # twice an epoll change per 256 KiB chunk received. Up to a media frame's worth ahead.
        response.content.set_read_chunk_size(PACKAGE_READ_AHEAD_BYTES)

    async def read_exactly(
        self, n: int, feed: Callable[[memoryview], None] | None = None
    ) -> memoryview:
        """The next `n` bytes, valid until the next read: copied once from the chunks the socket
        gave into a buffer kept for the whole range, and each piece given to `feed` (a hash)
        as it is copied. aiohttp's readexactly joined them twice, into a new block each frame,
        mapped afresh (daemon/memory.py) and faulted in page by page: a fifth of what a
        download cost on loopback (issue 22 #6)."""
        # sock_read catches silence; this deadline also catches a 1 B/s drip.
        deadline = self._limits.stall_timeout_s + n / max(1, self._limits.min_rate_bytes_per_s)
        if len(self._frame) < n:
            self._frame = bytearray(n)  # a new one: the last frame's view may still be held
        frame = memoryview(self._frame)[:n]
        filled = 0
        try:
            async with asyncio.timeout(deadline):
                while filled < n:
                    if not self._rest:
                        chunk, _ = await self._response.content.readchunk()
                        if not chunk:
                            raise TransportError(
                                f"package body ended at byte {self.position + filled}"
                            )
                        self._rest = memoryview(chunk)
                    take = min(n - filled, len(self._rest))
                    frame[filled : filled + take] = self._rest[:take]
                    if feed is not None:  # a piece of one received chunk: at most 256 KiB
                        feed(self._rest[:take])
                    self._rest = self._rest[take:]
                    filled += take
        except TimeoutError as e:
            raise StalledError(f"package: {n} bytes not received within {deadline:.0f} s") from e
        except (aiohttp.ClientError, OSError) as e:
            raise _transport_error("package", e) from e
        self.position += n
        self._on_radio()  # a long download keeps the radio awake: due work may ride it
        return frame


class ServiceClient:
    """The device's connection to the service, authenticated as this device.

    `on_radio` is called whenever the radio carries something: a request starts or ends, a
    package frame or a push frame arrives (daemon/radio/windows.py lets due work ride it)."""

    def __init__(
        self,
        base_url: str,
        credentials: DeviceCredentials,
        limits: ClientLimits,
        on_radio: Callable[[], None] = lambda: None,
    ):
        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {credentials.device_token}"}
        self._limits = limits
        self._on_radio = on_radio
        self._fresh = _session(
            limits.connect_timeout_s, limits.stall_timeout_s, on_request=on_radio, force_close=True
        )
        self._session = _session(
            limits.connect_timeout_s,
            limits.stall_timeout_s,
            limits.idle_connection_s,
            on_radio,
            fresh=self._fresh,
        )

    async def close(self) -> None:
        await self._session.close()
        await self._fresh.close()

    async def _body(
        self,
        method: str,
        path: str,
        cap: int,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        **request: Any,
    ) -> bytes:
        """The body of one exchange with the service, at most `cap` bytes, under the watchdog."""
        what = f"{method} {path}"
        async with _watchdog(self._limits, what) as arrived:
            try:
                async with self._session.request(
                    method,
                    self.base_url + path,
                    params=params,
                    headers={**self._auth, **(headers or {})},
                    **request,
                ) as r:
                    await _raise_for_status(r, arrived)
                    return await _read_capped(r, cap, arrived)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                raise _transport_error(what, e) from e

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        return _parsed(await self._body("GET", path, MAX_JSON_BYTES, params=params), path)

    async def library_changes(self, cursor: int, limit: int = 500) -> ChangesPage:
        doc = await self._get_json(
            "/v1/library/changes", {"cursor": str(cursor), "limit": str(limit)}
        )
        try:
            return _changes_page(doc, cursor)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise ProtocolError(f"malformed changes page: {type(e).__name__}: {e}") from e

    async def manifest_envelope(
        self, book_id: str, max_manifest_bytes: int = MAX_MANIFEST_BYTES
    ) -> bytes:
        """The signed manifest, cut as soon as it is longer than a manifest the device takes."""
        path = f"/v1/books/{quote(book_id, safe='')}/manifest"
        return await self._body("GET", path, max_manifest_bytes + ENVELOPE_SLACK)

    async def trust_root(self, version: int) -> bytes | None:
        """The service's trust root envelope of `version`, or None if it has none (yet)."""
        path = f"/v1/roots/{int(version)}"
        try:
            return await self._body("GET", path, MAX_ROOT_ENVELOPE_BYTES)
        except ServiceHTTPError as e:
            if e.status == 404:
                return None
            raise

    async def dictionary(self, sha256: str) -> bytes:
        """A compression dictionary by its hash (the caller verifies the bytes)."""
        path = f"/v1/dictionaries/{quote(sha256, safe='')}"
        return await self._body("GET", path, MAX_DICTIONARY_BYTES)

    @asynccontextmanager
    async def package(
        self, book_id: str, version: int, start: int, end: int, size: int | None = None
    ) -> AsyncIterator[PackageBody]:
        """Open bytes [start, end] (inclusive) of a package of `size` bytes (as its manifest
        says); never splices a mismatched range, nor one of a package of another size."""
        path = f"/v1/books/{quote(book_id, safe='')}/versions/{int(version)}/package"
        headers = {**self._auth, "Range": f"bytes={start}-{end}"}
        try:
            async with self._session.get(self.base_url + path, headers=headers) as r:
                await _raise_for_status(r)
                encoding = r.headers.get("Content-Encoding", "identity").lower()
                if encoding != "identity":
                    raise ProtocolError(f"{path}: refused Content-Encoding {encoding!r}")
                if r.status == 200:
                    if start != 0:
                        raise RangeError(f"{path}: asked for bytes {start}-{end}, got the whole")
                elif r.status == 206:
                    match = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
                    total = None if not match or match[3] == "*" else int(match[3])
                    if (
                        not match
                        or (int(match[1]), int(match[2])) != (start, end)
                        or (size is not None and total not in (None, size))
                    ):
                        raise RangeError(
                            f"{path}: asked for bytes {start}-{end}, got"
                            f" {r.headers.get('Content-Range')!r}"
                        )
                else:
                    raise ProtocolError(f"{path}: unexpected status {r.status}")
                yield PackageBody(r, start, self._limits, self._on_radio)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise _transport_error(f"GET {path}", e) from e

    @asynccontextmanager
    async def push_channel(self, prefix_room: int = 0) -> AsyncIterator[PushChannel]:
        """The push channel (version 2: changes and manifests carried, and an order's first
        frames when they fit `prefix_room` bytes); its keep-alive is the caller's
        (`PushChannel.ping`), so that the radio's owner decides when it goes."""
        room = max(0, min(prefix_room, MAX_PUSHED_PREFIX))
        try:
            async with self._session.ws_connect(
                self.base_url + "/v1/push",
                params={"version": str(PUSH_VERSION), "first_chapter_bytes": str(room)},
                headers=self._auth,
                autoping=False,
                max_msg_size=MAX_PUSH_MESSAGE_BYTES,
            ) as ws:
                yield PushChannel(ws, self._on_radio)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise _transport_error("push channel", e) from e

    # -- annotations (docs/PROTOCOL.md "Annotation sync", "Popular highlights") -----------------

    async def _annotation_doc(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        raw = await self._body(
            method, path, MAX_ANNOTATION_JSON_BYTES, params=params, headers=headers, data=body
        )
        return _parsed(raw, path)

    async def push_annotation_ops(self, ops: list[str]) -> PushResult:
        """Send a batch of ops (each the JSON text of one op); gzip-compressed when large.

        Returns what the service acknowledged (applied now or before) and refused."""
        body = ('{"ops":[' + ",".join(ops) + "]}").encode()
        headers = {"Content-Type": "application/json"}
        if len(body) > COMPRESS_ABOVE_BYTES:
            body = gzip.compress(body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        doc = await self._annotation_doc("POST", "/v1/annotations/ops", body=body, headers=headers)
        try:
            if not isinstance(doc["acked"], list) or not isinstance(doc["rejected"], list):
                raise TypeError("acked and rejected must be lists")
            return PushResult(
                [str(op_id) for op_id in doc["acked"]],
                {str(r["op_id"]): str(r["detail"])[:500] for r in doc["rejected"]},
                _stamp_in(doc),
                len(body),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed push answer: {type(e).__name__}: {e}") from e

    async def annotation_changes(self, cursor: int, limit: int) -> AnnotationPage:
        doc = await self._annotation_doc(
            "GET", "/v1/annotations/changes", {"cursor": str(cursor), "limit": str(limit)}
        )
        try:
            items, positions = [], []
            for entry in doc["changes"]:
                if "item" in entry:
                    items.append(annotation_input.item_from_doc(entry["item"]))
                else:
                    positions.append(annotation_input.position_from_doc(entry["position"]))
            return AnnotationPage(
                items, positions, int(doc["cursor"]), bool(doc["has_more"]), _stamp_in(doc)
            )
        except (KeyError, TypeError, ValueError, AnnotationError) as e:
            raise ProtocolError(f"malformed annotation changes: {type(e).__name__}: {e}") from e

    async def popular_highlights(
        self, cursor: int, limit: int, book_id: str | None = None
    ) -> PopularPage:
        """Popular passages changed after `cursor`, of one book or of the whole library; the
        passages are returned as sent, for the caller to validate one by one."""
        params = {"cursor": str(cursor), "limit": str(limit)}
        if book_id is not None:
            params["book"] = book_id
        doc = await self._annotation_doc("GET", "/v1/popular-highlights", params)
        try:
            if not isinstance(doc["passages"], list):
                raise TypeError("passages must be a list")
            return PopularPage(doc["passages"], int(doc["cursor"]), bool(doc["has_more"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed popular highlights: {type(e).__name__}: {e}") from e

    # -- delivery receipts and notices (docs/PROTOCOL.md "Delivery receipts") -------------------

    async def send_receipts(self, doc: dict[str, Any]) -> ReceiptAnswer:
        """Send one batch of receipts; returns what the service acknowledged and refused."""
        path = "/v1/receipts"
        answer = _parsed(await self._body("POST", path, MAX_JSON_BYTES, json=doc), path)
        try:
            if not isinstance(answer["acked"], list) or not isinstance(answer["rejected"], list):
                raise TypeError("acked and rejected must be lists")
            return ReceiptAnswer(
                [str(i) for i in answer["acked"]],
                {str(r["receipt_id"]): str(r["detail"])[:500] for r in answer["rejected"]},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed receipts answer: {type(e).__name__}: {e}") from e

    # -- the account's devices (docs/PROTOCOL.md "Accounts, devices, the store") ----------------

    async def rename_device(self, name: str) -> None:
        """Tell the service the name the reader gave this device."""
        await self._body("PUT", "/v1/device", MAX_JSON_BYTES, json={"name": name})

    async def device_names(self) -> dict[str, str]:
        """The account's devices: device_id -> name."""
        doc = await self._get_json("/v1/devices")
        try:
            names = {str(d["device_id"]): str(d["name"])[:MAX_DEVICE_NAME] for d in doc["devices"]}
            if len(names) > MAX_DEVICES or not all(map(hlc.is_node, names)):
                raise ValueError(f"more than {MAX_DEVICES} devices, or an id that is not one")
            return names
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed device list: {type(e).__name__}: {e}") from e

    async def notices(self, cursor: int, limit: int) -> NoticePage:
        doc = await self._get_json("/v1/notices", {"cursor": str(cursor), "limit": str(limit)})
        try:
            notices = [
                Notice(
                    int(n["seq"]),
                    str(n["kind"])[:40],
                    None if n["book_id"] is None else str(n["book_id"])[:64],
                    str(n["message"])[:1000],
                    float(n["at"]),
                )
                for n in doc["notices"]
            ]
            return NoticePage(notices, int(doc["cursor"]), bool(doc["has_more"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed notices page: {type(e).__name__}: {e}") from e


@dataclass(frozen=True, slots=True)
class ReceiptAnswer:
    acked: list[str]  # receipt ids the service holds (now or before): sent
    rejected: dict[str, str]  # receipt id -> why the service refused it


@dataclass(frozen=True, slots=True)
class NoticePage:
    notices: list[Notice]
    cursor: int
    has_more: bool


class PushChannel:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, on_radio: Callable[[], None]) -> None:
        self._ws = ws
        self._on_radio = on_radio
        self._pong = asyncio.Event()

    async def ping(self, timeout_s: float) -> None:
        """Ping the service and wait for its pong (read by `messages`, which must be running).

        Raises:
            StalledError: no pong within `timeout_s`: the channel is dead.
            TransportError: the ping could not be sent.
        """
        self._pong.clear()
        try:
            self._on_radio()
            await self._ws.ping()
            async with asyncio.timeout(timeout_s):
                await self._pong.wait()
        except TimeoutError as e:
            raise StalledError(f"push channel: no pong within {timeout_s:g} s") from e
        except (aiohttp.ClientError, OSError) as e:
            raise _transport_error("push channel ping", e) from e

    async def messages(self) -> AsyncGenerator[dict[str, Any], None]:
        """Yield the service's messages until the channel closes; answers its pings. A binary
        `library_changed` is yielded as `{"type", "cursor", "carried": LibraryPush}`, or, when
        malformed, without `carried` (the device pulls the feed instead); a `package_frames`
        as `{"type", "carried": PushedFrames}`."""
        async for message in self._ws:
            self._on_radio()
            if message.type == aiohttp.WSMsgType.PING:
                await self._ws.pong(message.data)
                continue
            if message.type == aiohttp.WSMsgType.PONG:
                self._pong.set()
                continue
            if message.type == aiohttp.WSMsgType.BINARY:
                try:
                    carried = parse_push_message(message.data)
                except (KeyError, TypeError, ValueError, OverflowError) as e:
                    log_event(_LOG, logging.WARNING, "push_message_malformed", detail=str(e))
                    yield {"type": "library_changed"}
                    continue
                if isinstance(carried, PushedFrames):  # not a change: nothing to pull
                    yield {"type": "package_frames", "carried": carried}
                    continue
                yield {"type": "library_changed", "cursor": carried.page.cursor, "carried": carried}
                continue
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            try:
                doc = json.loads(message.data)
            except ValueError:
                log_event(_LOG, logging.WARNING, "push_message_malformed")
                continue
            if isinstance(doc, dict):
                yield doc


@dataclass(frozen=True, slots=True)
class PushResult:
    acked: list[str]  # op_ids the service has applied (now or before): safe to forget
    rejected: dict[str, str]  # op_id -> why the service refused it
    clock: str  # the service's hybrid clock stamp
    bytes_sent: int  # request body bytes, as sent


@dataclass(frozen=True, slots=True)
class AnnotationPage:
    items: list[merge.Item]
    positions: list[merge.Position]
    cursor: int
    has_more: bool
    clock: str


@dataclass(frozen=True, slots=True)
class PopularPage:
    passages: list[Any]
    cursor: int
    has_more: bool


def _stamp_in(doc: Any) -> str:
    stamp = doc["clock"]
    if not hlc.is_stamp(stamp):
        raise ValueError("'clock' is not a clock stamp")
    return str(stamp)
