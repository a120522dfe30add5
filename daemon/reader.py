"""Reading a resource back: its stored frames, verified, opened and decoded, sliced to it.

Each frame is checked three ways before a byte of it is served: its SHA-256 against the signed
manifest, its AEAD tag under the book's content key (unwrapped with this device's key only when
the book is read), and a zstd decode bounded by the manifest's sizes and the device's window cap.
Frames are loaded one at a time, so memory stays at one frame whatever the resource's size.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.codec import Dictionary, decode_frame
from daemon.crypto import open_frame, unwrap_content_key
from daemon.errors import DictionaryError, FrameHashError, KeyUnwrapError, NotOnDeviceError
from daemon.models import ResourceRow
from daemon.store import Store

_CACHED_KEYS = 16  # content keys of the books read lately: unwrapping costs an X25519 exchange
# Plaintext of the frames read lately. A frame holds up to 1 MiB of many small resources, and a
# reader turns pages through consecutive ones: decoding the frame once for all of them is what
# makes a read as fast as unzipping one file. Bounded in bytes, not frames.
PLAIN_CACHE_BYTES = 4 * 1024 * 1024


class FrameOpener:
    """Turns stored frames back into plaintext for one device."""

    def __init__(self, device_key: X25519PrivateKey, window_cap: int) -> None:
        self._device_key = device_key
        self.window_cap = window_cap
        self._keys: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._dictionaries: dict[str, Dictionary] = {}
        # By the frame's SHA-256 in the signed manifest: verified when it was decoded.
        self._plain: OrderedDict[str, bytes] = OrderedDict()
        self._plain_bytes = 0

    def cached(self, sha256: str) -> bytes | None:
        plain = self._plain.get(sha256)
        if plain is not None:
            self._plain.move_to_end(sha256)
        return plain

    def remember(self, sha256: str, plain: bytes) -> None:
        if len(plain) > PLAIN_CACHE_BYTES or sha256 in self._plain:
            return
        self._plain[sha256] = plain
        self._plain_bytes += len(plain)
        while self._plain_bytes > PLAIN_CACHE_BYTES:
            _, dropped = self._plain.popitem(last=False)
            self._plain_bytes -= len(dropped)

    def content_key(self, store: Store, book_id: str, version: int) -> bytes:
        cached = self._keys.get((book_id, version))
        if cached is not None:
            self._keys.move_to_end((book_id, version))
            return cached
        wrapped = store.wrapped_key(book_id, version)
        if wrapped is None:
            raise KeyUnwrapError(f"{book_id} v{version} has no content key on the device")
        key = unwrap_content_key(self._device_key, wrapped.ephemeral, wrapped.wrapped, book_id)
        self._keys[(book_id, version)] = key
        if len(self._keys) > _CACHED_KEYS:
            self._keys.popitem(last=False)
        return key

    def dictionary(self, store: Store, book_id: str, version: int) -> Dictionary | None:
        sha256 = store.manifest_dictionary(book_id, version)
        if sha256 is None:
            return None
        if sha256 not in self._dictionaries:
            data = store.dictionary(sha256)
            if data is None:
                raise DictionaryError(f"dictionary {sha256[:16]} of {book_id} is not on the device")
            self._dictionaries[sha256] = Dictionary.verified(data, sha256)
        return self._dictionaries[sha256]


def check_available(store: Store, resource: ResourceRow) -> None:
    missing = store.count_missing(resource)
    if missing:
        raise NotOnDeviceError(resource.book_id, resource.path, missing)


def resource_pieces(store: Store, resource: ResourceRow, opener: FrameOpener) -> Iterator[bytes]:
    """Yield the resource's bytes frame by frame. Call inside `store.snapshot()`."""
    check_available(store, resource)
    book_id, version = resource.book_id, resource.version
    end = resource.offset + resource.size
    for idx in range(resource.first_frame, resource.last_frame + 1):
        frame = store.frame_row(book_id, version, idx)
        plain = opener.cached(frame.sha256)
        if plain is None:
            plain = _decode_stored(store, resource, opener, idx)
            opener.remember(frame.sha256, plain)
        lo = max(resource.offset, frame.plain_offset) - frame.plain_offset
        hi = min(end, frame.plain_offset + frame.plain_size) - frame.plain_offset
        yield plain[lo:hi]


def _decode_stored(store: Store, resource: ResourceRow, opener: FrameOpener, idx: int) -> bytes:
    book_id, version = resource.book_id, resource.version
    frame, data = store.frame(book_id, version, idx)
    if data is None:
        raise NotOnDeviceError(book_id, resource.path, 1)
    if hashlib.sha256(data).hexdigest() != frame.sha256:
        raise FrameHashError(
            f"stored frame {idx} of {book_id} v{version} no longer matches its manifest",
            book_id,
            version,
            idx,
        )
    packed = open_frame(opener.content_key(store, book_id, version), book_id, data)
    return decode_frame(
        packed,
        frame.codec,
        frame.plain_size,
        opener.window_cap,
        opener.dictionary(store, book_id, version),
    )


def read_resource(store: Store, resource: ResourceRow, opener: FrameOpener) -> bytes:
    """The whole resource in memory: for tests and small resources."""
    with store.snapshot():
        return b"".join(resource_pieces(store, resource, opener))
