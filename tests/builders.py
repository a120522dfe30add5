"""Small builders for unit tests: a sealed book, its manifest and signed envelope from bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from daemon.protocol.codec import encode_frame
from daemon.protocol.crypto import WRAP_ALG, seal_frame, sign_envelope, wrap_content_key
from daemon.protocol.manifest import (
    Manifest,
    Resource,
    TocEntry,
    WrappedKey,
    build_frames,
    encode_manifest,
)

NOW = 1_764_000_000
DEVICE_KEY = X25519PrivateKey.generate()
CONTENT_KEY = bytes(range(32))


def make_manifest(
    files: list[tuple[str, bytes]],
    *,
    book_id: str = "bk_test",
    version: int = 1,
    issued_at: int = NOW,
    lifetime_s: int = 30 * 86400,
    device_key: X25519PrivateKey = DEVICE_KEY,
    content_key: bytes = CONTENT_KEY,
    sealed_for: str | None = None,
    seal: Callable[[bytes, str, bytes], bytes] = seal_frame,
) -> tuple[Manifest, bytes]:
    """A manifest with one sealed frame per file (tests do not need packing), and the package."""
    specs, package, resources, stream = [], b"", [], 0
    for path, data in files:
        codec, packed = encode_frame(data, level=3)
        sealed = seal(content_key, sealed_for or book_id, packed)
        specs.append(
            (hashlib.sha256(sealed).hexdigest(), len(package), len(sealed), len(data), codec)
        )
        package += sealed
        resources.append(Resource(path, "application/xhtml+xml", len(data), stream))
        stream += len(data)
    ephemeral, wrapped = wrap_content_key(device_key.public_key(), content_key, book_id)
    manifest = Manifest(
        book_id=book_id,
        version=version,
        issued_at=issued_at,
        expires_at=issued_at + lifetime_s,
        title="Test Book",
        authors=("A. Writer",),
        language="en",
        frame_size=max(len(d) for _, d in files),
        frames=build_frames(specs),
        resources=tuple(resources),
        toc=(TocEntry("One", files[0][0]),),
        first_chapter=files[0][0],
        package_size=len(package),
        content_key=WrappedKey(WRAP_ALG, ephemeral, wrapped),
        dictionary=None,
    )
    return manifest, package


def signed(manifest: Manifest, key: Ed25519PrivateKey) -> bytes:
    return sign_envelope(key, encode_manifest(manifest))
