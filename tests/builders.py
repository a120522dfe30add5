"""Small builders for unit tests: a manifest and its signed envelope from plain bytes."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.codec import encode_frame
from daemon.crypto import sign_envelope
from daemon.manifest import Manifest, Resource, TocEntry, build_frames, encode_manifest

NOW = 1_764_000_000


def make_manifest(
    files: list[tuple[str, bytes]],
    *,
    book_id: str = "bk_test",
    version: int = 1,
    issued_at: int = NOW,
    lifetime_s: int = 30 * 86400,
) -> tuple[Manifest, bytes]:
    """A manifest with one frame per file (tests do not need packing), and the package."""
    specs, package, resources, stream = [], b"", [], 0
    for path, data in files:
        codec, packed = encode_frame(data)
        specs.append(
            (hashlib.sha256(packed).hexdigest(), len(package), len(packed), len(data), codec)
        )
        package += packed
        resources.append(
            Resource(
                path, "application/xhtml+xml", len(data), hashlib.sha256(data).hexdigest(), stream
            )
        )
        stream += len(data)
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
    )
    return manifest, package


def signed(manifest: Manifest, key: Ed25519PrivateKey) -> bytes:
    return sign_envelope(key, encode_manifest(manifest))
