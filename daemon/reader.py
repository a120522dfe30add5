"""Reading a resource back: its stored frames, verified and decoded, sliced to the resource.

Every frame is re-hashed before it is decoded, so bytes altered at rest are never served, and
decoding is bounded by the manifest's sizes and the device's window cap (daemon.codec). Frames
are loaded one at a time, so memory stays at one frame whatever the resource's size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from daemon.codec import decode_frame
from daemon.errors import FrameHashError, NotOnDeviceError
from daemon.models import ResourceRow
from daemon.store import Store


def check_available(store: Store, resource: ResourceRow) -> None:
    missing = store.count_missing(resource)
    if missing:
        raise NotOnDeviceError(resource.book_id, resource.path, missing)


def resource_pieces(store: Store, resource: ResourceRow, window_cap: int) -> Iterator[bytes]:
    """Yield the resource's bytes frame by frame. Call inside `store.snapshot()`."""
    check_available(store, resource)
    end = resource.offset + resource.size
    for idx in range(resource.first_frame, resource.last_frame + 1):
        frame, data = store.frame(resource.book_id, resource.version, idx)
        if data is None:
            raise NotOnDeviceError(resource.book_id, resource.path, 1)
        if hashlib.sha256(data).hexdigest() != frame.sha256:
            raise FrameHashError(
                f"stored frame {idx} of {resource.book_id} v{resource.version} no longer"
                " matches its manifest"
            )
        plain = decode_frame(data, frame.codec, frame.plain_size, window_cap)
        lo = max(resource.offset, frame.plain_offset) - frame.plain_offset
        hi = min(end, frame.plain_offset + frame.plain_size) - frame.plain_offset
        yield plain[lo:hi]


def read_resource(store: Store, resource: ResourceRow, window_cap: int) -> bytes:
    """The whole resource in memory: for tests and small resources."""
    with store.snapshot():
        return b"".join(resource_pieces(store, resource, window_cap))
