"""The base of every gateway to the device's database: a domain's SQL over a shared apsw
connection, run through private helpers that turn every apsw error into the project's errors
(translate), and map rows by the names the SQL gives their columns."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import apsw

from daemon.errors import DatabaseDamagedError, DiskFullError, StoreError
from daemon.store.disk import DiskWatch


def translate(e: apsw.Error, watch: DiskWatch | None = None) -> StoreError:
    """SQLite's error as ours, for every store (this one, the notes'): a full disk, a damaged
    page, or any other failure (an I/O error, FAULTS.md #6), after which the transaction was
    rolled back and nothing of it stays. `watch` hears of the first two, for status."""
    # On a full disk SQLite may roll back by itself; apsw's own rollback then fails with
    # "no transaction is active" and the FullError is only its cause.
    full = next((x for x in (e, e.__cause__, e.__context__) if isinstance(x, apsw.FullError)), None)
    typed: StoreError
    if full is not None:
        typed = DiskFullError(f"the disk is full, nothing was saved: {full}")
    elif isinstance(e, apsw.CorruptError | apsw.NotADBError):
        typed = DatabaseDamagedError(f"the database file is damaged: {type(e).__name__}: {e}")
    else:
        return StoreError(f"the database failed: {type(e).__name__}: {e}")
    if watch is not None:
        watch.met(typed)
    return typed


class Gateway:
    """One domain's SQL over a connection it shares with the other gateways: its helpers are
    private, so no SQL crosses from one domain to another but through a gateway's methods.

    A row of more than one column is read by the names the SQL gives its columns (_rows, _row):
    one read by position breaks silently when a column is added in the middle. _one and _query
    give tuples, for a single column (a count, a value, a list of ids)."""

    _db: apsw.Connection
    _watch: DiskWatch | None  # told of every full disk and damaged page met

    def __init__(self, over: Gateway) -> None:
        """A gateway over the connection (and the watch) that `over` holds."""
        self._db = over._db
        self._watch = over._watch

    @contextmanager
    def _transaction(self) -> Iterator[apsw.Connection]:
        try:
            with self._db:
                yield self._db
        except apsw.Error as e:
            raise self._typed(e) from e

    @contextmanager
    def _durable_transaction(self) -> Iterator[apsw.Connection]:
        """A transaction on flash when it returns: this connection's NORMAL lets a power cut
        take its last commits (FAULTS.md #5), fine for a frame fetched again, not for the
        trusted version, which must never go back (a replayed older manifest would then be
        accepted). FULL syncs the WAL at this commit, and with it every commit before."""
        self._db.execute("PRAGMA synchronous = FULL")
        try:
            with self._transaction() as db:
                yield db
        finally:
            self._db.execute("PRAGMA synchronous = NORMAL")

    def _query(self, sql: str, bindings: Any = ()) -> list[Any]:
        try:
            return list(self._db.execute(sql, bindings))
        except apsw.Error as e:
            raise self._typed(e) from e

    def _typed(self, e: apsw.Error) -> StoreError:
        return translate(e, self._watch)

    def _rows(self, sql: str, bindings: Any = ()) -> list[dict[str, Any]]:
        """Rows as {column: value}, by the names the SQL gives its columns: a row read by
        position breaks silently when a column is added in the middle."""
        names: list[str] = []

        def by_name(cursor: apsw.Cursor, row: apsw.SQLiteValues) -> dict[str, Any]:
            if not names:
                names.extend(d[0] for d in cursor.get_description())
            return dict(zip(names, row, strict=True))

        try:
            cursor = self._db.cursor()
            cursor.row_trace = by_name
            return list(cursor.execute(sql, bindings))
        except apsw.Error as e:
            raise self._typed(e) from e

    def _one(self, sql: str, bindings: Any = ()) -> Any:
        rows = self._query(sql, bindings)
        return rows[0] if rows else None

    def _row(self, sql: str, bindings: Any = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, bindings)
        return rows[0] if rows else None

    def _schema_version(self) -> int:
        return int(self._one("PRAGMA user_version")[0])

    def _meta_value(self, key: str) -> str | None:
        """A small fact of the database's `meta` table, which every domain keeps some in."""
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])
