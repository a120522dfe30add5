"""The book manifest: the signed description of one version of one book.

Pure: bytes in, values out, no I/O. The service (server_stub.packaging) builds manifests with
`encode_manifest`; the device parses them with `parse_manifest` only after the signature over the
exact bytes verified (daemon.protocol.crypto). The format is documented in docs/PROTOCOL.md.

A book's resources are laid end to end, in reading order, as one plaintext stream; frames cut that
stream into consecutive pieces of at most `frame_size` bytes. A resource occupies
[offset, offset + size) of the stream and is readable once every frame overlapping it is stored.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from daemon.errors import ManifestError
from daemon.protocol.ids import BOOK_ID, SHA256
from daemon.protocol.reading import MAX_LABEL, Reading, parse_reading, reading_to_doc

# 2: resources carry no SHA-256 of their own (the signed frame hashes cover every byte; the
# per-resource hashes were half of a large book's manifest, all of it before the first chapter).
FORMAT = 2
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # the protocol's ceiling; mahabharata's is 615 KB
MAX_ITEMS = (
    65_536  # the protocol's ceiling on resources, frames and TOC entries (mahabharata: 2,020)
)
MAX_AUTHORS = 100
MAX_LANGUAGE = 64  # characters of a BCP 47 tag (35 is the longest registered)
MAX_FRAME_PLAIN = 4 * 1024 * 1024  # bytes: one frame's plaintext, the decode cap's upper bound
CODECS = ("zstd", "zstd-dict", "raw")  # zstd-dict: compressed with the manifest's dictionary
MAX_DICTIONARY_BYTES = 1024 * 1024
_B64 = re.compile(r"\A[A-Za-z0-9+/]{1,200}={0,2}\Z")

_MEDIA_TYPE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*\Z")


@dataclass(frozen=True, slots=True)
class ManifestLimits:
    """How much of one manifest a device agrees to take (docs/PROFILES.md): its decoded size,
    which bounds the memory parsing it costs (about 5.4 times its size), and the counts and
    lengths that bound what the local API answers from it. The defaults are the protocol's
    ceilings, which the service keeps to; a device's come from its RAM budget
    (`for_ram_budget`). An 8 MiB title or 150,000 resources, signed, once cost the local API
    a second and 100 MiB (issue 24 #7, #8)."""

    max_bytes: int = MAX_MANIFEST_BYTES
    max_items: int = MAX_ITEMS  # resources, frames and TOC entries, each
    max_text_chars: int = MAX_LABEL  # the title, each author, each TOC label

    @classmethod
    def for_ram_budget(cls, ram_budget_bytes: int) -> ManifestLimits:
        """1 MiB of manifest and 4,096 items on a 64 MiB daemon, 2 MiB and 16,384 on 256 MiB:
        parsing the largest manifest allowed stays within 16 MiB of the budget (issue 24)."""
        return cls(
            max_bytes=min(MAX_MANIFEST_BYTES, max(1024 * 1024, ram_budget_bytes // 128)),
            max_items=min(MAX_ITEMS, max(4096, ram_budget_bytes // (16 * 1024))),
        )


PROTOCOL_LIMITS = ManifestLimits()  # the service's: every device takes at most these


@dataclass(frozen=True, slots=True)
class Frame:
    """One independently compressed piece of the package."""

    sha256: str  # of the bytes as they travel and rest
    offset: int  # in the package
    length: int  # bytes in the package
    plain_size: int  # bytes after decoding
    codec: str  # "zstd" or "raw"
    plain_offset: int  # in the plaintext stream (derived, not serialised)


@dataclass(frozen=True, slots=True)
class Resource:
    """One file of the EPUB, as the publisher wrote it."""

    path: str
    media_type: str
    size: int
    offset: int  # in the plaintext stream


@dataclass(frozen=True, slots=True)
class TocEntry:
    label: str
    href: str
    children: tuple[TocEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """The book's content key, wrapped for one device (daemon.protocol.crypto.wrap_content_key)."""

    alg: str
    ephemeral: str  # base64 X25519 public key of the service's ephemeral key
    wrapped: str  # base64 ChaCha20-Poly1305 ciphertext of the 32-byte content key


@dataclass(frozen=True, slots=True)
class DictionaryRef:
    """The zstd dictionary that frames with codec "zstd-dict" need, by content address."""

    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    book_id: str
    version: int
    issued_at: int  # unix seconds, service clock
    expires_at: int
    title: str
    authors: tuple[str, ...]
    language: str
    frame_size: int
    frames: tuple[Frame, ...]
    resources: tuple[Resource, ...]
    toc: tuple[TocEntry, ...]
    first_chapter: str
    package_size: int
    content_key: WrappedKey | None  # None only in the service's unsigned templates
    dictionary: DictionaryRef | None
    # What the first chapter's first page shows besides it (stylesheets, fonts, images, the
    # facing page of a spread): the book is readable only once these are in too.
    first_chapter_needs: tuple[str, ...] = ()
    reading: Reading = field(default_factory=Reading)  # direction, layout, cover, landmarks...
    _resource_index: dict[str, Resource] = field(repr=False, compare=False, default_factory=dict)

    def resource(self, path: str) -> Resource | None:
        if not self._resource_index:
            self._resource_index.update((r.path, r) for r in self.resources)
        return self._resource_index.get(path)

    def frames_for(self, resource: Resource) -> range:
        """Indexes of the frames that hold `resource` (empty for an empty resource)."""
        if resource.size == 0:
            return range(0)
        starts = [f.plain_offset for f in self.frames]
        first = bisect_right(starts, resource.offset) - 1
        last = bisect_right(starts, resource.offset + resource.size - 1) - 1
        return range(first, last + 1)

    def first_chapter_frames(self) -> int:
        """How many leading frames must be stored before the first chapter reads: those holding
        the chapter and everything its first page shows (the service packs them first)."""
        stop = 0
        for path in (self.first_chapter, *self.first_chapter_needs):
            resource = self.resource(path)
            assert resource is not None  # parse_manifest checked it
            needed = self.frames_for(resource)
            stop = max(stop, needed.stop if needed else 0)
        return stop

    @property
    def plain_size(self) -> int:
        return sum(f.plain_size for f in self.frames)


def encode_manifest(m: Manifest) -> bytes:
    """Canonical JSON bytes of a manifest: the exact bytes the service signs."""
    doc = {
        "format": FORMAT,
        "book_id": m.book_id,
        "version": m.version,
        "issued_at": m.issued_at,
        "expires_at": m.expires_at,
        "title": m.title,
        "authors": list(m.authors),
        "language": m.language,
        "frame_size": m.frame_size,
        "frames": [
            {
                "sha256": f.sha256,
                "offset": f.offset,
                "length": f.length,
                "plain_size": f.plain_size,
                "codec": f.codec,
            }
            for f in m.frames
        ],
        "resources": [
            {
                "path": r.path,
                "media_type": r.media_type,
                "size": r.size,
                "offset": r.offset,
            }
            for r in m.resources
        ],
        "toc": [toc_to_doc(t) for t in m.toc],
        "first_chapter": m.first_chapter,
        **({"first_chapter_needs": list(m.first_chapter_needs)} if m.first_chapter_needs else {}),
        **({"reading": reading_to_doc(m.reading)} if m.reading != Reading() else {}),
        "package_size": m.package_size,
        "content_key": None
        if m.content_key is None
        else {
            "alg": m.content_key.alg,
            "ephemeral": m.content_key.ephemeral,
            "wrapped": m.content_key.wrapped,
        },
        "dictionary": None
        if m.dictionary is None
        else {"sha256": m.dictionary.sha256, "size": m.dictionary.size},
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def toc_to_doc(t: TocEntry) -> dict[str, Any]:
    return {"label": t.label, "href": t.href, "children": [toc_to_doc(c) for c in t.children]}


def build_frames(specs: list[tuple[str, int, int, int, str]]) -> tuple[Frame, ...]:
    """Frames from (sha256, offset, length, plain_size, codec), with plaintext offsets filled."""
    frames = []
    plain = 0
    for sha, offset, length, plain_size, codec in specs:
        frames.append(Frame(sha, offset, length, plain_size, codec, plain))
        plain += plain_size
    return tuple(frames)


_CONTROL = re.compile("[\x00-\x1f]")  # one search, not a loop a character: 2,000 paths a book


def check_resource_path(path: str) -> str:
    """Return `path` if it is a safe, relative path inside a book; raise ValueError otherwise."""
    if not path or len(path) > 1024:
        raise ValueError("empty or overlong path")
    if "\x00" in path or "\\" in path or path.startswith("/"):
        raise ValueError("NUL, backslash or absolute path")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError("empty, '.' or '..' path segment")
    if _CONTROL.search(path):
        raise ValueError("control character in path")
    return path


def parse_manifest(
    data: bytes, *, template: bool = False, limits: ManifestLimits = PROTOCOL_LIMITS
) -> Manifest:
    """Parse and validate manifest bytes (already signature-checked); raise ManifestError.

    `template` accepts the service's unsigned templates, which have no content key yet.
    """
    if len(data) > limits.max_bytes:
        raise ManifestError(f"manifest is {len(data)} bytes, over the {limits.max_bytes} limit")
    try:
        doc = json.loads(data)
        return _parse_doc(doc, template, limits)
    except ManifestError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ManifestError(f"malformed manifest: {type(e).__name__}: {e}") from e


def _need(doc: Any, key: str, kind: type, check: Any = None) -> Any:
    value = doc[key]
    if kind is int and isinstance(value, bool):
        raise ManifestError(f"{key}: expected integer")
    if not isinstance(value, kind):
        raise ManifestError(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
    if check is not None and not check(value):
        raise ManifestError(f"{key}: invalid value {str(value)[:80]!r}")
    return value


def _nonneg(v: int) -> bool:
    return 0 <= v < 2**53


def _items(doc: Any, key: str, limits: ManifestLimits) -> list[Any]:
    items: list[Any] = _need(doc, key, list)
    if len(items) > limits.max_items:
        raise ManifestError(f"{key}: {len(items)} entries, over this device's {limits.max_items}")
    return items


def _text(doc: Any, key: str, limit: int) -> str:
    return str(_need(doc, key, str, lambda v: len(v) <= limit))


def _parse_doc(doc: Any, template: bool, limits: ManifestLimits) -> Manifest:
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    if doc.get("format") != FORMAT:
        raise ManifestError(f"unsupported manifest format {doc.get('format')!r}")
    frame_size = _need(doc, "frame_size", int, lambda v: 0 < v <= MAX_FRAME_PLAIN)
    specs = []
    package_offset = 0
    for raw in _items(doc, "frames", limits):
        length = _need(raw, "length", int, lambda v: 0 < v <= MAX_FRAME_PLAIN + 1024)
        offset = _need(raw, "offset", int, _nonneg)
        if offset != package_offset:
            raise ManifestError(f"frames are not contiguous at package offset {package_offset}")
        specs.append(
            (
                _need(raw, "sha256", str, SHA256.match),
                offset,
                length,
                _need(raw, "plain_size", int, lambda v: 0 < v <= frame_size),
                _need(raw, "codec", str, lambda v: v in CODECS),
            )
        )
        package_offset += length
    frames = build_frames(specs)
    package_size = _need(doc, "package_size", int, _nonneg)
    if package_size != package_offset:
        raise ManifestError(f"package_size {package_size} != sum of frame lengths {package_offset}")
    plain_total = sum(f.plain_size for f in frames)

    resources = []
    seen: set[str] = set()
    stream = 0
    for raw in _items(doc, "resources", limits):
        path = _need(raw, "path", str)
        try:
            check_resource_path(path)
        except ValueError as e:
            raise ManifestError(f"resource path {path[:80]!r}: {e}") from e
        if path in seen:
            raise ManifestError(f"resource {path!r} listed twice")
        seen.add(path)
        size = _need(raw, "size", int, _nonneg)
        offset = _need(raw, "offset", int, _nonneg)
        if offset != stream:
            raise ManifestError(f"resource {path!r} is not contiguous in the stream")
        stream += size
        resources.append(
            Resource(
                path=path,
                media_type=_need(raw, "media_type", str, _MEDIA_TYPE.match),
                size=size,
                offset=offset,
            )
        )
    if stream != plain_total:
        raise ManifestError(f"resources cover {stream} bytes but frames hold {plain_total}")

    first_chapter = _need(doc, "first_chapter", str)
    if first_chapter not in seen:
        raise ManifestError(f"first_chapter {first_chapter!r} is not a resource")
    raw_needs = doc.get("first_chapter_needs", [])  # absent from packages before layout 4
    if not isinstance(raw_needs, list) or not all(
        isinstance(n, str) and n in seen and n != first_chapter for n in raw_needs
    ):
        raise ManifestError("first_chapter_needs: expected a list of the book's other resources")
    needs = tuple(raw_needs)
    reading = (
        parse_reading(doc["reading"], seen, limits.max_items) if "reading" in doc else Reading()
    )
    if len(set(needs)) != len(needs):
        raise ManifestError("first_chapter_needs lists a resource twice")
    authors = tuple(_need(doc, "authors", list))
    if len(authors) > MAX_AUTHORS or not all(
        isinstance(a, str) and len(a) <= limits.max_text_chars for a in authors
    ):
        raise ManifestError(
            f"authors: expected at most {MAX_AUTHORS} strings of {limits.max_text_chars}"
        )
    issued_at = _need(doc, "issued_at", int, _nonneg)
    content_key = None
    if doc.get("content_key") is not None or not template:
        raw_key = _need(doc, "content_key", dict)
        content_key = WrappedKey(
            alg=_need(raw_key, "alg", str),
            ephemeral=_need(raw_key, "ephemeral", str, _B64.match),
            wrapped=_need(raw_key, "wrapped", str, _B64.match),
        )
    dictionary = None
    if doc.get("dictionary") is not None:
        raw_dict = _need(doc, "dictionary", dict)
        dictionary = DictionaryRef(
            sha256=_need(raw_dict, "sha256", str, SHA256.match),
            size=_need(raw_dict, "size", int, lambda v: 0 < v <= MAX_DICTIONARY_BYTES),
        )
    if dictionary is None and any(f.codec == "zstd-dict" for f in frames):
        raise ManifestError("frames need a dictionary but the manifest names none")
    return Manifest(
        book_id=_need(doc, "book_id", str, BOOK_ID.match),
        version=_need(doc, "version", int, lambda v: 0 < v < 2**53),
        issued_at=issued_at,
        expires_at=_need(doc, "expires_at", int, lambda v: _nonneg(v) and v > issued_at),
        title=_text(doc, "title", limits.max_text_chars),
        authors=authors,
        language=_text(doc, "language", MAX_LANGUAGE),
        frame_size=frame_size,
        frames=frames,
        resources=tuple(resources),
        toc=_TocReader(seen, limits).entries(doc, "toc", 0),
        first_chapter=first_chapter,
        package_size=package_size,
        content_key=content_key,
        dictionary=dictionary,
        first_chapter_needs=needs,
        reading=reading,
    )


class _TocReader:
    """Table-of-contents entries, each pointing into one of the book's own resources (a
    `javascript:` or remote href, or a file the book lacks, is refused), within the device's
    counts and lengths over the whole tree."""

    def __init__(self, resources: set[str], limits: ManifestLimits) -> None:
        self._resources = resources
        self._limits = limits
        self._count = 0

    def entries(self, doc: Any, key: str, depth: int) -> tuple[TocEntry, ...]:
        if depth > 16:
            raise ManifestError("table of contents nested deeper than 16 levels")
        raw = _need(doc, key, list)
        self._count += len(raw)
        if self._count > self._limits.max_items:
            raise ManifestError(f"toc: over this device's {self._limits.max_items} entries")
        return tuple(self._entry(t, depth) for t in raw)

    def _entry(self, doc: Any, depth: int) -> TocEntry:
        href = _text(doc, "href", 2 * 1024)
        if href.split("#", 1)[0] not in self._resources:
            raise ManifestError(f"toc: href {href[:80]!r} is not one of the book's resources")
        return TocEntry(
            label=_text(doc, "label", self._limits.max_text_chars),
            href=href,
            children=self.entries(doc, "children", depth + 1),
        )
