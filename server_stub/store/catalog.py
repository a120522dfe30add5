"""The catalog: books, their packaged versions and package chunks, content keys, dictionaries,
series, covers, and the packaging settings. Packages are stored and read in chunks of
PACKAGE_CHUNK bytes, so serving a 300 MB package never loads it whole, and reaching any byte of it
costs one index seek (server_stub/sql/0007)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from daemon.errors import StoreError
from daemon.protocol.crypto import new_content_key
from daemon.protocol.reading import Series
from server_stub.epub import series_key
from server_stub.store.feed import Change, ChangesFeed

PACKAGE_CHUNK = 64 * 1024  # bytes of a package a row


@dataclass(frozen=True, slots=True)
class Cover:
    """A book's cover image as the catalog keeps it (bytes bounded by the importer)."""

    origin: str  # 'opds': the catalog it came from gave it; 'epub': the book's own
    media_type: str
    data: bytes
    resource: str | None = None  # its path in the book, when the book's own

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class CoverInfo:
    """What the catalog listing says of a cover, without its bytes."""

    origin: str
    media_type: str
    size: int
    sha256: str
    resource: str | None


@dataclass(frozen=True, slots=True)
class Book:
    book_id: str
    title: str
    authors: tuple[str, ...]
    language: str
    version: int
    epub_sha256: str
    epub_size: int
    source: str
    package_size: int  # of the current version
    series: tuple[Series, ...] = ()
    cover: CoverInfo | None = None


@dataclass(frozen=True, slots=True)
class NewVersion:
    """What `put_version` stores: one packaged version of a book and where it came from."""

    book_id: str
    version: int
    title: str
    authors: tuple[str, ...]
    language: str
    manifest_template: bytes
    package: bytes
    package_sha256: str
    epub_sha256: str
    epub_size: int
    source: str
    series: tuple[Series, ...] = ()


@dataclass(frozen=True, slots=True)
class PackageInfo:
    rowid: int
    size: int
    sha256: str


# A book's primary language subtag: 'en' for en-GB (BCP 47, case-insensitive).
_PRIMARY_LANGUAGE = "lower(substr({0}.language, 1, instr({0}.language || '-', '-') - 1))"
_BOOK_COLUMNS = (
    "b.book_id, b.title, b.authors, b.language, b.version, b.epub_sha256, b.epub_size,"
    " b.source, v.package_size, (SELECT json_group_array(json_array(s.name, s.position))"
    "   FROM book_series s WHERE s.book_id = b.book_id),"
    " c.origin, c.media_type, length(c.data), c.sha256, c.resource"
)
_BOOK_TABLES = (
    "books b JOIN book_versions v ON v.book_id = b.book_id AND v.version = b.version"
    " LEFT JOIN book_covers c ON c.book_id = b.book_id"
)


def _book(row: Any) -> Book:
    (
        book_id,
        title,
        authors,
        language,
        version,
        epub_sha,
        epub_size,
        source,
        package_size,
        series,
        *cover,
    ) = row
    return Book(
        book_id,
        title,
        tuple(json.loads(authors)),
        language,
        version,
        epub_sha,
        epub_size,
        source,
        package_size,
        tuple(Series(name, position) for name, position in sorted(json.loads(series))),
        CoverInfo(*cover) if cover[0] is not None else None,
    )


class Catalog(ChangesFeed):
    def content_key(self, book_id: str) -> bytes:
        """The book's content key, created on first use."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO content_keys (book_id, key) VALUES (?, ?)",
                (book_id, new_content_key()),
            )
            return bytes(self._one("SELECT key FROM content_keys WHERE book_id = ?", (book_id,))[0])

    def current_dictionary(self) -> bytes | None:
        row = self._one("SELECT data FROM dictionaries WHERE current")
        return None if row is None else bytes(row[0])

    def dictionary(self, sha256: str) -> bytes | None:
        row = self._one("SELECT data FROM dictionaries WHERE sha256 = ?", (sha256,))
        return None if row is None else bytes(row[0])

    def put_current_dictionary(self, sha256: str, data: bytes, at: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE dictionaries SET current = 0")
            db.execute(
                "INSERT INTO dictionaries (sha256, data, current, created_at) VALUES (?, ?, 1, ?)"
                " ON CONFLICT (sha256) DO UPDATE SET current = 1",
                (sha256, data, at),
            )

    def book(self, book_id: str) -> Book | None:
        row = self._one(
            f"SELECT {_BOOK_COLUMNS} FROM {_BOOK_TABLES} WHERE b.book_id = ?",
            (book_id,),
        )
        return _book(row) if row else None

    def catalog(self) -> list[Book]:
        rows = self._query(
            f"SELECT {_BOOK_COLUMNS} FROM {_BOOK_TABLES} ORDER BY b.title, b.book_id"
        )
        return [_book(r) for r in rows]

    def book_for_epub(self, epub_sha256: str) -> str | None:
        """The book whose current version was imported from a file with this SHA-256."""
        row = self._one("SELECT book_id FROM books WHERE epub_sha256 = ?", (epub_sha256,))
        return str(row[0]) if row else None

    def package_sha256(self, book_id: str, version: int) -> str | None:
        row = self._one(
            "SELECT package_sha256 FROM book_versions WHERE book_id = ? AND version = ?",
            (book_id, version),
        )
        return str(row[0]) if row else None

    def put_version(self, new: NewVersion, at: float) -> list[Change]:
        """Store a book's next version (1 for a new book) and, in the same transaction, an
        `update` change for every library holding it. Returns those changes."""
        with self._transaction() as db:
            row = self._one("SELECT version FROM books WHERE book_id = ?", (new.book_id,))
            expected = int(row[0]) + 1 if row else 1
            if new.version != expected:
                raise StoreError(
                    f"{new.book_id}: version {new.version} stored out of order (next is {expected})"
                )
            values = (
                new.title,
                json.dumps(list(new.authors), ensure_ascii=False),
                new.language,
                new.version,
                new.epub_sha256,
                new.epub_size,
                new.source,
                new.book_id,
            )
            if row:
                db.execute(
                    "UPDATE books SET title = ?, authors = ?, language = ?, version = ?,"
                    " epub_sha256 = ?, epub_size = ?, source = ? WHERE book_id = ?",
                    values,
                )
            else:
                db.execute(
                    "INSERT INTO books (title, authors, language, version, epub_sha256,"
                    " epub_size, source, book_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
            self._put_series(new.book_id, new.series)
            db.execute(
                "INSERT INTO book_versions (book_id, version, manifest, package, package_sha256,"
                " package_size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    new.book_id,
                    new.version,
                    new.manifest_template,
                    b"",  # the bytes go in package_chunks
                    new.package_sha256,
                    len(new.package),
                    at,
                ),
            )
            version_id = db.last_insert_rowid()
            with memoryview(new.package) as package:
                db.executemany(
                    "INSERT INTO package_chunks (version_id, idx, data) VALUES (?, ?, ?)",
                    (
                        (version_id, i // PACKAGE_CHUNK, package[i : i + PACKAGE_CHUNK])
                        for i in range(0, len(package), PACKAGE_CHUNK)
                    ),
                )
            holders = self._query(
                "SELECT account_id, device_id FROM library WHERE book_id = ?"
                " ORDER BY account_id, device_id",
                (new.book_id,),
            )
            return [
                self._append_change(
                    account_id, device_id or None, new.book_id, "update", "revised", new.version, at
                )
                for account_id, device_id in holders
            ]

    def set_epub_source(
        self,
        book_id: str,
        epub_sha256: str,
        epub_size: int,
        source: str,
        series: tuple[Series, ...],
    ) -> None:
        """Record a changed file whose package is identical, so the next start skips it (its
        series may still have changed: they live in the package document's metadata)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE books SET epub_sha256 = ?, epub_size = ?, source = ? WHERE book_id = ?",
                (epub_sha256, epub_size, source, book_id),
            )
            self._put_series(book_id, series)

    def series_read(self, book_id: str) -> bool:
        """Whether the book's series were read from its file (not so for books imported
        before the catalog kept series)."""
        row = self._one("SELECT series_read FROM books WHERE book_id = ?", (book_id,))
        return bool(row and row[0])

    def set_series(self, book_id: str, series: tuple[Series, ...]) -> None:
        with self._transaction():
            self._put_series(book_id, series)

    def _put_series(self, book_id: str, series: tuple[Series, ...]) -> None:
        self._db.execute("DELETE FROM book_series WHERE book_id = ?", (book_id,))
        self._db.executemany(
            "INSERT OR IGNORE INTO book_series (book_id, series_key, name, position)"
            " VALUES (?, ?, ?, ?)",
            ((book_id, series_key(e.name), e.name, e.position) for e in series),
        )
        self._db.execute("UPDATE books SET series_read = 1 WHERE book_id = ?", (book_id,))

    def cover_read(self, book_id: str) -> bool:
        """Whether the book's cover was looked for (not so for books imported before the
        catalog kept covers)."""
        row = self._one("SELECT cover_read FROM books WHERE book_id = ?", (book_id,))
        return bool(row and row[0])

    def set_cover(self, book_id: str, cover: Cover | None) -> None:
        """The book's cover from now on; None: it has none."""
        with self._transaction() as db:
            db.execute("DELETE FROM book_covers WHERE book_id = ?", (book_id,))
            if cover is not None:
                db.execute(
                    "INSERT INTO book_covers (book_id, origin, media_type, data, sha256, resource)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        book_id,
                        cover.origin,
                        cover.media_type,
                        cover.data,
                        cover.sha256,
                        cover.resource,
                    ),
                )
            db.execute("UPDATE books SET cover_read = 1 WHERE book_id = ?", (book_id,))

    def cover(self, book_id: str) -> Cover | None:
        row = self._one(
            "SELECT origin, media_type, data, resource FROM book_covers WHERE book_id = ?",
            (book_id,),
        )
        return None if row is None else Cover(row[0], row[1], bytes(row[2]), row[3])

    def manifest_template(self, book_id: str, version: int) -> bytes | None:
        row = self._one(
            "SELECT manifest FROM book_versions WHERE book_id = ? AND version = ?",
            (book_id, version),
        )
        return bytes(row[0]) if row else None

    def package_info(self, book_id: str, version: int) -> PackageInfo | None:
        row = self._one(
            "SELECT id, package_size, package_sha256 FROM book_versions"
            " WHERE book_id = ? AND version = ?",
            (book_id, version),
        )
        return PackageInfo(*row) if row else None

    def read_package(self, rowid: int, offset: int, length: int) -> bytes:
        """`length` bytes of a package from `offset`: fastest within one chunk (a read that
        starts and ends on PACKAGE_CHUNK boundaries reads only what it returns).

        Each call is its own statement, so no read transaction stays open while a response
        waits on a slow client (or a paused fault)."""
        if length <= 0:
            return b""
        first, last = offset // PACKAGE_CHUNK, (offset + length - 1) // PACKAGE_CHUNK
        chunks = self._query(
            "SELECT data FROM package_chunks WHERE version_id = ? AND idx BETWEEN ? AND ?"
            " ORDER BY idx",
            (rowid, first, last),
        )
        if not chunks:  # packaged before server_stub/sql/0007: one blob
            blob = self._db.blob_open("main", "book_versions", "package", rowid, False)
            try:
                blob.seek(offset)
                return blob.read(length)
            finally:
                blob.close()
        start = offset - first * PACKAGE_CHUNK
        if len(chunks) == 1:
            return bytes(memoryview(chunks[0][0])[start : start + length])
        return b"".join(c for (c,) in chunks)[start : start + length]

    def _current_version(self, book_id: str) -> int:
        row = self._one("SELECT version FROM books WHERE book_id = ?", (book_id,))
        return int(row[0]) if row else 1

    def _next_in_series(self, book_id: str) -> str | None:
        """The catalog's book at position n+1 of a series that `book_id` is book n of, in the
        same language, regional variants aside (a reader of book 1 in English wants book 2 in
        English, en-GB or en-US); the first by id if editions share that place."""
        row = self._one(
            "SELECT nxt.book_id FROM book_series cur"
            " JOIN books b ON b.book_id = cur.book_id"
            " JOIN book_series nxt ON nxt.series_key = cur.series_key"
            "   AND nxt.position = cur.position + 1"
            f" JOIN books nb ON nb.book_id = nxt.book_id AND {_PRIMARY_LANGUAGE.format('nb')}"
            f"   = {_PRIMARY_LANGUAGE.format('b')}"
            " WHERE cur.book_id = ? ORDER BY nxt.book_id LIMIT 1",
            (book_id,),
        )
        return None if row is None else str(row[0])

    def package_layout(self) -> int:
        """The packaging layout the catalog's books are in (1: before the layout was recorded)."""
        row = self._one("SELECT value FROM settings WHERE key = 'package_layout'")
        return int(row[0]) if row else 1

    def set_package_layout(self, layout: int) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO settings (key, value) VALUES ('package_layout', ?)",
                (str(layout),),
            )
