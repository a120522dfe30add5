"""Catalog import: a folder of .epub files (or those an OPDS catalog links to, server_stub/opds.py)
in, books, versions and covers in the store out.

Each file is validated and packaged. A file whose SHA-256 is the one the store already has for
a book's current version is skipped before it is even unzipped, so a restart repackages nothing.
A changed file for a known book becomes its next version (and an `update` change for every
library holding it); a malformed one is refused, with a logged line naming file and problem,
while the rest import. A book's cover is the one its OPDS catalog gave, else its own cover image,
either at most MAX_COVER_BYTES.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from daemon.errors import DictionaryError, ManifestError
from daemon.protocol.codec import COMPRESSION_LEVEL, Dictionary, train_dictionary
from daemon.protocol.manifest import encode_manifest
from server_stub.epub import Epub, EpubError, read_epub
from server_stub.logs import kv
from server_stub.packaging import (
    FRAME_SIZE,
    PACKAGE_LAYOUT,
    book_id_for,
    build_package,
    is_text,
)
from server_stub.store import Change, Cover, NewVersion, Store

log = logging.getLogger("server_stub.catalog")

DICTIONARY_BYTES = 112 * 1024  # zstd's default size; see docs/BENCHMARKS.md "compression"
DICTIONARY_SAMPLE_PER_FILE = 16 * 1024  # bytes: the start of each file, where markup repeats
DICTIONARY_SAMPLE_BYTES = 8 * 1024 * 1024  # bytes of samples at most: training stays seconds
MAX_COVER_BYTES = 2 * 1024 * 1024  # a full-page JPEG cover is 100 KB to 1 MB


@dataclass(frozen=True, slots=True)
class EpubSource:
    """One EPUB to import: the file, and for one from an OPDS catalog its link and the cover
    the catalog gave (already fetched and bounded)."""

    path: Path
    url: str | None = None
    cover: Cover | None = None

    @property
    def name(self) -> str:
        """What the catalog records as the book's source and the logs name."""
        return self.url or self.path.name


@dataclass(frozen=True, slots=True)
class ImportedBook:
    path: Path
    book_id: str
    version: int  # the book's current version after the import
    url: str | None = None  # the OPDS acquisition link it came from (path is then a download)


@dataclass(slots=True)
class ImportReport:
    imported: list[ImportedBook] = field(default_factory=list)  # new books
    updated: list[ImportedBook] = field(default_factory=list)  # new versions of known books
    unchanged: list[ImportedBook] = field(default_factory=list)  # nothing to package
    refused: list[tuple[Path, str]] = field(default_factory=list)  # (file, problem)
    refused_links: list[tuple[str, str]] = field(default_factory=list)  # (OPDS URL, problem)
    changes: list[Change] = field(default_factory=list)  # `update` changes appended

    def merge(self, other: ImportReport) -> None:
        self.imported += other.imported
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.refused += other.refused
        self.refused_links += other.refused_links
        self.changes += other.changes


def _file_sha256(path: Path) -> tuple[str, int]:
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256")
    return digest.hexdigest(), path.stat().st_size


@dataclass(frozen=True, slots=True)
class PackagingSettings:
    level: int = COMPRESSION_LEVEL  # tests pass a low level: same format, a fraction of the time
    frame_size: int = FRAME_SIZE


def import_library(
    store: Store,
    library_dir: Path,
    clock: Callable[[], float] = time.time,
    settings: PackagingSettings | None = None,
) -> ImportReport:
    """Import every `*.epub` directly in `library_dir` (sorted by name) into `store`."""
    if not library_dir.is_dir():
        log.warning(kv("library_missing", folder=library_dir))
        return ImportReport(refused=[(library_dir, "the library folder does not exist")])
    paths = sorted(p for p in library_dir.glob("*.epub") if p.is_file())
    report = import_epubs(store, [EpubSource(p) for p in paths], clock, settings)
    log.info(
        kv(
            "library_imported",
            folder=library_dir,
            imported=len(report.imported),
            updated=len(report.updated),
            unchanged=len(report.unchanged),
            refused=len(report.refused),
        )
    )
    return report


def import_epubs(
    store: Store,
    sources: list[EpubSource],
    clock: Callable[[], float] = time.time,
    settings: PackagingSettings | None = None,
) -> ImportReport:
    """Import each EPUB in order: same validation and packaging wherever it came from."""
    settings = settings or PackagingSettings()
    report = ImportReport()
    claimed: dict[str, str] = {}  # book_id -> the source that provided it in this import
    dictionary = _dictionary(store, [s.path for s in sources], clock)
    repackage = store.package_layout() != PACKAGE_LAYOUT
    if repackage:
        log.info(kv("catalog_repackaged", layout_was=store.package_layout(), layout=PACKAGE_LAYOUT))
    for source in sources:
        problem = _import_one(
            store, source, claimed, report, clock, settings, dictionary, repackage
        )
        if problem is not None:
            if source.url is None:
                report.refused.append((source.path, problem))
            else:
                report.refused_links.append((source.url, problem))
            log.warning(kv("epub_refused", file=source.name, problem=problem))
    store.set_package_layout(PACKAGE_LAYOUT)
    return report


def _dictionary(store: Store, paths: list[Path], clock: Callable[[], float]) -> Dictionary | None:
    """The catalog's dictionary, trained on the library's text the first time.

    It is trained once and kept: a new dictionary would make every book a new version.
    """
    current = store.current_dictionary()
    if current is not None:
        return Dictionary(current)
    samples: list[bytes] = []
    budget = DICTIONARY_SAMPLE_BYTES
    for path in paths:
        try:
            epub = read_epub(path)
        except EpubError:
            continue  # refused, with its reason, when it is imported
        for file in epub.files:
            if is_text(file) and file.data and budget > 0:
                samples.append(file.data[:DICTIONARY_SAMPLE_PER_FILE])
                budget -= len(samples[-1])
    try:
        dictionary = train_dictionary(samples, DICTIONARY_BYTES)
    except (zstandard.ZstdError, DictionaryError) as e:
        # Too little text to learn from (a library of one small book): package without one.
        log.info(kv("dictionary_not_trained", samples=len(samples), reason=str(e)))
        return None
    store.put_current_dictionary(dictionary.sha256, dictionary.data, clock())
    log.info(
        kv(
            "dictionary_trained",
            sha256=dictionary.sha256[:16],
            bytes=len(dictionary.data),
            samples=len(samples),
        )
    )
    return dictionary


def _import_one(
    store: Store,
    source: EpubSource,
    claimed: dict[str, str],
    report: ImportReport,
    clock: Callable[[], float],
    settings: PackagingSettings,
    dictionary: Dictionary | None,
    repackage: bool,
) -> str | None:
    """Import one file; return the problem if it is refused. `repackage`: the catalog is in an
    older packaging layout, so an EPUB already imported is packaged again all the same."""
    path = source.path
    try:
        epub_sha256, epub_size = _file_sha256(path)
    except OSError as e:
        return f"cannot read the file ({e.strerror or e})"

    known = None if repackage else store.book_for_epub(epub_sha256)
    if known is not None:
        if known in claimed:
            return f"same book ({known}) as {claimed[known]}"
        claimed[known] = source.name
        if not store.series_read(known) or not (source.cover or store.cover_read(known)):
            try:  # imported before the catalog kept series or covers: read them once
                epub = read_epub(path)
            except EpubError as e:
                return e.problem
            store.set_series(known, epub.series)
            store.set_cover(known, source.cover or _own_cover(epub))
        elif source.cover is not None:
            store.set_cover(known, source.cover)
        book = store.book(known)
        assert book is not None  # book_for_epub found its row
        report.unchanged.append(ImportedBook(path, known, book.version, source.url))
        return None

    try:
        epub = read_epub(path)
    except EpubError as e:
        return e.problem
    for problem in epub.toc_problems:  # imported all the same, as reading systems read it
        log.warning(kv("epub_toc_skipped", file=source.name, problem=problem))
    book_id = book_id_for(epub.identifier, epub.language)
    if book_id in claimed:
        return (
            f"same unique identifier and language as {claimed[book_id]} ({book_id});"
            " give one of them its own identifier"
        )
    current = store.book(book_id)
    version = current.version + 1 if current else 1
    try:
        package = build_package(
            epub,
            version,
            store.content_key(book_id),
            dictionary,
            frame_size=settings.frame_size,
            level=settings.level,
        )
    except ManifestError as e:
        return f"cannot be packaged: {e}"
    claimed[book_id] = source.name
    cover = source.cover or _own_cover(epub)

    if current is not None and store.package_sha256(book_id, current.version) == package.sha256:
        # Same content in a rewritten ZIP (new timestamps, say): no new version to send.
        store.set_epub_source(book_id, epub_sha256, epub_size, source.name, epub.series)
        store.set_cover(book_id, cover)
        report.unchanged.append(ImportedBook(path, book_id, current.version, source.url))
        return None

    changes = store.put_version(
        NewVersion(
            book_id=book_id,
            version=version,
            title=epub.title,
            authors=epub.authors,
            language=epub.language,
            manifest_template=encode_manifest(package.manifest),
            package=package.data,
            package_sha256=package.sha256,
            epub_sha256=epub_sha256,
            epub_size=epub_size,
            source=source.name,
            series=epub.series,
        ),
        at=clock(),
    )
    store.set_cover(book_id, cover)
    report.changes.extend(changes)
    entry = ImportedBook(path, book_id, version, source.url)
    (report.updated if current else report.imported).append(entry)
    log.info(
        kv(
            "book_updated" if current else "book_imported",
            file=source.name,
            book_id=book_id,
            version=version,
            frames=len(package.manifest.frames),
            package_bytes=len(package.data),
            libraries_notified=len(changes),
        )
    )
    return None


def _own_cover(epub: Epub) -> Cover | None:
    """The EPUB's own cover image, if it names one of at most MAX_COVER_BYTES."""
    file = epub.file(epub.cover) if epub.cover else None
    if file is None or not file.data:
        return None
    if len(file.data) > MAX_COVER_BYTES:
        log.info(kv("cover_too_large", book=epub.source.name, bytes=len(file.data)))
        return None
    return Cover("epub", file.media_type, file.data, file.path)
