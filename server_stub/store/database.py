"""The stub's database: one SQLite file (WAL) through apsw, its connection, its transactions and
its migrations, the numbered files of server_stub/sql/, each applied once inside one transaction
and recorded in the `schema_version` table; a database written by a newer stub is refused.

Each domain of the store (accounts, catalog, library, annotations, receipts) is a class over this
one connection; every method is one short transaction and never awaits, so handlers on the event
loop cannot interleave inside one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources as package_files
from pathlib import Path
from typing import Any, Self

import apsw

from daemon.errors import SchemaTooNewError, StoreError

DATABASE_NAME = "stub.sqlite3"


def _migrations() -> list[tuple[int, str]]:
    found = []
    for entry in package_files.files("server_stub.sql").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


class Database:
    def __init__(self, connection: apsw.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, data_dir: Path) -> Self:
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

    def schema_version(self) -> int:
        row = self._one("SELECT max(version) FROM schema_version")
        return int(row[0] or 0)

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = self.schema_version()
        migrations = _migrations()
        latest = migrations[-1][0]
        if current > latest:
            raise SchemaTooNewError(
                f"{self.path} has stub schema version {current}, this stub knows up to "
                f"{latest}; use a newer stub or another --data directory"
            )
        for version, sql in migrations:
            if version > current:
                with self._transaction() as db:
                    db.execute(sql)
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def _next_seq(self, name: str) -> int:
        row = self._one(
            "UPDATE counters SET value = value + 1 WHERE name = ? RETURNING value", (name,)
        )
        return int(row[0])
