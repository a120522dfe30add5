"""Packaging: an EPUB's files in reading order in, package bytes and a manifest template out.

Pure: no I/O. The resources are laid end to end as one plaintext stream, and the stream is cut
into frames of at most FRAME_SIZE bytes of text (MEDIA_FRAME_SIZE of media):

- consecutive whole resources are packed into the open frame while they fit;
- a resource that does not fit in the open frame's remaining space closes it and starts a new one;
- a resource larger than FRAME_SIZE starts a new frame and is split into FRAME_SIZE pieces; its
  last piece stays open, so the small resources after it share that frame.

So a small resource never straddles two frames, and only a large resource spans several. A
frame also closes where the stream passes between text (markup, styles, fonts: what zstd shrinks)
and media that is already compressed (JPEG, PNG, audio), so neither dilutes the other.

Each frame is compressed on its own with `daemon.protocol.codec.encode_frame` (text with the
catalog's dictionary; a zstd block ends where each resource in the frame ends), then sealed with the
book's content key (`daemon.protocol.crypto.seal_frame`).

The manifest built here is a template: `issued_at`/`expires_at` are placeholders until `stamp`
sets them when the service signs it (server_stub.signing).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from daemon.protocol.codec import COMPRESSION_LEVEL, Dictionary, encode_frame
from daemon.protocol.crypto import seal_frame
from daemon.protocol.manifest import (
    DictionaryRef,
    Manifest,
    Resource,
    WrappedKey,
    build_frames,
    encode_manifest,
    parse_manifest,
)
from server_stub.epub import Epub, EpubFile

# Frames grow: the first holds at most FIRST_FRAME_SIZE bytes of plaintext and each next one up
# to twice as much, up to FRAME_SIZE. Small first frames make the first chapter readable after
# a few KB on a 3G link; large later frames compress nearly as well as one stream per book
# (2 MiB rather than 1 MiB takes the corpus from 0.81x to 0.79x of its .epub bytes), and the
# device decodes only as far as a read needs, so a large frame costs a page turn little.
# Media is already compressed and gains nothing from large frames: it stays at 1 MiB, which
# bounds what a download holds in memory per frame. Why these numbers: docs/BENCHMARKS.md.
# Bumped whenever packaging turns an unchanged EPUB into other bytes (2: manifest format 2, text
# frames of 2 MiB; 3: zstd blocks end at resource ends, BLOCK_PLAIN_SIZE apart; 4: what the
# first page shows comes first, and the manifest lists it): a catalog packaged by an older layout
# repackages every book, as new versions.
PACKAGE_LAYOUT = 4
FIRST_FRAME_SIZE = 64 * 1024
FRAME_SIZE = 2 * 1024 * 1024
MEDIA_FRAME_SIZE = 1024 * 1024
# zstd decodes a block whole, up to 128 KiB of plaintext: a page turn that crossed into a new
# block decoded all of it, three times what unzipping the chapter costs. A block now ends at
# the first resource end after this much plaintext, so a turn decodes at most about this much
# beyond its own chapter, and the chapters after it in the block read already decoded. Read
# in order, the corpus's p99 went from 0.87x to 0.63x zipfile's, for 0.14% more package bytes;
# 16 KiB (nearly a block per chapter) made the median read 1.5x zipfile's instead of 0.4x.
BLOCK_PLAIN_SIZE = 32 * 1024
_PRECOMPRESSED = ("image/jpeg", "image/png", "image/gif", "image/webp", "audio/", "video/")
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


def is_text(file: EpubFile) -> bool:
    """Whether a resource is worth compressing (and training a dictionary on)."""
    return not file.media_type.startswith(_PRECOMPRESSED)


def cut_frames(
    pieces: list[bytes],
    frame_size: int = FRAME_SIZE,
    kinds: list[bool] | None = None,
    first_frame_size: int | None = None,
    media_frame_size: int | None = None,
) -> list[bytes]:
    """The plaintext of each frame, for resources `pieces` in stream order (see module doc).

    `kinds` marks each piece text (True) or precompressed media (False); a media frame holds at
    most `media_frame_size` (default `frame_size`). With `first_frame_size`, frame n may hold at
    most first_frame_size * 2**n too.
    """
    frames: list[bytes] = []
    current = bytearray()
    current_kind: bool | None = None

    def limit() -> int:
        largest = frame_size if current_kind or media_frame_size is None else media_frame_size
        if first_frame_size is None:
            return largest
        return min(largest, first_frame_size << min(len(frames), 32))

    def close() -> None:
        nonlocal current
        if current:
            frames.append(bytes(current))
            current = bytearray()

    for data, kind in zip(pieces, kinds or [True] * len(pieces), strict=True):
        if kind != current_kind:
            close()
        current_kind = kind
        if len(data) <= limit() - len(current):
            current += data
            continue
        close()
        position = 0
        while len(data) - position > limit():
            size = limit()
            frames.append(data[position : position + size])
            position += size
        current += data[position:]
    close()
    return frames


def block_ends_in(
    frames: list[bytes], pieces: list[bytes], least: int = BLOCK_PLAIN_SIZE
) -> list[list[int]]:
    """For each frame of `cut_frames(pieces, ...)`, where its zstd blocks should end: at the end
    of a resource inside it, at least `least` bytes after the previous block end (offsets into
    the frame; its own end left out)."""
    ends, position = [], 0
    for piece in pieces:
        position += len(piece)
        ends.append(position)
    found: list[list[int]] = []
    start, i = 0, 0
    for frame in frames:
        stop = start + len(frame)
        while i < len(ends) and ends[i] <= start:
            i += 1
        inside: list[int] = []
        while i < len(ends) and ends[i] < stop:
            if ends[i] - start - (inside[-1] if inside else 0) >= least:
                inside.append(ends[i] - start)
            i += 1
        found.append(inside)
        start = stop
    return found


def build_package(
    epub: Epub,
    version: int,
    content_key: bytes,
    dictionary: Dictionary | None = None,
    *,
    frame_size: int = FRAME_SIZE,
    first_frame_size: int | None = FIRST_FRAME_SIZE,
    media_frame_size: int | None = MEDIA_FRAME_SIZE,
    level: int = COMPRESSION_LEVEL,
) -> Package:
    """Package one version of a book; the template manifest is checked with parse_manifest."""
    book_id = book_id_for(epub.identifier, epub.language)
    resources = []
    offset = 0
    for file in epub.files:
        resources.append(
            Resource(
                path=file.path,
                media_type=file.media_type,
                size=len(file.data),
                offset=offset,
            )
        )
        offset += len(file.data)

    specs = []
    chunks = []
    package_offset = 0
    pieces = [f.data for f in epub.files]
    kinds = [is_text(f) for f in epub.files]
    media_frame_size = None if media_frame_size is None else min(media_frame_size, frame_size)
    frames = cut_frames(pieces, frame_size, kinds, first_frame_size, media_frame_size)
    for plain, ends in zip(frames, block_ends_in(frames, pieces), strict=True):
        codec, packed = encode_frame(plain, level, dictionary, ends)
        sealed = seal_frame(content_key, book_id, packed)
        specs.append(
            (hashlib.sha256(sealed).hexdigest(), package_offset, len(sealed), len(plain), codec)
        )
        chunks.append(sealed)
        package_offset += len(sealed)
    data = b"".join(chunks)

    manifest = Manifest(
        book_id=book_id,
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
        first_chapter_needs=epub.first_chapter_needs,
        reading=epub.reading,
        package_size=len(data),
        content_key=None,  # wrapped for each device when the manifest is signed
        dictionary=None
        if dictionary is None or not any(codec == "zstd-dict" for *_, codec in specs)
        else DictionaryRef(dictionary.sha256, len(dictionary.data)),
    )
    # The device will run exactly this check; failing it here names the file at import time.
    parse_manifest(encode_manifest(manifest), template=True)
    return Package(manifest=manifest, data=data, sha256=hashlib.sha256(data).hexdigest())


def stamp(
    template: Manifest, now: int, content_key: WrappedKey, lifetime: int = MANIFEST_LIFETIME
) -> Manifest:
    """The manifest for one device as issued at `now` (unix seconds), valid for `lifetime`."""
    return dataclasses.replace(
        template, issued_at=now, expires_at=now + lifetime, content_key=content_key
    )
