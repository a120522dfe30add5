"""The notes store: the only code that speaks SQL about annotations (daemon/sql/0002_*.sql).

It opens its own connection to the daemon's database, with synchronous=FULL. In WAL mode
`synchronous` belongs to the connection: the book store's NORMAL survives a process crash but may
lose its last commits on power loss, which is fine for a frame that is simply fetched again and
not for a note the reader was told is saved (DESIGN.md promise 3, FAULTS.md #5). FULL syncs the
WAL at every commit of this connection, so when the local API answers, the note is on flash; the
frames keep the cheaper NORMAL. The schema is migrated by daemon/store/ before this opens.

Every method is one short transaction that never awaits, so callers on the event loop cannot
interleave inside one, and each read-modify-write (an edit, a merge) is a single transaction. It
also reads the `library` table (daemon/store/library.py's) to know which books are on the device.
Its SQL runs through a gateway's helpers (daemon/store/gateway.py): rows of more than one column
read by name, every apsw error translated; annotation_status reads its counts through the book
store's connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from daemon.errors import StoreError
from daemon.killpoints import killpoint
from daemon.protocol import annotation_input, merge
from daemon.protocol.merge import Item, Position
from daemon.store import Store
from daemon.store.database import WAL_BACKSTOP_PAGES, keep_wal
from daemon.store.disk import DiskWatch
from daemon.store.gateway import Gateway

SCHEMA_VERSION = 2  # the first schema holding these tables
POSITION_TARGET = "position:"  # outbox target prefix of reading position ops


@dataclass(frozen=True, slots=True)
class OutboxOp:
    op_id: str
    body: str  # JSON, as sent


@dataclass(frozen=True, slots=True)
class Passage:
    """A popular passage as the service describes it; readers == 0 means it is gone."""

    book_id: str
    passage_id: str
    readers: int
    anchor: dict[str, Any]


def _dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


class NotesStore(Gateway):
    def __init__(
        self,
        connection: apsw.Connection,
        path: Path,
        watch: DiskWatch | None = None,
    ) -> None:
        self._db = connection
        self.path = path
        self._watch = watch

    def set_page_cache_kib(self, kib: int) -> None:
        """Size this connection's page cache: SQLite's default 2 MiB held pages of a few small
        tables on a 64 MiB device."""
        self._db.execute(f"PRAGMA cache_size = -{max(64, int(kib))}")

    @classmethod
    def open(cls, path: Path, watch: DiskWatch | None = None) -> NotesStore:
        """Open the (already migrated) database for annotation reads and durable writes;
        `watch` is told of every full disk a save meets."""
        try:
            db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
            db.set_busy_timeout(5000)
            db.execute("PRAGMA foreign_keys = ON")
            keep_wal(db)
            db.wal_autocheckpoint(WAL_BACKSTOP_PAGES)  # the store's checkpointer does it before
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
        except apsw.Error as e:
            raise StoreError(f"cannot open the database {path} for notes: {e}") from e
        store = cls(db, path, watch)
        version = int(store._one("PRAGMA user_version")[0])
        if version < SCHEMA_VERSION:
            db.close()
            raise StoreError(f"{path} has schema version {version}; notes need {SCHEMA_VERSION}")
        return store

    def close(self) -> None:
        self._db.close()

    # -- small facts ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM notes_meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    @staticmethod
    def _set_meta(db: apsw.Connection, key: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO notes_meta (key, value) VALUES (?, ?)", (key, value))

    def _save_clock(self, db: apsw.Connection, stamp: str | None) -> None:
        # Only ever raised: a clock set back must not bring stamps back with it after a restart.
        if stamp is not None and stamp > (self.get_meta("hlc") or ""):
            self._set_meta(db, "hlc", stamp)

    def clock_floor(self) -> str | None:
        """The greatest stamp this device made or saw, persisted with every change."""
        return self.get_meta("hlc")

    def annotation_cursor(self) -> int:
        return int(self.get_meta("annotation_cursor") or 0)

    def popular_cursor(self) -> int:
        return int(self.get_meta("popular_cursor") or 0)

    # -- the account's devices by name ----------------------------------------------------------

    def device_names(self) -> dict[str, str]:
        """device_id -> the name its reader gave it, as the service last said."""
        return dict(json.loads(self.get_meta("device_names") or "{}"))

    def set_device_names(self, names: dict[str, str]) -> None:
        with self._transaction() as db:
            self._set_meta(db, "device_names", json.dumps(names, ensure_ascii=False))

    def name_to_send(self) -> str | None:
        """This device's new name, not yet told to the service."""
        return self.get_meta("device_name_unsent") or None

    def want_name_sent(self, name: str) -> None:
        with self._transaction() as db:
            self._set_meta(db, "device_name_unsent", name)

    def name_sent(self, name: str) -> None:
        """The service took `name` (unless the reader renamed the device again meanwhile)."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM notes_meta WHERE key = 'device_name_unsent' AND value = ?", (name,)
            )

    def record_sync(self, at: float | None, error: str) -> None:
        """Note a finished sync (`at`) or a failed one (`at` None, with its error)."""
        with self._transaction() as db:
            if at is not None:
                self._set_meta(db, "last_sync_at", repr(at))
            self._set_meta(db, "last_sync_error", error[:500])

    # -- annotations ----------------------------------------------------------------------------

    def item(self, item_id: str) -> Item | None:
        row = self._one("SELECT state FROM annotations WHERE item_id = ?", (item_id,))
        return None if row is None else annotation_input.item_from_doc(json.loads(row[0]))

    def is_pending(self, item_id: str) -> bool:
        return bool(
            self._one(
                "SELECT 1 FROM outbox WHERE target = ? AND rejected IS NULL LIMIT 1", (item_id,)
            )
        )

    def items(self, book_id: str, include_deleted: bool) -> list[tuple[Item, bool]]:
        """A book's annotations (with whether an edit is still to be sent), oldest edit first."""
        rows = self._rows(
            "SELECT a.state, EXISTS (SELECT 1 FROM outbox o WHERE o.target = a.item_id"
            "   AND o.rejected IS NULL) AS unsent"
            " FROM annotations a WHERE a.book_id = ? AND a.created AND (? OR NOT a.deleted)"
            " ORDER BY a.updated",
            (book_id, int(include_deleted)),
        )
        return [
            (annotation_input.item_from_doc(json.loads(r["state"])), bool(r["unsent"]))
            for r in rows
        ]

    @staticmethod
    def _write_item(db: apsw.Connection, item: Item) -> None:
        db.execute(
            "INSERT INTO annotations (item_id, book_id, state, created, deleted, updated)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (item_id) DO UPDATE SET"
            " state = excluded.state, created = excluded.created, deleted = excluded.deleted,"
            " updated = excluded.updated",
            (
                item.item_id,
                item.book_id,
                _dumps(merge.item_to_doc(item)),
                int(merge.is_created(item)),
                int(merge.is_deleted(item)),
                merge.updated_stamp(item),
            ),
        )

    @staticmethod
    def _queue(
        db: apsw.Connection, op_id: str, target: str, op: dict[str, Any], now: float
    ) -> None:
        db.execute(
            "INSERT INTO outbox (op_id, target, body, created_at) VALUES (?, ?, ?, ?)",
            (op_id, target, _dumps({"op_id": op_id, **op}), now),
        )

    def commit_item_edit(self, delta: Item, op_id: str, stamp: str, now: float) -> Item:
        """Join a local edit into its annotation and queue it, in one durable transaction."""
        with self._transaction() as db:
            current = self.item(delta.item_id)
            merged = delta if current is None else merge.join_item(current, delta)
            self._write_item(db, merged)
            self._queue(db, op_id, delta.item_id, {"item": merge.item_to_doc(delta)}, now)
            self._save_clock(db, stamp)
        return merged

    # -- reading positions ----------------------------------------------------------------------

    def position(self, book_id: str) -> Position | None:
        row = self._one("SELECT state FROM positions WHERE book_id = ?", (book_id,))
        return None if row is None else annotation_input.position_from_doc(json.loads(row[0]))

    @staticmethod
    def _write_position(db: apsw.Connection, position: Position) -> None:
        db.execute(
            "INSERT INTO positions (book_id, state) VALUES (?, ?) ON CONFLICT (book_id)"
            " DO UPDATE SET state = excluded.state",
            (position.book_id, _dumps(merge.position_to_doc(position))),
        )

    def commit_position(self, delta: Position, op_id: str, stamp: str, now: float) -> Position:
        """Join a local reading position and queue it, replacing a position op still waiting
        for the same book (only the latest place matters; page turns do not pile up)."""
        target = POSITION_TARGET + delta.book_id
        with self._transaction() as db:
            current = self.position(delta.book_id)
            merged = delta if current is None else merge.join_position(current, delta)
            self._write_position(db, merged)
            db.execute("DELETE FROM outbox WHERE target = ? AND rejected IS NULL", (target,))
            self._queue(db, op_id, target, {"position": merge.position_to_doc(delta)}, now)
            self._save_clock(db, stamp)
        return merged

    # -- sync -----------------------------------------------------------------------------------

    def outbox_batch(self, max_ops: int, max_bytes: int) -> list[OutboxOp]:
        """The oldest pending ops, at most `max_ops` and about `max_bytes` (at least one)."""
        batch: list[OutboxOp] = []
        size = 0
        for row in self._rows(
            "SELECT op_id, body FROM outbox WHERE rejected IS NULL ORDER BY seq LIMIT ?",
            (max_ops,),
        ):
            size += len(row["body"]) + 1
            if batch and size > max_bytes:
                break
            batch.append(OutboxOp(**row))
        return batch

    def outbox_done(self, acked: Iterable[str], rejected: Mapping[str, str]) -> int:
        """Forget acknowledged ops and mark refused ones (kept, shown in the status)."""
        removed = 0
        with self._transaction() as db:
            for op_id in acked:
                db.execute("DELETE FROM outbox WHERE op_id = ?", (op_id,))
                removed += self._db.changes()
                killpoint("annotation_trim_row")
            for op_id, reason in rejected.items():
                db.execute("UPDATE outbox SET rejected = ? WHERE op_id = ?", (reason[:500], op_id))
        return removed

    def apply_remote(
        self, items: list[Item], positions: list[Position], cursor: int, clock: str | None
    ) -> list[str]:
        """Join one page of the service's changes and advance the cursor, all or nothing.

        Returns the ids of items the service holds for another book than this device (a
        client-chosen id used twice); the local state of those is kept as it is."""
        clashes = []
        with self._transaction() as db:
            for remote in items:
                current = self.item(remote.item_id)
                if current is not None and current.book_id != remote.book_id:
                    clashes.append(remote.item_id)
                    continue
                self._write_item(
                    db, remote if current is None else merge.join_item(current, remote)
                )
                killpoint("annotation_pull_row")
            for remote_position in positions:
                mine = self.position(remote_position.book_id)
                self._write_position(
                    db,
                    remote_position if mine is None else merge.join_position(mine, remote_position),
                )
            self._set_meta(db, "annotation_cursor", str(cursor))
            self._save_clock(db, clock)
        return clashes

    # -- popular highlights ---------------------------------------------------------------------

    def books_on_device(self) -> list[str]:
        """The books whose popular passages the device keeps: those held, and those ordered
        for it since it joined the account or asked for (so a purchase's passages come with it).
        Not the archive left in the cloud: each new book is a fetch of its own, and a library
        bought over years is thousands of them."""
        rows = self._query(
            "SELECT book_id FROM library l WHERE in_library AND (requested_at IS NOT NULL"
            " OR ordered_at >= CAST(coalesce((SELECT value FROM meta"
            "   WHERE key = 'registered_at'), 0) AS REAL)"
            " OR EXISTS (SELECT 1 FROM manifests m WHERE m.book_id = l.book_id))"
        )
        return [r[0] for r in rows]

    def book_on_device(self, book_id: str) -> bool:
        row = self._one("SELECT in_library FROM library WHERE book_id = ?", (book_id,))
        return bool(row and row[0])

    def popular_books(self) -> set[str]:
        return {r[0] for r in self._query("SELECT book_id FROM popular_books")}

    def apply_popular(
        self, passages: list[Passage], *, cursor: int | None, covered: Iterable[str] = ()
    ) -> None:
        """Store one page of popular passages; advance the account-wide cursor if given, and
        mark `covered` books as held in full."""
        with self._transaction() as db:
            for p in passages:
                if p.readers > 0:
                    db.execute(
                        "INSERT INTO popular_passages (book_id, passage_id, readers, anchor)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (book_id, passage_id) DO UPDATE SET"
                        " readers = excluded.readers, anchor = excluded.anchor",
                        (p.book_id, p.passage_id, p.readers, _dumps(p.anchor)),
                    )
                else:
                    db.execute(
                        "DELETE FROM popular_passages WHERE book_id = ? AND passage_id = ?",
                        (p.book_id, p.passage_id),
                    )
            db.executemany(
                "INSERT OR IGNORE INTO popular_books (book_id) VALUES (?)",
                [(b,) for b in covered],
            )
            if cursor is not None:
                self._set_meta(db, "popular_cursor", str(cursor))
                killpoint("popular_cursor_saved")

    def record_popular_refresh(self, at: float) -> None:
        with self._transaction() as db:
            self._set_meta(db, "popular_refreshed_at", repr(at))

    def forget_popular(self, keep: set[str]) -> None:
        """Drop the passages of books no longer on the device."""
        gone = self.popular_books() - keep
        with self._transaction() as db:
            for book_id in gone:
                db.execute("DELETE FROM popular_passages WHERE book_id = ?", (book_id,))
                db.execute("DELETE FROM popular_books WHERE book_id = ?", (book_id,))

    def popular(self, book_id: str) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT passage_id, readers, anchor FROM popular_passages WHERE book_id = ?"
            " ORDER BY readers DESC, passage_id",
            (book_id,),
        )
        return [{**r, "anchor": json.loads(r["anchor"])} for r in rows]


def annotation_status(store: Store) -> dict[str, Any] | None:
    """Annotation sync as the status report shows it, read through the book store's connection
    (so `shelfsync status` works with the daemon stopped); None before schema 2."""
    return _NotesCounts(store).status()


class _NotesCounts(Gateway):
    """The notes' counts over the book store's connection, for annotation_status."""

    def status(self) -> dict[str, Any] | None:
        if self._schema_version() < SCHEMA_VERSION:
            return None
        outbox = self._row(
            "SELECT count(*) FILTER (WHERE rejected IS NULL) AS pending,"
            f" count(*) FILTER (WHERE rejected IS NULL AND target LIKE '{POSITION_TARGET}%')"
            "   AS positions,"
            " coalesce(sum(length(body)) FILTER (WHERE rejected IS NULL), 0) AS bytes,"
            " count(*) FILTER (WHERE rejected IS NOT NULL) AS rejected FROM outbox"
        )
        assert outbox is not None  # counts: always one row
        meta = {r["key"]: r["value"] for r in self._rows("SELECT key, value FROM notes_meta")}
        (shared,) = self._one("SELECT count(*) FROM popular_passages")
        by_kind = dict.fromkeys(annotation_input.KINDS, 0)
        kept = 0
        for r in self._rows(
            "SELECT json_extract(state, '$.fields.kind[1]') AS kind,"
            " json_extract(state, '$.deleted') IS NOT NULL AS overruled, count(*) AS n"
            " FROM annotations WHERE created AND NOT deleted GROUP BY 1, 2"
        ):
            by_kind[str(r["kind"])] = by_kind.get(str(r["kind"]), 0) + int(r["n"])
            kept += int(r["n"]) if r["overruled"] else 0
        last = meta.get("last_sync_at")
        return {
            "outbox_depth": int(outbox["pending"]),
            "outbox_positions": int(outbox["positions"]),  # of outbox_depth: reading positions
            "outbox_bytes": int(outbox["bytes"]),  # JSON, before compression
            "rejected": int(outbox["rejected"]),
            "annotations": sum(by_kind.values()),
            "by_kind": by_kind,  # highlights, notes, bookmarks: each by its name in the status
            # Edit beat delete: annotations another device deleted, kept because edited here or
            # elsewhere without that device having seen it (merge.item_view's delete_overruled).
            "kept_despite_delete": kept,
            "shared_highlights": int(shared),  # other readers' passages held for offline reading
            "last_sync_at": float(last) if last else None,
            "last_sync_error": meta.get("last_sync_error") or None,
            "cursor": int(meta.get("annotation_cursor", 0)),
            "popular_refreshed_at": float(meta["popular_refreshed_at"])
            if "popular_refreshed_at" in meta
            else None,
        }
