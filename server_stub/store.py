"""The stub's store: the only code in server_stub that speaks SQL. One SQLite file (WAL), apsw.

Schema changes are the numbered entries of MIGRATIONS, each applied once inside one transaction
and recorded in the `schema_version` table; a database written by a newer stub is refused.
Every method is one short transaction and never awaits, so handlers on the event loop cannot
interleave inside one. Packages are read with incremental blob I/O, a slice at a time, so serving
a 100 MB package never loads it whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from daemon.crypto import new_content_key
from daemon.errors import SchemaTooNewError, StoreError

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
        manifest BLOB NOT NULL,            -- template bytes (daemon.manifest.encode_manifest)
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
)

EVERY_DEVICE = ""  # library.device_id for a book on all of an account's devices


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

    def to_doc(self) -> dict[str, Any]:
        """The feed's JSON shape (PROTOCOL.md "Library changes feed")."""
        return {
            "seq": self.seq,
            "book_id": self.book_id,
            "action": self.action,
            "reason": self.reason,
            "version": self.version,
            "at": self.at,
        }


# Is the book in the library for every device or for the given scope?
_HELD = "SELECT 1 FROM library WHERE account_id = ? AND book_id = ? AND device_id IN (?, ?)"
_CHANGE_COLUMNS = "seq, account_id, device_id, book_id, action, reason, version, at"
_BOOK_COLUMNS = (
    "b.book_id, b.title, b.authors, b.language, b.version, b.epub_sha256, b.epub_size,"
    " b.source, v.package_size"
)


def _change(row: Any) -> Change:
    seq, account_id, device_id, book_id, action, reason, version, at = row
    return Change(seq, account_id, device_id, book_id, action, reason, version, at)


def _book(row: Any) -> Book:
    book_id, title, authors, language, version, epub_sha, epub_size, source, package_size = row
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

    def set_epub_source(self, book_id: str, epub_sha256: str, epub_size: int, source: str) -> None:
        """Record a changed file whose package is identical, so the next start skips it."""
        with self._transaction() as db:
            db.execute(
                "UPDATE books SET epub_sha256 = ?, epub_size = ?, source = ? WHERE book_id = ?",
                (epub_sha256, epub_size, source, book_id),
            )

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
    ) -> Change | None:
        """Add a book for every device (device_id None) or one device; None if already there."""
        scope = device_id or EVERY_DEVICE
        with self._transaction() as db:
            held = self._one(
                _HELD,
                (account_id, book_id, EVERY_DEVICE, scope),
            )
            if held:
                return None
            db.execute(
                "INSERT INTO library (account_id, book_id, device_id, added_at)"
                " VALUES (?, ?, ?, ?)",
                (account_id, book_id, scope, at),
            )
            return self._append_change(
                account_id, device_id, book_id, "add", reason, self._current_version(book_id), at
            )

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
            f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE account_id = ? AND seq > ?"
            " AND (device_id IS NULL OR device_id = ?) ORDER BY seq LIMIT ?",
            (account_id, cursor, device_id, limit),
        )
        return [_change(r) for r in rows]

    def latest_seq(self, account_id: str, device_id: str) -> int:
        """The newest change the device can see, 0 if none."""
        row = self._one(
            "SELECT seq FROM changes WHERE account_id = ? AND (device_id IS NULL OR device_id = ?)"
            " ORDER BY seq DESC LIMIT 1",
            (account_id, device_id),
        )
        return int(row[0]) if row else 0
