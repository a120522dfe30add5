"""Reading a resource back: its stored frames, verified, opened and decoded, sliced to it.

Each frame is checked before a byte of it is served: the AEAD tag of each 64 KiB chunk read,
under the book's content key (unwrapped with this device's key only when the book is read) and
a nonce derived from the one recorded when the frame was committed (after its SHA-256 matched
the signed manifest), so a chunk of any other frame fails; then a zstd decode bounded by the
manifest's sizes and the device's window cap. Only the chunks a read needs are read from the
store and opened, and a frame is decoded only as far as the resource being read ends
(`codec.FrameDecoder`): turning to the first chapter of a 2 MiB frame costs that chapter, and
the next page goes on from there. A frame that one resource fills is streamed out as it
decodes and never kept, so memory stays at about one frame whatever the resource's size.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.errors import (
    DatabaseDamagedError,
    DecodeError,
    DictionaryError,
    FrameAuthError,
    FrameHashError,
    KeyUnwrapError,
    NotOnDeviceError,
)
from daemon.models import FrameRow, ResourceRow, StoredFrame
from daemon.protocol.codec import (
    ZSTD_CONTEXT_BYTES,
    Buffer,
    ChunkSource,
    Dictionary,
    FrameDecoder,
    WholePayload,
)
from daemon.protocol.crypto import (
    NONCE_BYTES,
    SEAL_CHUNK,
    SealedFrame,
    open_whole_frame,
    unwrap_content_key,
)
from daemon.store import Store

_CACHED_BOOKS = 16  # books read lately, their keys unwrapped: unwrapping costs an X25519 exchange
# The frames read lately that hold more than the resource read, each decoded as far as it was
# read. A frame holds up to 2 MiB of many small resources, and a reader turns pages through
# consecutive ones: decoding on from where the last page ended is what makes a read as fast as
# unzipping one file. Bounded in bytes, not frames: a 2 MiB frame part-decoded holds a chunk of
# compressed bytes, the plaintext so far and zstd's window and context (up to ~4.3 MiB), and the
# bound must keep it whole while the reader pages through it, or every page would decode the
# frame again from its start; no more than that, on a device whose daemon has 64 MiB in all.
PLAIN_CACHE_BYTES = 4608 * 1024
# What an entry costs beyond the bytes it holds (its bookkeeping): frames of pictures hold none,
# and must not pile up without bound either.
_ENTRY_BYTES = 1024


class FrameOpener:
    """Turns stored frames back into plaintext for one device."""

    def __init__(
        self,
        device_key: X25519PrivateKey,
        window_cap: int,
        plain_cache_bytes: int = PLAIN_CACHE_BYTES,
    ) -> None:
        self._device_key = device_key
        self.window_cap = window_cap
        self._books: OrderedDict[tuple[str, int], OpenBook] = OrderedDict()
        self._dictionaries: dict[str, Dictionary] = {}
        # By the frame's SHA-256 in the signed manifest: verified when it was opened.
        self._frames: OrderedDict[str, FrameDecoder] = OrderedDict()
        self._charged: dict[str, int] = {}  # sha256 -> memory_bytes() when last counted
        self._cache_bytes = plain_cache_bytes
        self._held_bytes = 0

    def cached(self, sha256: str) -> FrameDecoder | None:
        frame = self._frames.get(sha256)
        if frame is not None:
            self._frames.move_to_end(sha256)
        return frame

    def remember(self, sha256: str, frame: FrameDecoder) -> None:
        """Keep (or recount, after a read decoded more of it) a frame, within the byte bound."""
        if sha256 not in self._frames:
            self._frames[sha256] = frame
            self._charged[sha256] = 0
        self._frames.move_to_end(sha256)
        size = frame.memory_bytes() + _ENTRY_BYTES
        self._held_bytes += size - self._charged[sha256]
        self._charged[sha256] = size
        if size > self._cache_bytes:
            self.forget(sha256)  # larger than the whole cache: keeping it would empty the rest
        while self._held_bytes > self._cache_bytes:
            self.forget(next(iter(self._frames)))

    def make_room(self, sha256: str, most_bytes: int) -> None:
        """Evict the least recently used other frames until one that may grow to `most_bytes`
        (the frame `sha256`, about to be decoded further) fits within the bound beside them,
        so the bound holds while it decodes and not only after."""
        others = self.held_bytes(besides=sha256)
        while others + most_bytes > self._cache_bytes:
            oldest = next((s for s in self._frames if s != sha256), None)
            if oldest is None:
                return
            others -= self._charged[oldest]
            self.forget(oldest)

    def held_bytes(self, besides: str | None = None) -> int:
        """What the cached frames hold, but for the frame `besides`."""
        return self._held_bytes - (self._charged.get(besides, 0) if besides else 0)

    def forget(self, sha256: str) -> None:
        if self._frames.pop(sha256, None) is not None:
            self._held_bytes -= self._charged.pop(sha256)

    def book(self, store: Store, book_id: str, version: int) -> OpenBook:
        """What opening this book's frames takes, read from its manifest once: its row lies
        past a signed envelope in overflow pages, too slow to read again for every page."""
        cached = self._books.get((book_id, version))
        if cached is not None:
            self._books.move_to_end((book_id, version))
            return cached
        sealing = store.frames.manifest_sealing(book_id, version)
        if sealing is None or sealing.content_key is None:
            raise KeyUnwrapError(f"{book_id} v{version} has no content key on the device")
        wrapped = sealing.content_key
        book = OpenBook(
            unwrap_content_key(self._device_key, wrapped.ephemeral, wrapped.wrapped, book_id),
            sealing.dictionary_sha256,
            sealing.sealed_in_chunks,
        )
        self._books[(book_id, version)] = book
        if len(self._books) > _CACHED_BOOKS:
            self._books.popitem(last=False)
        return book

    def dictionary(self, store: Store, book_id: str, version: int) -> Dictionary | None:
        sha256 = self.book(store, book_id, version).dictionary_sha256
        if sha256 is None:
            return None
        if sha256 not in self._dictionaries:
            data = store.frames.dictionary(sha256)
            if data is None:
                raise DictionaryError(f"dictionary {sha256[:16]} of {book_id} is not on the device")
            self._dictionaries[sha256] = Dictionary.verified(data, sha256)
        return self._dictionaries[sha256]


@dataclass(frozen=True, slots=True)
class OpenBook:
    content_key: bytes  # unwrapped with this device's key
    dictionary_sha256: str | None
    sealed_in_chunks: bool  # False: sealed whole, by a daemon before manifest format 2


def resource_pieces(store: Store, resource: ResourceRow, opener: FrameOpener) -> Iterator[Buffer]:
    """Yield the resource's bytes in order, as views of what each frame decoded (no copies),
    a piece at a time; NotOnDeviceError first if a frame it needs is still to come. Call
    inside `store.snapshot()`."""
    frames = store.frames.resource_frames(resource)
    spanned = resource.last_frame - resource.first_frame + 1
    missing = spanned - sum(stored is not None for _, stored in frames)
    if missing:
        raise NotOnDeviceError(resource.book_id, resource.path, missing)
    end = resource.offset + resource.size
    for frame, stored in frames:
        assert stored is not None  # checked above
        lo = max(resource.offset, frame.plain_offset) - frame.plain_offset
        hi = min(end, frame.plain_offset + frame.plain_size) - frame.plain_offset
        try:
            yield from _frame_pieces(store, resource, opener, frame, stored, lo, hi)
        except FrameAuthError as e:
            opener.forget(frame.sha256)
            altered = _altered_at_rest(store, resource, frame.idx)
            if altered is None:
                raise
            raise altered from e
        except DecodeError:
            opener.forget(frame.sha256)
            raise
        except DatabaseDamagedError as e:
            # The frame lies on a damaged page: never served, fetched again like one altered.
            opener.forget(frame.sha256)
            raise FrameHashError(
                f"stored frame {frame.idx} of {resource.book_id} v{resource.version} is on a"
                " damaged page of the database",
                resource.book_id,
                resource.version,
                frame.idx,
            ) from e


def _frame_pieces(
    store: Store,
    resource: ResourceRow,
    opener: FrameOpener,
    frame: FrameRow,
    stored: StoredFrame,
    lo: int,
    hi: int,
) -> Iterator[Buffer]:
    """Bytes [lo, hi) of one frame of the resource."""
    source = _StoredChunks(store, resource, opener, frame.idx, stored)
    cached = opener.cached(frame.sha256)
    fills_frame = lo == 0 and hi == frame.plain_size
    if cached is None and fills_frame:
        # A frame of one large resource (a picture, a long chapter) is read once: streamed out
        # as it decodes, never kept, holding zstd's window and a piece in flight at most.
        opener.make_room(frame.sha256, _streaming_bytes(frame))
        yield from _new_decoder(store, resource, opener, frame, source).stream(source)
        return
    # Other resources share the frame: they may be next, so it is kept, decoded as far as read.
    # Its worst case decoded to its end is the plaintext, zstd's window and context and a chunk.
    opener.make_room(frame.sha256, _decoding_bytes(frame) + _ENTRY_BYTES)
    decoder = cached or _new_decoder(store, resource, opener, frame, source)
    segments = decoder.segments(lo, hi, source)
    opener.remember(frame.sha256, decoder)
    yield from segments


def _decoding_bytes(frame: FrameRow) -> int:
    return 0 if frame.codec == "raw" else 2 * frame.plain_size + ZSTD_CONTEXT_BYTES + SEAL_CHUNK


def _streaming_bytes(frame: FrameRow) -> int:
    if frame.codec == "raw":
        return SEAL_CHUNK
    return frame.plain_size + ZSTD_CONTEXT_BYTES + 2 * SEAL_CHUNK


def _new_decoder(
    store: Store, resource: ResourceRow, opener: FrameOpener, frame: FrameRow, source: ChunkSource
) -> FrameDecoder:
    return FrameDecoder(
        source,
        frame.codec,
        frame.plain_size,
        opener.window_cap,
        opener.dictionary(store, resource.book_id, resource.version),
    )


class _StoredChunks:
    """A stored frame's chunks (a ChunkSource), each authenticated as it is read. Opened only
    when a read needs a chunk: a page already decoded in the cache costs no store read."""

    def __init__(
        self,
        store: Store,
        resource: ResourceRow,
        opener: FrameOpener,
        idx: int,
        stored: StoredFrame,
    ) -> None:
        self._store, self._resource, self._opener = store, resource, opener
        self._idx, self._stored = idx, stored
        self._opened: ChunkSource | None = None

    @property
    def chunk_size(self) -> int:
        return self._open().chunk_size

    @property
    def payload_size(self) -> int:
        return self._open().payload_size

    def chunk(self, index: int) -> bytes:
        return self._open().chunk(index)

    def _open(self) -> ChunkSource:
        if self._opened is None:
            self._opened = self._open_stored()
        return self._opened

    def _open_stored(self) -> ChunkSource:
        store, stored = self._store, self._stored
        book_id, version = self._resource.book_id, self._resource.version
        seal_nonce = store.frames.seal_nonce(book_id, version, self._idx)
        if seal_nonce is None:
            raise self._not_committed()
        book = self._opener.book(store, book_id, version)
        key = book.content_key
        if not book.sealed_in_chunks:  # stored before manifest format 2: sealed whole
            whole = store.frames.read_frame(stored, 0, stored.size)
            if whole[:NONCE_BYTES] != seal_nonce:  # its nonce binds it to this row
                raise self._not_committed()
            return WholePayload(open_whole_frame(key, book_id, whole))
        # The nonce prefix recorded at commit (just after the frame's SHA-256 matched the
        # manifest) binds every chunk to this row: a chunk of any other frame, even of this
        # book under this key, fails its tag. So nothing is hashed whole, and the stored
        # prefix itself is never read.
        return SealedFrame(
            key,
            book_id,
            stored.size,
            lambda offset, size: store.frames.read_frame(stored, offset, size),
            prefix=seal_nonce,
        )

    def _not_committed(self) -> FrameHashError:
        book_id, version = self._resource.book_id, self._resource.version
        return FrameHashError(
            f"stored frame {self._idx} of {book_id} v{version} is not the one committed"
            " (swapped or overwritten on the device)",
            book_id,
            version,
            self._idx,
        )


def _altered_at_rest(store: Store, resource: ResourceRow, idx: int) -> FrameHashError | None:
    """For a frame that failed authentication: the error to fetch it again if it was altered at
    rest, or None if it is as the service sent it (sealed wrong: fetching it again would bring
    the same bytes). Only the manifest's hash of the whole frame tells which."""
    book_id, version = resource.book_id, resource.version
    try:
        frame, data = store.frames.frame(book_id, version, idx)
    except DatabaseDamagedError:
        data = None  # on a damaged page: altered at rest, whatever it was
    else:
        if data is not None and hashlib.sha256(data).hexdigest() == frame.sha256:
            return None
    return FrameHashError(
        f"stored frame {idx} of {book_id} v{version} no longer matches its manifest",
        book_id,
        version,
        idx,
    )


def read_resource(store: Store, resource: ResourceRow, opener: FrameOpener) -> bytes:
    """The whole resource in memory: for tests and small resources."""
    with store.snapshot():
        return b"".join(resource_pieces(store, resource, opener))
