"""Packaging: an EPUB's files in reading order in, package bytes and a manifest template out.

Pure: no I/O. The resources are laid end to end as one plaintext stream, and the stream is cut
into frames of at most FRAME_SIZE bytes:

- consecutive whole resources are packed into the open frame while they fit;
- a resource that does not fit in the open frame's remaining space closes it and starts a new one;
- a resource larger than FRAME_SIZE starts a new frame and is split into FRAME_SIZE pieces; its
  last piece stays open, so the small resources after it share that frame.

So a small resource never straddles two frames, and only a large resource spans several.
Each frame is compressed on its own with `daemon.codec.encode_frame`.

The manifest built here is a template: `issued_at`/`expires_at` are placeholders until `stamp`
sets them when the service signs it (server_stub.signing).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from daemon.codec import encode_frame
from daemon.manifest import Manifest, Resource, build_frames, encode_manifest, parse_manifest
from server_stub.epub import Epub

FRAME_SIZE = 128 * 1024  # bytes of plaintext per frame (PROTOCOL.md "frame_size")
MANIFEST_LIFETIME = 30 * 24 * 3600  # seconds: a signed manifest expires 30 days after issue
# Template placeholders: expires_at > issued_at, so a template still passes parse_manifest.
_TEMPLATE_ISSUED_AT = 0
_TEMPLATE_EXPIRES_AT = 1


@dataclass(frozen=True, slots=True)
class Package:
    manifest: Manifest  # a template: stamp() it before signing
    data: bytes  # the frames, concatenated
    sha256: str  # of `data`: the package's ETag


def book_id_for(identifier: str, language: str) -> str:
    """PROTOCOL.md: `bk_` + 16 hex digits of SHA-256 of "<unique identifier>\n<language>".

    The language is part of a book's identity because publishers reuse one identifier across
    translations (calibre's Quick Start Guide ships in English, German and French under one
    UUID); a revised EPUB keeps both, so it keeps its book_id."""
    key = f"{identifier.strip()}\n{language.strip().lower()}"
    return "bk_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def cut_frames(pieces: list[bytes], frame_size: int = FRAME_SIZE) -> list[bytes]:
    """The plaintext of each frame, for resources `pieces` in stream order (see module doc)."""
    frames: list[bytes] = []
    current = bytearray()
    for data in pieces:
        if len(data) <= frame_size - len(current):
            current += data
            continue
        if current:
            frames.append(bytes(current))
            current = bytearray()
        if len(data) <= frame_size:
            current += data
            continue
        whole = len(data) - len(data) % frame_size
        frames.extend(data[i : i + frame_size] for i in range(0, whole, frame_size))
        current += data[whole:]
    if current:
        frames.append(bytes(current))
    return frames


def build_package(epub: Epub, version: int, frame_size: int = FRAME_SIZE) -> Package:
    """Package one version of a book; the template manifest is checked with parse_manifest."""
    resources = []
    offset = 0
    for file in epub.files:
        resources.append(
            Resource(
                path=file.path,
                media_type=file.media_type,
                size=len(file.data),
                sha256=hashlib.sha256(file.data).hexdigest(),
                offset=offset,
            )
        )
        offset += len(file.data)

    specs = []
    chunks = []
    package_offset = 0
    for plain in cut_frames([f.data for f in epub.files], frame_size):
        codec, packed = encode_frame(plain)
        specs.append(
            (hashlib.sha256(packed).hexdigest(), package_offset, len(packed), len(plain), codec)
        )
        chunks.append(packed)
        package_offset += len(packed)
    data = b"".join(chunks)

    manifest = Manifest(
        book_id=book_id_for(epub.identifier, epub.language),
        version=version,
        issued_at=_TEMPLATE_ISSUED_AT,
        expires_at=_TEMPLATE_EXPIRES_AT,
        title=epub.title,
        authors=epub.authors,
        language=epub.language,
        frame_size=frame_size,
        frames=build_frames(specs),
        resources=tuple(resources),
        toc=epub.toc,
        first_chapter=epub.first_chapter,
        package_size=len(data),
    )
    # The device will run exactly this check; failing it here names the file at import time.
    parse_manifest(encode_manifest(manifest))
    return Package(manifest=manifest, data=data, sha256=hashlib.sha256(data).hexdigest())


def stamp(template: Manifest, now: int, lifetime: int = MANIFEST_LIFETIME) -> Manifest:
    """The manifest as issued at `now` (unix seconds), valid for `lifetime` seconds."""
    return dataclasses.replace(template, issued_at=now, expires_at=now + lifetime)
