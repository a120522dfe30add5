"""The stub's store: the only code in server_stub that speaks SQL. One SQLite file (WAL), apsw.

Schema changes are the numbered entries of MIGRATIONS, each applied once inside one transaction
and recorded in the `schema_version` table; a database written by a newer stub is refused.
Every method is one short transaction and never awaits, so handlers on the event loop cannot
interleave inside one. Packages are read with incremental blob I/O, a slice at a time, so serving
a 100 MB package never loads it whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from daemon.errors import SchemaTooNewError, StoreError
from daemon.protocol import merge
from daemon.protocol.crypto import new_content_key
from daemon.protocol.merge import Item, Position
from server_stub.epub import SeriesEntry, series_key

DATABASE_NAME = "stub.sqlite3"

MIGRATIONS: tuple[str, ...] = (
    # 1: accounts, devices, the catalog, libraries and the changes feed.
    """
    CREATE TABLE accounts (
        account_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_sha256 TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(account_id),
        name TEXT NOT NULL,
        token_sha256 TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE TABLE books (
        book_id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        authors TEXT NOT NULL,             -- JSON list of strings
        language TEXT NOT NULL,
        version INTEGER NOT NULL,          -- the current version
        epub_sha256 TEXT NOT NULL,         -- of the file the current version came from
        epub_size INTEGER NOT NULL,
        source TEXT NOT NULL               -- that file's name, for operators
    );
    CREATE INDEX books_by_epub ON books(epub_sha256);
    CREATE TABLE book_versions (
        id INTEGER PRIMARY KEY,            -- the rowid blob_open needs
        book_id TEXT NOT NULL REFERENCES books(book_id),
        version INTEGER NOT NULL,
        manifest BLOB NOT NULL,            -- template bytes (protocol.manifest.encode_manifest)
        package BLOB NOT NULL,
        package_sha256 TEXT NOT NULL,
        package_size INTEGER NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (book_id, version)
    );
    -- What each account owns now; device_id '' means every device of the account.
    CREATE TABLE library (
        account_id TEXT NOT NULL REFERENCES accounts(account_id),
        book_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        added_at REAL NOT NULL,
        PRIMARY KEY (account_id, book_id, device_id)
    );
    CREATE INDEX library_by_book ON library(book_id);
    -- The changes feed. book_id is not a foreign key: the feed is a log, and tests seed
    -- libraries of 20,000 books that the catalog does not hold.
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL REFERENCES accounts(account_id),
        device_id TEXT REFERENCES devices(device_id),  -- NULL: every device of the account
        book_id TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('add', 'remove', 'update')),
        reason TEXT NOT NULL,
        version INTEGER NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX changes_by_account ON changes(account_id, seq);
    """,
    # 2: encryption and dictionaries. Packages from version 1 were not encrypted: drop the
    # catalog so the next import repackages it (libraries and accounts stay).
    """
    ALTER TABLE devices ADD COLUMN public_key TEXT NOT NULL DEFAULT '';  -- base64 X25519
    -- One content key per book, kept across versions so unchanged frames keep their bytes.
    -- A real service keeps these in a KMS; the stub keeps them here.
    CREATE TABLE content_keys (
        book_id TEXT PRIMARY KEY,
        key BLOB NOT NULL
    );
    -- Compression dictionaries by content address; the current one packages new versions.
    CREATE TABLE dictionaries (
        sha256 TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        current INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    DELETE FROM book_versions;
    DELETE FROM books;
    """,
    # 3: annotation sync and popular highlights (server_stub/annotations.py).
    """
    -- Each annotation (or an account's reading position in a book: target 'position:<book>')
    -- as the join of every op applied to it (daemon/protocol/merge.py). seq orders the changes
    -- feed; last_device/other_seq let the feed skip what a device itself sent and already holds.
    CREATE TABLE annotation_items (
        account_id TEXT NOT NULL REFERENCES accounts(account_id),
        target TEXT NOT NULL,
        book_id TEXT NOT NULL,
        state TEXT NOT NULL,               -- JSON: merge.item_to_doc / merge.position_to_doc
        seq INTEGER NOT NULL,              -- the feed sequence of its last change
        last_device TEXT NOT NULL,         -- the device whose op made that change
        other_seq INTEGER NOT NULL,        -- the last change made by any other device (0: none)
        PRIMARY KEY (account_id, target)
    );
    CREATE INDEX annotation_items_feed ON annotation_items(account_id, seq);
    -- Every op applied, by its client-made id: an op sent again is acknowledged, not reapplied.
    CREATE TABLE annotation_ops (
        account_id TEXT NOT NULL,
        op_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        target TEXT NOT NULL,
        seq INTEGER NOT NULL,
        applied_at REAL NOT NULL,
        PRIMARY KEY (account_id, op_id)
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters (name, value) VALUES ('annotations', 0), ('popular', 0);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    -- Accounts that let their highlights count towards popular passages (default: no).
    CREATE TABLE sharing (
        account_id TEXT PRIMARY KEY REFERENCES accounts(account_id),
        share INTEGER NOT NULL
    );
    -- One row per live highlight of any account, by passage; counted only while shared.
    CREATE TABLE shared_marks (
        account_id TEXT NOT NULL,
        target TEXT NOT NULL,
        book_id TEXT NOT NULL,
        passage_id TEXT NOT NULL,
        anchor TEXT NOT NULL,              -- JSON: the passage's anchor (book text, no note)
        PRIMARY KEY (account_id, target)
    );
    CREATE INDEX shared_marks_by_passage ON shared_marks(book_id, passage_id);
    -- Popular passages as published: readers is 0 once a passage fell below the threshold,
    -- so devices holding it learn to drop it.
    CREATE TABLE popular_passages (
        book_id TEXT NOT NULL,
        passage_id TEXT NOT NULL,
        readers INTEGER NOT NULL,
        anchor TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (book_id, passage_id)
    );
    CREATE INDEX popular_passages_feed ON popular_passages(seq);
    """,
    # 4: delivery receipts, the promise verdicts and the notices feed (server_stub/receipts.py).
    """
    -- Every receipt judged, by the device's receipt id: one sent again is acknowledged only.
    CREATE TABLE receipts (
        device_id TEXT NOT NULL REFERENCES devices(device_id),
        receipt_id TEXT NOT NULL,
        book_id TEXT NOT NULL,
        ordered_at REAL NOT NULL,
        outcome TEXT NOT NULL,             -- complete | failed
        body TEXT NOT NULL,                -- JSON, as the device sent it (for operators)
        received_at REAL NOT NULL,
        PRIMARY KEY (device_id, receipt_id)
    );
    -- One row per delivery (a device, a book, the order that started the clock): its verdict.
    -- A broken promise stays broken when a later receipt (the completion) arrives.
    CREATE TABLE promises (
        device_id TEXT NOT NULL REFERENCES devices(device_id),
        book_id TEXT NOT NULL,
        ordered_at REAL NOT NULL,
        account_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        link_class TEXT NOT NULL,          -- the device's profile name
        verdict TEXT NOT NULL CHECK (verdict IN ('kept', 'broken', 'pending', 'not_promised')),
        first_chapter_s REAL,              -- seconds from the order, service clock
        complete_s REAL,
        first_chapter_bound_s REAL NOT NULL,
        complete_bound_s REAL NOT NULL,
        retries INTEGER NOT NULL,
        why TEXT,                          -- a broken promise: which bound, by how much
        updated_at REAL NOT NULL,
        PRIMARY KEY (device_id, book_id, ordered_at)
    );
    CREATE INDEX promises_by_verdict ON promises(verdict, updated_at);
    -- Notices to one device (an apology for a broken promise), as a feed it pulls by seq.
    CREATE TABLE notices (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL REFERENCES devices(device_id),
        kind TEXT NOT NULL,
        book_id TEXT,
        ordered_at REAL,
        message TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX notices_by_device ON notices(device_id, seq);
    -- One apology per delivery, however many of its receipts find the promise broken.
    CREATE UNIQUE INDEX notices_one_apology ON notices(device_id, book_id, ordered_at)
        WHERE kind = 'apology';
    """,
    # 5: series in the catalog, and the service's hints in libraries (docs/PLANNING.md).
    """
    -- Each series a book belongs to, as its package document says (server_stub/epub.py).
    CREATE TABLE book_series (
        book_id TEXT NOT NULL REFERENCES books(book_id),
        series_key TEXT NOT NULL,          -- the name casefolded, spacing collapsed
        name TEXT NOT NULL,                -- as the publisher wrote it
        position REAL,                     -- 1 for the first book; NULL when none was given
        PRIMARY KEY (book_id, series_key)
    );
    CREATE INDEX book_series_by_position ON book_series(series_key, position);
    -- 0 for books imported before this migration: the next import reads their series.
    ALTER TABLE books ADD COLUMN series_read INTEGER NOT NULL DEFAULT 0;
    -- NULL: the account owns the book. Else the hint that put it in the library (sample,
    -- wishlist, series_next): suggested, not bought; a later order turns it into a purchase.
    ALTER TABLE library ADD COLUMN hint TEXT;
    """,
)

EVERY_DEVICE = ""  # library.device_id for a book on all of an account's devices
ORDER_REASONS = frozenset({"bought", "sent"})  # the account owns the book
# The service suggests the book; the device fetches it when nothing more urgent waits.
HINT_REASONS = frozenset({"sample", "wishlist", "series_next"})


def token_hash(token: str) -> str:
    """Tokens are stored only as this hash."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    account_id: str
    name: str
    public_key: str  # base64 X25519: the key content keys are wrapped for


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
    series: tuple[SeriesEntry, ...] = ()


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
    series: tuple[SeriesEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class PackageInfo:
    rowid: int
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    account_id: str
    device_id: str | None  # None: every device of the account
    book_id: str
    action: str  # add | remove | update
    reason: str
    version: int
    at: float
    package_size: int | None = None  # of that version, when the catalog has it

    def to_doc(self) -> dict[str, Any]:
        """The feed's JSON shape (PROTOCOL.md "Library changes feed")."""
        doc: dict[str, Any] = {
            "seq": self.seq,
            "book_id": self.book_id,
            "action": self.action,
            "reason": self.reason,
            "version": self.version,
            "at": self.at,
        }
        if self.package_size is not None:
            doc["package_size"] = self.package_size  # so a device plans its space up front
        return doc


# Is the book in the library for every device or for the given scope?
_HELD = "SELECT 1 FROM library WHERE account_id = ? AND book_id = ? AND device_id IN (?, ?)"
# A book's primary language subtag: 'en' for en-GB (BCP 47, case-insensitive).
_PRIMARY_LANGUAGE = "lower(substr({0}.language, 1, instr({0}.language || '-', '-') - 1))"
_CHANGE_COLUMNS = "seq, account_id, device_id, book_id, action, reason, version, at"
_BOOK_COLUMNS = (
    "b.book_id, b.title, b.authors, b.language, b.version, b.epub_sha256, b.epub_size,"
    " b.source, v.package_size, (SELECT json_group_array(json_array(s.name, s.position))"
    "   FROM book_series s WHERE s.book_id = b.book_id)"
)


def _change(row: Any) -> Change:
    seq, account_id, device_id, book_id, action, reason, version, at = row
    return Change(seq, account_id, device_id, book_id, action, reason, version, at)


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
        tuple(SeriesEntry(name, position) for name, position in sorted(json.loads(series))),
    )


class Store:
    def __init__(self, connection: apsw.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, data_dir: Path) -> Store:
        """Open (creating it owner-only if needed) and migrate DATA/stub.sqlite3."""
        path = data_dir / DATABASE_NAME
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            old_umask = os.umask(0o077)  # the database holds token hashes: owner-only, -wal too
            try:
                db = apsw.Connection(str(path))
            finally:
                os.umask(old_umask)
            db.set_busy_timeout(5000)
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA journal_mode = WAL")
            # NORMAL survives a crash of the stub; a development service needs no more.
            db.execute("PRAGMA synchronous = NORMAL")
        except (apsw.Error, OSError) as e:
            raise StoreError(f"cannot open the stub database {path}: {e}") from e
        store = cls(db, path)
        store._migrate()
        return store

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[apsw.Connection]:
        try:
            with self._db:
                yield self._db
        except apsw.FullError as e:
            raise StoreError(f"the disk holding {self.path} is full: {e}") from e

    def _query(self, sql: str, bindings: Any = ()) -> list[Any]:
        return list(self._db.execute(sql, bindings))

    def _one(self, sql: str, bindings: Any = ()) -> Any:
        rows = self._query(sql, bindings)
        return rows[0] if rows else None

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        row = self._one("SELECT max(version) FROM schema_version")
        return int(row[0] or 0)

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = self.schema_version()
        if current > len(MIGRATIONS):
            raise SchemaTooNewError(
                f"{self.path} has stub schema version {current}, this stub knows up to "
                f"{len(MIGRATIONS)}; use a newer stub or another --data directory"
            )
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version > current:
                with self._transaction() as db:
                    db.execute(sql)
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    # -- accounts and devices -------------------------------------------------------------------

    def create_account(self, name: str, at: float) -> tuple[str, str]:
        """A new account; returns (account_id, account_token). Only the token's hash is kept."""
        account_id = "acct_" + secrets.token_hex(8)
        token = secrets.token_urlsafe(32)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO accounts (account_id, name, token_sha256, created_at)"
                " VALUES (?, ?, ?, ?)",
                (account_id, name, token_hash(token), at),
            )
        return account_id, token

    def account_for_token(self, token: str) -> str | None:
        row = self._one(
            "SELECT account_id FROM accounts WHERE token_sha256 = ?", (token_hash(token),)
        )
        return str(row[0]) if row else None

    def create_device(
        self, account_id: str, name: str, public_key: str, at: float
    ) -> tuple[str, str]:
        """A new device of `account_id`; returns (device_id, device_token)."""
        device_id = "dev_" + secrets.token_hex(8)
        token = secrets.token_urlsafe(32)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO devices (device_id, account_id, name, token_sha256, created_at,"
                " public_key) VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, account_id, name, token_hash(token), at, public_key),
            )
        return device_id, token

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

    def device_for_token(self, token: str) -> Device | None:
        row = self._one(
            "SELECT device_id, account_id, name, public_key FROM devices WHERE token_sha256 = ?",
            (token_hash(token),),
        )
        return Device(*row) if row else None

    def device(self, device_id: str) -> Device | None:
        row = self._one(
            "SELECT device_id, account_id, name, public_key FROM devices WHERE device_id = ?",
            (device_id,),
        )
        return Device(*row) if row else None

    # -- the catalog ----------------------------------------------------------------------------

    def book(self, book_id: str) -> Book | None:
        row = self._one(
            f"SELECT {_BOOK_COLUMNS} FROM books b JOIN book_versions v"
            " ON v.book_id = b.book_id AND v.version = b.version WHERE b.book_id = ?",
            (book_id,),
        )
        return _book(row) if row else None

    def catalog(self) -> list[Book]:
        rows = self._query(
            f"SELECT {_BOOK_COLUMNS} FROM books b JOIN book_versions v"
            " ON v.book_id = b.book_id AND v.version = b.version ORDER BY b.title, b.book_id"
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
                    new.package,
                    new.package_sha256,
                    len(new.package),
                    at,
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
        series: tuple[SeriesEntry, ...],
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

    def set_series(self, book_id: str, series: tuple[SeriesEntry, ...]) -> None:
        with self._transaction():
            self._put_series(book_id, series)

    def _put_series(self, book_id: str, series: tuple[SeriesEntry, ...]) -> None:
        self._db.execute("DELETE FROM book_series WHERE book_id = ?", (book_id,))
        self._db.executemany(
            "INSERT OR IGNORE INTO book_series (book_id, series_key, name, position)"
            " VALUES (?, ?, ?, ?)",
            ((book_id, series_key(e.name), e.name, e.position) for e in series),
        )
        self._db.execute("UPDATE books SET series_read = 1 WHERE book_id = ?", (book_id,))

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
        """`length` bytes of a package from `offset`, read through incremental blob I/O.

        The blob handle is opened per call, so no read transaction stays open while a
        response waits on a slow client (or a paused fault)."""
        blob = self._db.blob_open("main", "book_versions", "package", rowid, False)
        try:
            blob.seek(offset)
            return blob.read(length)
        finally:
            blob.close()

    # -- libraries and the changes feed ---------------------------------------------------------

    def _append_change(
        self,
        account_id: str,
        device_id: str | None,
        book_id: str,
        action: str,
        reason: str,
        version: int,
        at: float,
    ) -> Change:
        self._db.execute(
            "INSERT INTO changes (account_id, device_id, book_id, action, reason, version, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (account_id, device_id, book_id, action, reason, version, at),
        )
        seq = self._db.last_insert_rowid()
        return Change(seq, account_id, device_id, book_id, action, reason, version, at)

    def _current_version(self, book_id: str) -> int:
        row = self._one("SELECT version FROM books WHERE book_id = ?", (book_id,))
        return int(row[0]) if row else 1

    def add_to_library(
        self, account_id: str, book_id: str, device_id: str | None, reason: str, at: float
    ) -> list[Change]:
        """Add a book for every device (device_id None) or one device, in one transaction.

        An order (ORDER_REASONS) of a book the account holds only as a hint makes it a
        purchase; an order of book n of a series also hints book n+1 (`series_next`). A hint
        (HINT_REASONS) adds a book the account does not hold yet. Returns the changes made,
        the order's first; none if the book was there already (owned, or hinted for a hint)."""
        scope = device_id or EVERY_DEVICE
        with self._transaction() as db:
            held = self._query(
                "SELECT hint FROM library WHERE account_id = ? AND book_id = ?"
                " AND device_id IN (?, ?)",
                (account_id, book_id, EVERY_DEVICE, scope),
            )
            owned = any(hint is None for (hint,) in held)
            if owned or (held and reason in HINT_REASONS):
                return []
            hint = reason if reason in HINT_REASONS else None
            if hint is None:
                # Owned now: a hint in this scope (or, for every device, in any) is superseded.
                db.execute(
                    "DELETE FROM library WHERE account_id = ? AND book_id = ?"
                    " AND hint IS NOT NULL AND (? = '' OR device_id = ?)",
                    (account_id, book_id, scope, scope),
                )
            db.execute(
                "INSERT INTO library (account_id, book_id, device_id, added_at, hint)"
                " VALUES (?, ?, ?, ?, ?)",
                (account_id, book_id, scope, at, hint),
            )
            added = [
                self._append_change(
                    account_id,
                    device_id,
                    book_id,
                    "add",
                    reason,
                    self._current_version(book_id),
                    at,
                )
            ]
            following = self._next_in_series(book_id) if hint is None else None
            if following is not None and not self._one(
                _HELD, (account_id, following, EVERY_DEVICE, scope)
            ):
                db.execute(
                    "INSERT INTO library (account_id, book_id, device_id, added_at, hint)"
                    " VALUES (?, ?, ?, ?, 'series_next')",
                    (account_id, following, scope, at),
                )
                added.append(
                    self._append_change(
                        account_id,
                        device_id,
                        following,
                        "add",
                        "series_next",
                        self._current_version(following),
                        at,
                    )
                )
            return added

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

    def remove_from_library(
        self, account_id: str, book_id: str, reason: str, at: float
    ) -> Change | None:
        """Remove a book from every device of the account; None if it was not there."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM library WHERE account_id = ? AND book_id = ?", (account_id, book_id)
            )
            if not db.changes():
                return None
            return self._append_change(
                account_id, None, book_id, "remove", reason, self._current_version(book_id), at
            )

    def seed_library(
        self, account_id: str, book_ids: Iterable[str], at: float, reason: str = "seeded"
    ) -> int:
        """Add many books to an account's library (all devices) in one transaction: for tests
        and demos of large libraries. The books need not be in the catalog. Returns the last seq."""
        with self._transaction() as db:
            rows = [(account_id, b, EVERY_DEVICE, at) for b in book_ids]
            db.executemany(
                "INSERT OR IGNORE INTO library (account_id, book_id, device_id, added_at)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )
            db.executemany(
                "INSERT INTO changes (account_id, device_id, book_id, action, reason, version, at)"
                " SELECT ?, NULL, ?, 'add', ?, coalesce(("
                "   SELECT version FROM books WHERE book_id = ?), 1), ?",
                ((account_id, b, reason, b, at) for _, b, _, _ in rows),
            )
            row = self._one("SELECT max(seq) FROM changes WHERE account_id = ?", (account_id,))
        return int(row[0] or 0)

    def in_library(self, account_id: str, device_id: str, book_id: str) -> bool:
        return bool(
            self._one(
                _HELD,
                (account_id, book_id, EVERY_DEVICE, device_id),
            )
        )

    def changes(self, account_id: str, device_id: str, cursor: int, limit: int) -> list[Change]:
        """The device's changes after `cursor`, oldest first (an index range scan)."""
        rows = self._query(
            f"SELECT {_CHANGE_COLUMNS}, (SELECT v.package_size FROM book_versions v"
            "   WHERE v.book_id = changes.book_id AND v.version = changes.version)"
            " FROM changes WHERE account_id = ? AND seq > ?"
            " AND (device_id IS NULL OR device_id = ?) ORDER BY seq LIMIT ?",
            (account_id, cursor, device_id, limit),
        )
        return [dataclasses.replace(_change(r[:-1]), package_size=r[-1]) for r in rows]

    def latest_seq(self, account_id: str, device_id: str) -> int:
        """The newest change the device can see, 0 if none."""
        row = self._one(
            "SELECT seq FROM changes WHERE account_id = ? AND (device_id IS NULL OR device_id = ?)"
            " ORDER BY seq DESC LIMIT 1",
            (account_id, device_id),
        )
        return int(row[0]) if row else 0

    # -- annotations (server_stub/annotations.py) -----------------------------------------------

    def _next_seq(self, name: str) -> int:
        row = self._one(
            "UPDATE counters SET value = value + 1 WHERE name = ? RETURNING value", (name,)
        )
        return int(row[0])

    def apply_annotation_ops(
        self,
        account_id: str,
        device_id: str,
        ops: list[AnnotationOp],
        at: float,
        passage_of: Callable[[Item], tuple[str, str] | None],
    ) -> AppliedOps:
        """Apply a batch of ops in one transaction, each op_id once per account ever.

        An op already applied is acknowledged again and changes nothing; an op for an
        annotation the account holds for another book is refused. `passage_of` says which
        popular passage (id, anchor JSON) a live highlight counts towards, if any."""
        result = AppliedOps()
        with self._transaction() as db:
            threshold = self.popular_threshold()
            for op in ops:
                if self._one(
                    "SELECT 1 FROM annotation_ops WHERE account_id = ? AND op_id = ?",
                    (account_id, op.op_id),
                ):
                    result.duplicates.append(op.op_id)
                    continue
                row = self._one(
                    "SELECT book_id, state, seq, last_device, other_seq FROM annotation_items"
                    " WHERE account_id = ? AND target = ?",
                    (account_id, op.target),
                )
                if row is not None and row[0] != op.delta.book_id:
                    result.rejected[op.op_id] = f"{op.target} belongs to another book"
                    continue
                merged = _join_state(op.delta, None if row is None else json.loads(row[1]))
                seq = self._next_seq("annotations")
                # The feed skips, for device D, an item whose changes since D's cursor are all
                # D's own: other_seq is the last change made by anyone but the last device.
                other_seq = 0 if row is None else (row[4] if row[3] == device_id else row[2])
                db.execute(
                    "INSERT INTO annotation_items (account_id, target, book_id, state, seq,"
                    " last_device, other_seq) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (account_id, target) DO UPDATE SET state = excluded.state,"
                    " seq = excluded.seq, last_device = excluded.last_device,"
                    " other_seq = excluded.other_seq",
                    (
                        account_id,
                        op.target,
                        op.delta.book_id,
                        json.dumps(_state_doc(merged), ensure_ascii=False),
                        seq,
                        device_id,
                        other_seq,
                    ),
                )
                db.execute(
                    "INSERT INTO annotation_ops (account_id, op_id, device_id, target, seq,"
                    " applied_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (account_id, op.op_id, device_id, op.target, seq, at),
                )
                if isinstance(merged, Item):
                    self._mark(account_id, op.target, merged.book_id, passage_of(merged), threshold)
                result.applied.append(op.op_id)
                result.seq = seq
        return result

    def annotation_changes(
        self, account_id: str, device_id: str, cursor: int, limit: int, max_bytes: int
    ) -> AnnotationChanges:
        """The account's annotation states changed after `cursor`, oldest change first, leaving
        out those whose every change since `cursor` came from `device_id` itself."""
        rows = self._query(
            "SELECT seq, target, state FROM annotation_items WHERE account_id = ? AND seq > ?"
            " AND NOT (last_device = ? AND other_seq <= ?) ORDER BY seq LIMIT ?",
            (account_id, cursor, device_id, cursor, limit + 1),
        )
        page: list[tuple[int, str, str]] = []
        size = 0
        for row in rows[:limit]:
            size += len(row[2])
            if page and size > max_bytes:
                break
            page.append((int(row[0]), str(row[1]), str(row[2])))
        if len(page) < len(rows):
            return AnnotationChanges(page, page[-1][0], True)
        # Everything after the cursor was read: skipped rows included, so move past them all.
        last = self._one(
            "SELECT max(seq) FROM annotation_items WHERE account_id = ?", (account_id,)
        )
        return AnnotationChanges(page, max(cursor, int(last[0] or 0)), False)

    def annotation_op_count(self, account_id: str, device_id: str | None = None) -> int:
        """Ops applied for an account (or one of its devices): each op_id counts once."""
        row = self._one(
            "SELECT count(*) FROM annotation_ops WHERE account_id = ?"
            " AND (? IS NULL OR device_id = ?)",
            (account_id, device_id, device_id),
        )
        return int(row[0])

    def annotation_state(self, account_id: str, target: str) -> dict[str, Any] | None:
        row = self._one(
            "SELECT state FROM annotation_items WHERE account_id = ? AND target = ?",
            (account_id, target),
        )
        return None if row is None else dict(json.loads(row[0]))

    # -- popular highlights ---------------------------------------------------------------------

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

    def popular_threshold(self) -> int:
        row = self._one("SELECT value FROM settings WHERE key = 'popular_threshold'")
        return int(row[0]) if row else POPULAR_THRESHOLD

    def set_popular_threshold(self, readers: int) -> None:
        """Publish passages highlighted by at least `readers` distinct sharing accounts."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO settings (key, value) VALUES ('popular_threshold', ?)",
                (str(readers),),
            )
            for book_id, passage_id in self._query(
                "SELECT book_id, passage_id FROM shared_marks UNION"
                " SELECT book_id, passage_id FROM popular_passages"
            ):
                self._recount(book_id, passage_id, readers)

    def set_sharing(self, account_id: str, share: bool) -> None:
        """Let (or stop) an account's highlights count towards popular passages."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sharing (account_id, share) VALUES (?, ?)",
                (account_id, int(share)),
            )
            threshold = self.popular_threshold()
            for book_id, passage_id in self._query(
                "SELECT DISTINCT book_id, passage_id FROM shared_marks WHERE account_id = ?",
                (account_id,),
            ):
                self._recount(book_id, passage_id, threshold)

    def _mark(
        self,
        account_id: str,
        target: str,
        book_id: str,
        passage: tuple[str, str] | None,
        threshold: int,
    ) -> None:
        old = self._one(
            "SELECT passage_id FROM shared_marks WHERE account_id = ? AND target = ?",
            (account_id, target),
        )
        if (old[0] if old else None) == (passage[0] if passage else None):
            return
        self._db.execute(
            "DELETE FROM shared_marks WHERE account_id = ? AND target = ?", (account_id, target)
        )
        if passage is not None:
            self._db.execute(
                "INSERT INTO shared_marks (account_id, target, book_id, passage_id, anchor)"
                " VALUES (?, ?, ?, ?, ?)",
                (account_id, target, book_id, passage[0], passage[1]),
            )
            self._recount(book_id, passage[0], threshold)
        if old is not None:
            self._recount(book_id, old[0], threshold)

    def _recount(self, book_id: str, passage_id: str, threshold: int) -> None:
        """Publish a passage's count of distinct sharing readers, or 0 below the threshold;
        the feed sequence moves only when what is published changes."""
        readers = int(
            self._one(
                "SELECT count(DISTINCT m.account_id) FROM shared_marks m"
                " JOIN sharing s ON s.account_id = m.account_id AND s.share"
                " WHERE m.book_id = ? AND m.passage_id = ?",
                (book_id, passage_id),
            )[0]
        )
        published = readers if readers >= threshold else 0
        row = self._one(
            "SELECT readers, anchor FROM popular_passages WHERE book_id = ? AND passage_id = ?",
            (book_id, passage_id),
        )
        if (row[0] if row else 0) == published:
            return
        first = self._one(
            "SELECT anchor FROM shared_marks WHERE book_id = ? AND passage_id = ?"
            " ORDER BY rowid LIMIT 1",
            (book_id, passage_id),
        )
        anchor = first[0] if first else row[1]
        self._db.execute(
            "INSERT OR REPLACE INTO popular_passages (book_id, passage_id, readers, anchor, seq)"
            " VALUES (?, ?, ?, ?, ?)",
            (book_id, passage_id, published, anchor, self._next_seq("popular")),
        )

    def popular_changes(
        self, account_id: str, device_id: str, cursor: int, limit: int, book_id: str | None
    ) -> PopularChanges:
        """Published passage changes after `cursor` for one book, or for every book in the
        device's library, oldest first."""
        if book_id is not None:
            rows = self._query(
                "SELECT seq, book_id, passage_id, readers, anchor FROM popular_passages"
                " WHERE book_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (book_id, cursor, limit + 1),
            )
        else:
            rows = self._query(
                "SELECT p.seq, p.book_id, p.passage_id, p.readers, p.anchor"
                " FROM popular_passages p WHERE p.seq > ? AND p.book_id IN (SELECT l.book_id"
                "   FROM library l WHERE l.account_id = ? AND l.device_id IN (?, ?))"
                " ORDER BY p.seq LIMIT ?",
                (cursor, account_id, EVERY_DEVICE, device_id, limit + 1),
            )
        page = [(int(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4])) for r in rows[:limit]]
        if len(rows) > limit:
            return PopularChanges(page, page[-1][0], True)
        last = self._one("SELECT value FROM counters WHERE name = 'popular'")
        return PopularChanges(page, max(cursor, int(last[0])), False)

    # -- delivery receipts, promises, notices (server_stub/receipts.py) -------------------------

    def order_reason(self, account_id: str, device_id: str, book_id: str, at: float) -> str | None:
        """The reason of the change that put `book_id` on the device at `at` (a receipt's
        ordered_at), or None if the service made no such change for this device."""
        row = self._one(
            "SELECT reason FROM changes WHERE account_id = ? AND book_id = ? AND at = ?"
            " AND action IN ('add', 'update') AND (device_id IS NULL OR device_id = ?)"
            " ORDER BY seq DESC LIMIT 1",
            (account_id, book_id, at, device_id),
        )
        return None if row is None else str(row[0])

    def receipt_known(self, device_id: str, receipt_id: str) -> bool:
        return bool(
            self._one(
                "SELECT 1 FROM receipts WHERE device_id = ? AND receipt_id = ?",
                (device_id, receipt_id),
            )
        )

    def record_receipt(self, device: Device, r: JudgedReceipt, at: float) -> int | None:
        """Store a judged receipt and its delivery's verdict, and the apology if it has one and
        the delivery has none yet, in one transaction; returns the new notice's seq, if any."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO receipts (device_id, receipt_id, book_id, ordered_at, outcome, body,"
                " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device.device_id, r.receipt_id, r.book_id, r.ordered_at, r.outcome, r.body, at),
            )
            db.execute(
                "INSERT INTO promises (device_id, book_id, ordered_at, account_id, reason,"
                " link_class, verdict, first_chapter_s, complete_s, first_chapter_bound_s,"
                " complete_bound_s, retries, why, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (device_id, book_id, ordered_at) DO UPDATE SET"
                " verdict = CASE WHEN verdict = 'broken' THEN 'broken' ELSE excluded.verdict END,"
                " why = CASE WHEN verdict = 'broken' THEN why ELSE excluded.why END,"
                " first_chapter_s = coalesce(excluded.first_chapter_s, first_chapter_s),"
                " complete_s = coalesce(excluded.complete_s, complete_s),"
                " first_chapter_bound_s = excluded.first_chapter_bound_s,"
                " complete_bound_s = excluded.complete_bound_s,"
                " retries = max(retries, excluded.retries), updated_at = excluded.updated_at",
                (
                    device.device_id,
                    r.book_id,
                    r.ordered_at,
                    device.account_id,
                    r.reason,
                    r.link_class,
                    r.verdict,
                    r.first_chapter_s,
                    r.complete_s,
                    r.first_chapter_bound_s,
                    r.complete_bound_s,
                    r.retries,
                    r.why,
                    at,
                ),
            )
            if r.apology is None:
                return None
            row = self._one(
                "INSERT INTO notices (device_id, kind, book_id, ordered_at, message, at)"
                " VALUES (?, 'apology', ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING seq",
                (device.device_id, r.book_id, r.ordered_at, r.apology, at),
            )
            return None if row is None else int(row[0])

    def notices(
        self, device_id: str, cursor: int, limit: int
    ) -> list[tuple[int, str, str | None, str, float]]:
        """The device's notices after `cursor`, oldest first: (seq, kind, book_id, message, at)."""
        rows = self._query(
            "SELECT seq, kind, book_id, message, at FROM notices WHERE device_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (device_id, cursor, limit),
        )
        return [(int(s), str(k), b, str(m), float(a)) for s, k, b, m, a in rows]

    def promise_report(self, recent: int) -> dict[str, Any]:
        """Promises kept and broken: totals, by link class, and the latest broken ones."""
        verdicts = ("kept", "broken", "pending", "not_promised")
        totals = dict.fromkeys(verdicts, 0)
        classes: dict[str, dict[str, int]] = {}
        for link_class, verdict, n in self._query(
            "SELECT link_class, verdict, count(*) FROM promises GROUP BY link_class, verdict"
        ):
            totals[verdict] += n
            classes.setdefault(link_class, dict.fromkeys(verdicts, 0))[verdict] = n
        broken = self._query(
            "SELECT p.device_id, p.book_id, p.ordered_at, p.link_class, p.first_chapter_s,"
            " p.complete_s, p.first_chapter_bound_s, p.complete_bound_s, p.retries, p.why,"
            " (SELECT message FROM notices n WHERE n.device_id = p.device_id"
            "   AND n.book_id = p.book_id AND n.ordered_at = p.ordered_at AND n.kind = 'apology')"
            " FROM promises p WHERE p.verdict = 'broken' ORDER BY p.updated_at DESC LIMIT ?",
            (recent,),
        )
        keys = (
            "device_id",
            "book_id",
            "ordered_at",
            "link_class",
            "first_chapter_s",
            "complete_s",
            "first_chapter_bound_s",
            "complete_bound_s",
            "retries",
            "why",
            "apology",
        )
        return {
            "deliveries": sum(totals.values()),
            **totals,
            "by_link_class": [{"link_class": c, **v} for c, v in sorted(classes.items())],
            "broken_recent": [dict(zip(keys, row, strict=True)) for row in broken],
        }


POPULAR_THRESHOLD = 3  # distinct readers before a passage is shown (settings may override)


@dataclass(frozen=True, slots=True)
class AnnotationOp:
    """One op of a push batch, validated: the target row and the delta to join into it."""

    op_id: str
    target: str  # the annotation id, or 'position:' + book_id
    delta: Item | Position


@dataclass(slots=True)
class AppliedOps:
    applied: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # applied before: acknowledged again
    rejected: dict[str, str] = field(default_factory=dict)  # op_id -> reason
    seq: int = 0  # the feed sequence of the last change made, 0 if none


@dataclass(frozen=True, slots=True)
class AnnotationChanges:
    entries: list[tuple[int, str, str]]  # (seq, target, state JSON)
    cursor: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class PopularChanges:
    entries: list[tuple[int, str, str, int, str]]  # (seq, book_id, passage_id, readers, anchor)
    cursor: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class JudgedReceipt:
    """A delivery receipt with the service's verdict (server_stub/receipts.py `judge`)."""

    receipt_id: str
    book_id: str
    ordered_at: float
    outcome: str  # complete | failed
    reason: str
    link_class: str
    verdict: str  # kept | broken | pending | not_promised
    first_chapter_s: float | None
    complete_s: float | None
    first_chapter_bound_s: float
    complete_bound_s: float
    retries: int
    why: str | None
    apology: str | None  # the notice for the reader when the promise was broken
    body: str  # JSON, as sent


def _join_state(delta: Item | Position, stored: dict[str, Any] | None) -> Item | Position:
    if stored is None:
        return delta
    if isinstance(delta, Item):
        return merge.join_item(merge.item_from_doc(stored), delta)
    return merge.join_position(merge.position_from_doc(stored), delta)


def _state_doc(state: Item | Position) -> dict[str, Any]:
    if isinstance(state, Item):
        return merge.item_to_doc(state)
    return merge.position_to_doc(state)
