"""The store: the only code that speaks SQL. One SQLite file (WAL) through apsw.

Schema changes are numbered files in daemon/sql/, applied in order inside one transaction each,
with PRAGMA user_version recording the version reached. A database from a newer shelfsync is
refused rather than guessed at.

Every method is one short transaction and never awaits, so callers on the event loop cannot
interleave inside one.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from importlib import resources as package_files
from pathlib import Path
from typing import Any

import apsw

from daemon.errors import DatabaseDamagedError, DiskFullError, SchemaTooNewError, StoreError
from daemon.killpoints import killpoint
from daemon.logs import log_event
from daemon.models import (
    CommitResult,
    DeliveryCandidate,
    FrameRow,
    HeldBook,
    LibraryChange,
    ManifestSealing,
    ResourceRow,
    StoredFrame,
)
from daemon.protocol.crypto import NONCE_BYTES
from daemon.protocol.manifest import Manifest, WrappedKey, toc_to_doc
from daemon.protocol.reading import Reading, reading_to_doc

_LOG = logging.getLogger("shelfsync.store")
READER_PAGE_CACHE_KIB = 256
# Free space below which the disk counts as full, and at or above which it has room again.
ROOM_BYTES = 1 << 20
# The -wal file a checkpoint leaves is cut back to this; kept, not deleted (see _keep_wal).
WAL_KEPT_BYTES = 1 << 20
# ...and while frames stream in (Store.downloading), to this, more than the -wal reaches at the
# download's backstop (below): a -wal started over is then written over in the page cache, where
# one cut back to 1 MiB at every start had its pages and blocks allocated afresh each time, and
# the cut itself made on the loop (issue 22 #6). Cut back once the last download ends.
WAL_KEPT_DOWNLOADING_BYTES = 128 << 20
# A checkpoint copies the -wal into the database and syncs both: on the event loop, SQLite's
# automatic one held it 80-200 ms at a time, every 16 MiB of frames committed (issue 22 #6).
# The writer hands it to a WalCheckpointer's thread once the -wal holds WAL_CHECKPOINT_PAGES
# (SQLite's own default), and checkpoints itself only past WAL_BACKSTOP_PAGES (no thread, or one
# fallen behind): 32 MiB of 16 KiB pages, every reserve_mb is more. The -wal outgrows it only by
# what is committed while the thread finishes a checkpoint (the writer's then finds it busy).
WAL_CHECKPOINT_PAGES = 1000
WAL_BACKSTOP_PAGES = 2000
# The writer's backstop while frames stream in (64 MiB of 16 KiB pages: every real device
# profile's reserve_mb is more): each time it is reached the loop copies what the thread has not
# and syncs (20-30 ms), and only then can the -wal start over; at 2,000 pages that was 8-9 times
# and 120-230 ms for a 300 MB download on loopback, at 4,000 4 times and 40-100 ms.
WAL_BACKSTOP_DOWNLOADING_PAGES = 4000
FLOOR_STEP_S = 86_400  # how far past max(clock, floor) one verified manifest moves the floor
# The writer's pages are mostly frames it writes once and never reads: SQLite's default 2 MiB
# cache only kept the last frame written resident after a delivery.
WRITER_PAGE_CACHE_KIB = 512
PAGE_BYTES = 16 * 1024
# Of the books ordered since the device joined, the planner sees this many of the new purchases
# and of the wanted books at each step, oldest first, besides the running and failing ones: far
# more than a step can start (a profile's concurrency is at most 16), and enough that books
# too large for the room left are passed over for ones that fit.
PLAN_WINDOW = 64
_FRAME_COLUMNS = "idx, sha256, package_offset, length, plain_offset, plain_size, codec"
# A library row is this device's to fetch (not just archived in the cloud): ordered since the
# device joined the account, or asked for by the reader.
_FOR_DEVICE = (
    "(l.requested_at IS NOT NULL OR l.ordered_at >= CAST(COALESCE((SELECT value FROM meta"
    " WHERE key = 'registered_at'), 0) AS REAL))"
)
# Not complete at the version wanted, and singled out by the reader or the service (the hints
# are content.plan's LIKELY_NEXT_REASONS): the conditions of daemon/sql/0009's partial indexes.
_PENDING = "in_library AND complete_version < wanted_version"
# A pending book waiting out a failed attempt past ?6 (`now`; none waits without it).
_WAITING = (
    "(?6 IS NOT NULL AND EXISTS (SELECT 1 FROM deliveries w"
    " WHERE w.book_id = library.book_id AND w.retry_at > ?6))"
)
_TOUCHED = (
    "(requested_at IS NOT NULL OR opened_at IS NOT NULL OR evicted_at IS NOT NULL"
    " OR reason IN ('sample', 'wishlist', 'series_next') OR complete_version > 0)"
)
# A library row's state, as `_state` names it, in SQL over library l and deliveries d.
_STATE_SQL = (
    "CASE WHEN l.complete_version >= l.wanted_version THEN 'complete'"
    " WHEN coalesce(d.last_error, '') <> '' THEN 'retrying'"
    " WHEN EXISTS (SELECT 1 FROM manifests m WHERE m.book_id = l.book_id) THEN 'downloading'"
    " WHEN l.evicted_at IS NOT NULL THEN 'evicted'"
    f" WHEN {_FOR_DEVICE} THEN 'queued' ELSE 'in_cloud' END"
)
_INTEGRITY_KEY = "integrity_checked"  # meta: the last idle check's IntegrityRecord, as JSON
_SET_ASIDE_KEY = "database_set_aside"  # meta: the damaged database this one replaced
_WAL_LOST_KEY = "wal_lost"  # meta: a -wal found deleted at start (wal_lost_at_start)
_RESOURCE_COLUMNS = "book_id, version, path, media_type, size, offset, first_frame, last_frame"


def _migrations() -> list[tuple[int, str]]:
    found = []
    for entry in package_files.files("daemon.sql").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_schema_version() -> int:
    return _migrations()[-1][0]


# What a rebuilt database keeps of a corrupt one, if it can still be read: who the device is,
# what it trusted (so a rollback stays refused), and the reader's notes.
_SALVAGED_META = ("device_id", "device_token", "registered_at", "time_floor")
_NOTE_TABLES = {
    "outbox": "op_id, target, body, created_at, rejected",
    "annotations": "item_id, book_id, state, created, deleted, updated",
    "positions": "book_id, state",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Quarantine:
    """A database found damaged at start and set aside (renamed, never deleted)."""

    reason: str
    set_aside: Path  # the damaged file, renamed; its -wal and -shm beside it likewise
    notes_export: Path  # the outbox, annotations and positions that could be read, as JSON
    notes_exported: int  # rows of those tables in the export
    notes_requeued: int  # of them, back in the rebuilt database (sent on from there)


def check_at_start(path: Path, now: float) -> Quarantine | None:
    """`PRAGMA quick_check` before the daemon opens its database (FAULTS.md #25).

    A damaged database is set aside, not repaired in place: first what can still be read of the
    reader's notes goes to a JSON file a person can read, then the files are renamed, and a new
    database gets the device's identity, its trust roots, trusted versions and time floor, and
    the notes (their op ids make a re-send a no-op on the service). The library then comes back
    from the service: the changes feed starts again from 0 and the books are fetched again. A
    -wal lost after a crash is no damage of its own: SQLite reads the database as of its last
    checkpoint (wal_lost_at_start says so).
    """
    if not path.exists():
        return None
    try:
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.Error as e:
        return _quarantine(path, None, f"cannot open: {e}", now)
    try:
        db.set_busy_timeout(5000)
        keep_wal(db)  # the last to close otherwise deletes the -shm a full disk cannot remake
        verdict = [str(r[0]) for r in db.execute("PRAGMA quick_check(20)")]
    except apsw.Error as e:
        verdict = [f"{type(e).__name__}: {e}"]
    if verdict == ["ok"]:
        # The quick check misses what only the whole one sees (an index out of step with its
        # table): a damage the idle check found is set aside too.
        found = _readable(db, "SELECT value FROM meta WHERE key = ?", (_INTEGRITY_KEY,))
        last = IntegrityRecord(**json.loads(found[0][0])) if found else None
        if last is None or last.ok:
            db.close()
            return None
        verdict = [f"the idle integrity check found: {last.verdict}"]
    return _quarantine(path, db, "; ".join(verdict)[:500], now)


def wal_lost_at_start(path: Path, now: float) -> str | None:
    """Why the database lost its -wal since the last run, or None (issue 21 #11).

    SQLite deletes the -wal and -shm together, at the last close after a checkpoint (and this
    daemon keeps both, keep_wal). A -shm without its -wal is what a crash leaves once someone
    deletes the -wal: SQLite then reads the database as of its last checkpoint, silently, and
    notes saved after it and not yet sent are gone. That cannot be undone; it is said, in the
    log and in status (kept in meta). Both gone cannot be told from a clean close by another
    program (the sqlite3 shell), which loses nothing, so that is not reported. Call before
    anything else opens the database: opening makes a new, empty -wal.
    """
    if not path.exists() or Path(f"{path}-wal").exists() or not Path(f"{path}-shm").exists():
        return None
    try:
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.Error:
        return None  # check_at_start sets aside what cannot be opened
    reason = (
        "the database's -wal file was gone at start (deleted after a crash?): the database is"
        " as of its last checkpoint, and notes saved after it that had not reached the service"
        " are lost"
    )
    try:
        keep_wal(db)
        with db:
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (_WAL_LOST_KEY, json.dumps({"at": now, "reason": reason})),
            )
    except apsw.Error:
        pass  # damaged or full: the log line still says it, and check_at_start looks next
    finally:
        with suppress(apsw.Error):
            db.close()
    return reason


def _readable(db: apsw.Connection | None, sql: str, bindings: Any = ()) -> list[Any]:
    if db is None:
        return []
    try:
        return list(db.execute(sql, bindings))
    except apsw.Error:
        return []  # that table is on a damaged page: what else can be read still is


def _quarantine(path: Path, db: apsw.Connection | None, reason: str, now: float) -> Quarantine:
    notes = {
        table: _readable(db, f"SELECT {cols} FROM {table}") for table, cols in _NOTE_TABLES.items()
    }
    meta = _readable(
        db,
        f"SELECT key, value FROM meta WHERE key IN ({', '.join('?' * len(_SALVAGED_META))})",
        _SALVAGED_META,
    )
    trusted = _readable(db, "SELECT book_id, version FROM trusted_versions")
    roots = _readable(db, "SELECT version, envelope, time_floor, trusted_at FROM trust_roots")
    clock = _readable(db, "SELECT key, value FROM notes_meta WHERE key = 'hlc'")
    if db is not None:
        # Closing a damaged file can fail; the renames below do not need it closed.
        with suppress(apsw.Error):
            db.close()
    stamp = f"{int(now)}"
    export = path.with_name(f"{path.name}.notes-{stamp}.json")
    doc = {
        "why": f"{path} was found damaged at start ({reason}) and set aside",
        "at": now,
        **{
            table: [dict(zip(cols.split(", "), row, strict=True)) for row in notes[table]]
            for table, cols in _NOTE_TABLES.items()
        },
    }
    _write_durably(export, json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8"))
    set_aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        damaged = Path(f"{path}{suffix}")
        if damaged.exists():
            os.replace(damaged, Path(f"{set_aside}{suffix}"))
    _sync_dir(path.parent)
    rebuilt = Store.open(path)
    try:
        with rebuilt.durable_transaction() as new:
            new.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta)
            new.executemany("INSERT OR REPLACE INTO notes_meta (key, value) VALUES (?, ?)", clock)
            new.executemany("INSERT OR IGNORE INTO trusted_versions VALUES (?, ?)", trusted)
            new.executemany("INSERT OR IGNORE INTO trust_roots VALUES (?, ?, ?, ?)", roots)
            for table, cols in _NOTE_TABLES.items():
                marks = ", ".join("?" * len(cols.split(", ")))
                new.executemany(
                    f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})", notes[table]
                )
            requeued = int(rebuilt.one("SELECT count(*) FROM outbox")[0])
            marker = {
                "at": now,
                "reason": reason,
                "file": str(set_aside),
                "notes_export": str(export),
                "notes_exported": sum(map(len, notes.values())),
            }
            new.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (_SET_ASIDE_KEY, json.dumps(marker)),
            )
    finally:
        rebuilt.close()
    return Quarantine(reason, set_aside, export, sum(map(len, notes.values())), requeued)


def _write_durably(path: Path, data: bytes) -> None:
    """temp, fsync, rename, fsync(dir): the file is whole or absent after any crash."""
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    _sync_dir(path.parent)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True, slots=True)
class IntegrityRecord:
    """The last idle integrity check (daemon/idle_check.py): when, and its verdict."""

    at: float
    verdict: str  # "ok", or the first problems found

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


class DiskWatch:
    """Whether the file system under the database is full (issue 21 #9), for status: told by
    every SQLITE_FULL a store meets, and at start by the free space; looked at again at every
    report, so it clears by itself once another program frees room.

    While it is full the daemon is read-mostly: every book and note it holds still reads (the
    WAL and its index outlive each run, so even a start on a full disk needs no room to read),
    saves are refused visibly (507), downloads pause.
    """

    def __init__(self, directory: Path, wall: Callable[[], float]) -> None:
        self._directory = directory
        self._wall = wall
        self.reason: str | None = None
        self.since: float | None = None
        self.damage: str | None = None

    def free_bytes(self) -> int:
        try:
            fs = os.statvfs(self._directory)
        except OSError:
            return 0
        return fs.f_bavail * fs.f_frsize

    def at_start(self) -> None:
        free = self.free_bytes()
        if free < ROOM_BYTES:
            self.full(f"{free // 1024} KiB free at start")

    def full(self, detail: str) -> None:
        if self.reason is None:
            self.since = self._wall()
            log_event(_LOG, logging.WARNING, "disk_full", detail=detail, mode="read_mostly")
        self.reason = (
            f"the disk is full ({detail}): every book and note on the device still reads;"
            " saves are refused and downloads wait until space frees"
        )

    def met(self, error: StoreError) -> None:
        """A store met this error: a full disk or a damaged page is the watch's to tell."""
        if isinstance(error, DiskFullError):
            self.full(str(error).removeprefix("the disk is full, nothing was saved: "))
        elif isinstance(error, DatabaseDamagedError):
            self.damaged(str(error))

    def damaged(self, found: str) -> None:
        """The database was found damaged while running (a read, the idle check)."""
        if self.damage is None:
            log_event(_LOG, logging.ERROR, "database_damaged", found=found[:500])
        self.damage = (
            f"the database is damaged ({found[:200]}): at the next start it is set aside, the"
            " notes exported first, and the library rebuilt from the service"
        )

    def report(self) -> dict[str, Any]:
        if self.reason is not None and self.free_bytes() >= ROOM_BYTES:
            log_event(_LOG, logging.INFO, "disk_space_back", free_bytes=self.free_bytes())
            self.reason = self.since = None
        return {
            "full": self.reason is not None,
            "mode": "normal" if self.reason is None else "read_mostly",
            "reason": self.reason,
            "full_since": self.since,
            "damaged": self.damage,
        }


def keep_wal(db: apsw.Connection) -> None:
    """Keep the -wal and -shm files when the last connection closes (SQLITE_FCNTL_PERSIST_WAL):
    a WAL database cannot even be read without its -shm, and on a full disk a new one cannot be
    made, so a daemon started on a full disk served nothing (issue 21 #9). The -wal is cut back
    to WAL_KEPT_BYTES at each checkpoint."""
    keep = ctypes.c_int(1)
    db.file_control("main", apsw.SQLITE_FCNTL_PERSIST_WAL, ctypes.addressof(keep))
    db.execute(f"PRAGMA journal_size_limit = {WAL_KEPT_BYTES}")


class WalCheckpointer:
    """Checkpoints the database on a thread of its own, through a connection of its own, when
    woken. A passive checkpoint takes no lock a writer waits for: the event loop goes on
    committing to the -wal while the thread copies and syncs what was committed before."""

    def __init__(self, path: Path) -> None:
        try:
            db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
            db.set_busy_timeout(5000)
            keep_wal(db)  # were it ever the last connection closed
            db.execute("PRAGMA synchronous = NORMAL")  # as the writer's: the same syncs
            db.execute("PRAGMA cache_size = -64")  # a checkpoint copies, through no page cache
        except apsw.Error as e:
            raise StoreError(f"cannot open the database {path} to checkpoint it: {e}") from e
        self._db = db
        self._woken = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="wal checkpointer", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._woken.set()

    def _run(self) -> None:
        while True:
            self._woken.wait()
            self._woken.clear()
            if self._stopping:
                return
            try:
                self._db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
            except apsw.BusyError:
                pass  # the writer is in one (its backstop)
            except apsw.Error as e:  # the writer's backstop still bounds the -wal
                log_event(_LOG, logging.WARNING, "wal_checkpoint_failed", error=str(e))

    def close(self) -> None:
        """Stop the thread (after the checkpoint it is in, if any), then close its connection."""
        self._stopping = True
        self._woken.set()
        self._thread.join()
        self._db.close()


class Store:
    def __init__(
        self,
        connection: apsw.Connection,
        path: Path,
        watch: DiskWatch | None = None,
    ) -> None:
        self._db = connection
        self.path = path
        self._watch = watch
        self._background_checkpoints = False
        self._checkpointer: WalCheckpointer | None = None
        self._downloads = 0  # Store.downloading blocks running now
        self._backstop_pages = WAL_BACKSTOP_PAGES

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False, watch: DiskWatch | None = None) -> Store:
        """Open (creating if needed, with owner-only permissions) and migrate the database.
        `watch` is told of every full disk and damaged page met."""
        try:
            if readonly:
                flags = apsw.SQLITE_OPEN_READONLY
            else:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
                # The database holds the device token and the books: owner-only, -wal included.
                old_umask = os.umask(0o077)
            try:
                db = apsw.Connection(str(path), flags=flags)
            finally:
                if not readonly:
                    os.umask(old_umask)
            db.setbusytimeout(5000)
            db.execute("PRAGMA foreign_keys = ON")
            keep_wal(db)
            if readonly:
                # Readers serve frames, each read once per decode: a page cache of the default
                # 2 MiB per reader only held their pages (4 readers, 8 MiB of a 64 MiB budget).
                # 256 KiB keeps the tables' and indexes' hot pages.
                db.execute(f"PRAGMA cache_size = -{READER_PAGE_CACHE_KIB}")
            else:
                db.execute(f"PRAGMA cache_size = -{WRITER_PAGE_CACHE_KIB}")
                # Both only for a new, empty database: freed pages (a removed book) go back to
                # the file system at `PRAGMA incremental_vacuum`. Not asked of an existing one:
                # the PRAGMA writes, and fails on a full disk (issue 21 #9). Frames are blobs of
                # up to 2 MiB, each a chain of overflow pages: 4 KiB pages made a frame 512 of
                # them, and frames committed at a third of the rate of 16 KiB pages (issue 22 #6).
                if int(next(db.execute("PRAGMA page_count"))[0]) == 0:
                    db.execute(f"PRAGMA page_size = {PAGE_BYTES}")
                    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                db.execute("PRAGMA journal_mode = WAL")
                # NORMAL survives a process crash; a frame lost to power loss is re-fetched.
                db.execute("PRAGMA synchronous = NORMAL")
        except apsw.Error as e:
            raise StoreError(f"cannot open the database {path}: {e}") from e
        store = cls(db, path, watch)
        if not readonly:
            db.set_wal_hook(store._committed)  # in place of SQLite's automatic checkpoint
        if readonly:
            store._check_version()
        else:
            store._migrate()
        return store

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self._db.close()

    def checkpoint_in_background(self) -> None:
        """From now until close, checkpoints run on a thread (WalCheckpointer), started at the
        first one: an idle daemon does not pay its connection's memory."""
        self._background_checkpoints = True

    def _committed(self, db: apsw.Connection, name: str, wal_pages: int) -> int:
        """SQLite's WAL hook, after each commit: what comes back is the commit statement's
        result (the commit itself has happened), so a failed checkpoint is logged, not raised."""
        if wal_pages < WAL_CHECKPOINT_PAGES:
            return apsw.SQLITE_OK
        if self._background_checkpoints and self._checkpointer is None:
            try:
                self._checkpointer = WalCheckpointer(self.path)
            except StoreError as e:  # checkpoints stay the writer's
                self._background_checkpoints = False
                log_event(_LOG, logging.WARNING, "wal_checkpointer_not_started", error=str(e))
        if self._checkpointer is not None and wal_pages < self._backstop_pages:
            self._checkpointer.wake()
            return apsw.SQLITE_OK
        try:
            db.wal_checkpoint(name, apsw.SQLITE_CHECKPOINT_PASSIVE)
        except apsw.BusyError:
            pass  # the checkpointer is in one
        except apsw.Error as e:  # tried again at the next commit
            log_event(_LOG, logging.WARNING, "wal_checkpoint_failed", error=str(e))
        return apsw.SQLITE_OK

    def set_page_cache_kib(self, kib: int) -> None:
        """Size this connection's page cache (the profile's memory budget decides how much)."""
        self._db.execute(f"PRAGMA cache_size = -{max(64, int(kib))}")

    @contextmanager
    def transaction(self) -> Iterator[apsw.Connection]:
        try:
            with self._db:
                yield self._db
        except apsw.Error as e:
            raise self._typed(e) from e

    @contextmanager
    def durable_transaction(self) -> Iterator[apsw.Connection]:
        """A transaction on flash when it returns: this connection's NORMAL lets a power cut
        take its last commits (FAULTS.md #5), fine for a frame fetched again, not for the
        trusted version, which must never go back (a replayed older manifest would then be
        accepted). FULL syncs the WAL at this commit, and with it every commit before."""
        self._db.execute("PRAGMA synchronous = FULL")
        try:
            with self.transaction() as db:
                yield db
        finally:
            self._db.execute("PRAGMA synchronous = NORMAL")

    def query(self, sql: str, bindings: Any = ()) -> list[Any]:
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

    def one(self, sql: str, bindings: Any = ()) -> Any:
        rows = self.query(sql, bindings)
        return rows[0] if rows else None

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        return int(self.one("PRAGMA user_version")[0])

    def _check_version(self) -> None:
        latest = latest_schema_version()
        if self.schema_version() > latest:
            raise SchemaTooNewError(
                f"{self.path} has schema version {self.schema_version()}, this shelfsync knows "
                f"up to {latest}; upgrade shelfsync instead of opening it with an older one"
            )

    def _migrate(self) -> None:
        self._check_version()
        for version, sql in _migrations():
            if version <= self.schema_version():
                continue
            with self.transaction() as db:
                db.execute(sql)
                db.execute(f"PRAGMA user_version = {int(version)}")

    # -- small facts ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def integrity_record(self) -> IntegrityRecord | None:
        raw = self.get_meta(_INTEGRITY_KEY)
        return None if raw is None else IntegrityRecord(**json.loads(raw))

    def record_integrity(self, record: IntegrityRecord) -> None:
        self.set_meta(_INTEGRITY_KEY, json.dumps(dataclasses.asdict(record)))

    def set_aside_marker(self) -> dict[str, Any] | None:
        """The database this one replaced at start, if it was set aside as damaged: when, why,
        and where the damaged file and the notes exported from it are."""
        raw = self.get_meta(_SET_ASIDE_KEY)
        return None if raw is None else dict(json.loads(raw))

    def wal_lost_marker(self) -> dict[str, Any] | None:
        """When and why a -wal was found deleted at a start (wal_lost_at_start), if ever."""
        raw = self.get_meta(_WAL_LOST_KEY)
        return None if raw is None else dict(json.loads(raw))

    def library_cursor(self) -> int:
        return int(self.get_meta("library_cursor") or 0)

    def service_clock_offset(self) -> float:
        """How far the service's clock is ahead of this device's (seconds; negative: behind),
        as measured at the last changes page: order times are the service's clock."""
        return float(self.get_meta("service_clock_offset") or 0.0)

    def time_floor(self) -> int:
        """The latest issue time of any manifest verified under the current trust root: a clock
        set back cannot go below it."""
        return int(self.get_meta("time_floor") or 0)

    def trust_root_envelope(self) -> bytes | None:
        """The newest trust root verified after the pinned one, or None (the pinned key)."""
        row = self.one("SELECT envelope FROM trust_roots ORDER BY version DESC LIMIT 1")
        return None if row is None else bytes(row[0])

    def rotate_trust(
        self, version: int, envelope: bytes, *, new_signing_keys: bool, issued_at: int, now: float
    ) -> None:
        """Trust root `version` (verified against the current one), all or nothing (FAULTS.md
        #4). With new signing keys, what the old ones vouched for stops binding: the trusted
        versions go, the time floor starts again from the root's issue time, and a held
        version above what the changes feed names (which only a fast-forward leaves) is
        dropped, so the book is fetched again under the new keys (frames it shares with what
        is still held are copied, not fetched)."""
        with self.durable_transaction() as db:
            floor = issued_at if new_signing_keys else self.time_floor()
            db.execute(
                "INSERT INTO trust_roots (version, envelope, time_floor, trusted_at)"
                " VALUES (?, ?, ?, ?)",
                (version, envelope, floor, now),
            )
            killpoint("trust_root_inserted")
            if not new_signing_keys:
                return
            db.execute("DELETE FROM trusted_versions")
            killpoint("trust_versions_dropped")
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('time_floor', ?)", (str(floor),)
            )
            killpoint("trust_floor_reset")
            db.execute(
                "DELETE FROM manifests WHERE version > coalesce((SELECT l.wanted_version FROM"
                " library l WHERE l.book_id = manifests.book_id), 0)"
            )
            killpoint("trust_fast_forwarded_dropped")

    # -- library --------------------------------------------------------------------------------

    def apply_library_changes(
        self, changes: list[LibraryChange], cursor: int, now: float, *, rewound: bool = False
    ) -> list[str]:
        """Apply one page of the changes feed and advance the cursor, all or nothing. The
        cursor never moves back (a pull that began before a push was applied ends after it)
        but for a pull that `rewound` from a cursor past the feed's end.

        Returns the ids of books removed from the device.
        """
        removed = []
        with self.transaction() as db:
            for change in changes:
                row = self.one(
                    "SELECT change_seq, wanted_version FROM library WHERE book_id = ?",
                    (change.book_id,),
                )
                if row is not None and row[0] >= change.seq:
                    continue  # already applied (a page fetched twice)
                in_library = 0 if change.action == "remove" else 1
                # A new edition does not change why the book is here (bought, a hint...). A new
                # `add` is a new order: a book evicted under an earlier one (a hint the reader
                # now buys) is a new purchase again.
                db.execute(
                    "INSERT INTO library (book_id, in_library, wanted_version, reason, change_seq,"
                    " ordered_at, notified_at, expected_size, title, authors, cover_size)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (book_id) DO UPDATE SET in_library = excluded.in_library,"
                    " wanted_version = excluded.wanted_version,"
                    " reason = CASE WHEN ? = 'update' THEN reason ELSE excluded.reason END,"
                    " change_seq = excluded.change_seq, ordered_at = excluded.ordered_at,"
                    " notified_at = excluded.notified_at, expected_size = excluded.expected_size,"
                    " title = coalesce(excluded.title, title),"
                    " authors = CASE WHEN excluded.title IS NULL THEN authors"
                    "   ELSE excluded.authors END,"
                    " cover_size = coalesce(excluded.cover_size, cover_size),"
                    " evicted_at = CASE WHEN ? = 'add' THEN NULL ELSE evicted_at END",
                    (
                        change.book_id,
                        in_library,
                        change.version,
                        change.reason,
                        change.seq,
                        change.at,
                        now,
                        change.package_size,
                        change.title,
                        json.dumps(list(change.authors), ensure_ascii=False),
                        change.cover_size,
                        change.action,
                        change.action,
                    ),
                )
                if in_library:
                    db.execute(
                        "INSERT INTO deliveries (book_id, ordered_at, notified_at)"
                        " VALUES (?, ?, ?) ON CONFLICT (book_id) DO UPDATE SET"
                        " ordered_at = excluded.ordered_at, notified_at = excluded.notified_at,"
                        " started_at = NULL, first_chapter_at = NULL, completed_at = NULL,"
                        " bytes_fetched = 0, failures = 0, retries = 0, retry_at = 0,"
                        " last_error = NULL",
                        (change.book_id, change.at, now),
                    )
                    if change.action == "add":
                        self._deliver_held(db, change.book_id, change.version, now)
                else:
                    db.execute("DELETE FROM manifests WHERE book_id = ?", (change.book_id,))
                    db.execute("DELETE FROM deliveries WHERE book_id = ?", (change.book_id,))
                    removed.append(change.book_id)
            if removed:
                list(db.execute("PRAGMA incremental_vacuum"))  # one page per step
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('library_cursor', ?)",
                (str(cursor if rewound else max(cursor, self.library_cursor())),),
            )
        return removed

    def _deliver_held(self, db: apsw.Connection, book_id: str, version: int, now: float) -> None:
        """An order for a book already whole on the device (a hint fetched earlier, now
        bought) is delivered the moment it is heard of; its receipt says so."""
        row = self.one(
            "SELECT max(version) FROM manifests WHERE book_id = ? AND complete AND version >= ?",
            (book_id, version),
        )
        if row is not None and row[0] is not None:
            db.execute(
                "UPDATE deliveries SET version = ?, started_at = ?, first_chapter_at = ?,"
                " completed_at = ? WHERE book_id = ?",
                (row[0], now, now, now, book_id),
            )

    def delivery_candidates(
        self,
        running: Collection[str] = (),
        archive_slots: int = 0,
        fresh_since: float | None = None,
        now: float | None = None,
    ) -> list[DeliveryCandidate]:
        """Books in the library not complete on the device at the version wanted, that the
        planner could act on: those ordered since the device joined (or since `fresh_since`,
        the fresh window's start, if earlier), those the reader or the service singled out, the
        `running` ones, and, only while a trip wants `archive_slots` of the archive, enough of
        its newest books to fill them. The rest of the archive stays in the cloud unless asked
        for, so a library of any size costs a look what is pending (daemon/sql/0009); and given
        `fresh_since`, of the books ordered since the device joined only a window of each
        class, the oldest (PLAN_WINDOW), so an owned library of any size costs a look the same.
        Given `now` as well, books waiting out a failed attempt past it take no place in those
        windows, and of them only the PLAN_WINDOW due soonest (and the soonest new purchase)
        are given, for the planner's waits: thousands failing cost a look no more (issue 22 #2).

        `fresh_since` and the candidates' `ordered_at` are the device's clock (the feed's order
        times, which are the service's, moved by `service_clock_offset`), so the planner
        compares them with its own `now` whatever the two clocks say."""
        offset = self.service_clock_offset()
        registered = float(self.get_meta("registered_at") or 0)
        fresh_since = None if fresh_since is None else fresh_since + offset  # service's clock
        since = registered if fresh_since is None else min(registered, fresh_since)
        fresh_from = since if fresh_since is None else max(since, fresh_since)
        # Without the fresh window's start (a look from outside the planner), every one.
        window = -1 if fresh_since is None else PLAN_WINDOW
        archive = 0
        if archive_slots > 0:
            # Enough of the archive's newest that, whichever of them are singled out or wait
            # for a retry (skipped without taking a slot), the planner still sees its picks.
            skipped = self.one(
                f"SELECT (SELECT count(*) FROM library INDEXED BY library_pending_touched"
                f"   WHERE {_PENDING} AND {_TOUCHED}),"
                " (SELECT count(*) FROM deliveries WHERE retry_at > 0)"
            )
            archive = archive_slots + int(skipped[0]) + int(skipped[1])
        estimate = None
        rows = self._rows(
            # The books ordered since the device joined that no one singled out are new
            # purchases (from the fresh window's start, ?4) and wanted books (before it), each
            # oldest first, as the planner orders them: the first PLAN_WINDOW of each, beyond
            # the running ones and those waiting out a failure (which take no slot), are all it
            # can start in one step, so a library of any size costs a step the same.
            "WITH skipped (n) AS (SELECT CASE WHEN ?5 < 0 THEN -1 ELSE ?5 + json_array_length(?2)"
            "   + (CASE WHEN ?6 IS NOT NULL THEN 0 ELSE (SELECT count(*)"
            "   FROM deliveries INDEXED BY deliveries_failing"
            "   WHERE completed_at IS NULL AND retries > 0) END) END),"
            " picked (book_id) AS ("
            "   SELECT * FROM (SELECT book_id FROM library INDEXED BY library_pending"
            f"     WHERE {_PENDING} AND ordered_at >= ?4 AND NOT {_WAITING}"
            "     ORDER BY ordered_at, book_id LIMIT (SELECT n FROM skipped))"
            "   UNION SELECT * FROM (SELECT book_id FROM library INDEXED BY library_pending"
            f"     WHERE {_PENDING} AND ordered_at >= ?1 AND ordered_at < ?4 AND NOT {_WAITING}"
            "     ORDER BY ordered_at, book_id LIMIT (SELECT n FROM skipped))"
            f"   UNION SELECT book_id FROM library INDEXED BY library_pending_touched"
            f"     WHERE {_PENDING} AND {_TOUCHED}"
            # The failing ones: those due soonest (every one without `now`), and the soonest
            # new purchase, whose wait holds back what is only likely to be read.
            "   UNION SELECT * FROM (SELECT book_id FROM deliveries INDEXED BY deliveries_retrying"
            "     WHERE completed_at IS NULL AND retries > 0 AND retry_at > coalesce(?6, -1)"
            "     ORDER BY retry_at LIMIT CASE WHEN ?6 IS NULL THEN -1 ELSE ?5 END)"
            "   UNION SELECT * FROM (SELECT book_id FROM deliveries INDEXED BY deliveries_retrying"
            "     WHERE completed_at IS NULL AND retries > 0 AND retry_at > ?6"
            "     AND ordered_at >= ?4 ORDER BY retry_at LIMIT 1)"
            "   UNION SELECT value FROM json_each(?2)"
            "   UNION SELECT * FROM (SELECT book_id FROM library INDEXED BY library_pending"
            f"     WHERE {_PENDING} AND ordered_at < ?1"
            "     ORDER BY ordered_at DESC, book_id LIMIT ?3))"
            " SELECT l.book_id, l.reason, l.ordered_at, COALESCE(d.retry_at, 0) AS retry_at,"
            " l.complete_version > 0 AS readable, l.opened_at,"
            " COALESCE((SELECT max(m.package_size) FROM manifests m WHERE m.book_id = l.book_id),"
            "   l.expected_size) AS size,"
            " (SELECT total(length(f.data)) FROM frames f WHERE f.book_id = l.book_id) AS held,"
            f" {_FOR_DEVICE} AS wanted, l.evicted_at IS NOT NULL AS evicted,"
            " l.requested_at IS NOT NULL AS requested,"
            " EXISTS (SELECT 1 FROM manifests m WHERE m.book_id = l.book_id) AS size_proven"
            # picked first: SQLite would rather scan every pending row of the library
            " FROM picked CROSS JOIN library l ON l.book_id = picked.book_id"
            " LEFT JOIN deliveries d ON d.book_id = l.book_id"
            f" WHERE {_PENDING}",  # still pending (a running book may have completed)
            (since, json.dumps(list(running)), archive, fresh_from, window, now),
        )
        candidates = []
        for r in rows:
            size = r["size"]
            if size is None:  # no manifest yet, and the feed gave no size
                estimate = self._typical_package_size() if estimate is None else estimate
                size = estimate
            candidates.append(
                DeliveryCandidate(
                    book_id=r["book_id"],
                    reason=r["reason"],
                    ordered_at=r["ordered_at"] - offset,
                    retry_at=r["retry_at"],
                    has_readable_version=bool(r["readable"]),
                    opened_at=r["opened_at"],
                    expected_bytes=int(size),
                    held_bytes=int(r["held"]),
                    wanted=bool(r["wanted"]),
                    evicted=bool(r["evicted"]),
                    requested=bool(r["requested"]),
                    size_proven=bool(r["size_proven"]),
                )
            )
        return candidates

    def _typical_package_size(self) -> int:
        """A guess at a book's size before its manifest is known: the median held, or 1 MB."""
        sizes = [r[0] for r in self.query("SELECT package_size FROM manifests ORDER BY 1")]
        return int(sizes[len(sizes) // 2]) if sizes else 1_000_000

    def held_books(self) -> list[HeldBook]:
        """Books with frames on the device, with what protects them from eviction; times are
        the device's clock (as in `delivery_candidates`)."""
        offset = self.service_clock_offset()
        rows = self._rows(
            "SELECT l.book_id, (SELECT total(length(f.data)) FROM frames f"
            "   WHERE f.book_id = l.book_id) AS held_bytes,"
            " EXISTS (SELECT 1 FROM manifests m WHERE m.book_id = l.book_id AND m.complete)"
            "   AS complete,"
            " l.pinned, l.opened_at, l.ordered_at, l.reason,"
            " EXISTS (SELECT 1 FROM outbox o WHERE o.rejected IS NULL"
            "   AND (o.target = 'position:' || l.book_id OR o.target IN"
            "     (SELECT a.item_id FROM annotations a WHERE a.book_id = l.book_id)))"
            "   AS unsynced_notes,"
            f" {_FOR_DEVICE} AS wanted, l.requested_at IS NOT NULL AS requested"
            " FROM library l WHERE EXISTS (SELECT 1 FROM manifests m WHERE m.book_id = l.book_id)"
        )
        return [
            HeldBook(
                book_id=r["book_id"],
                held_bytes=int(r["held_bytes"]),
                complete=bool(r["complete"]),
                pinned=bool(r["pinned"]),
                opened_at=r["opened_at"],
                ordered_at=r["ordered_at"] - offset,
                reason=r["reason"],
                unsynced_notes=bool(r["unsynced_notes"]),
                wanted=bool(r["wanted"]),
                requested=bool(r["requested"]),
            )
            for r in rows
        ]

    def evict_book(self, book_id: str, now: float) -> None:
        """Remove a book's frames to make room; it stays in the library, in the cloud."""
        with self.transaction() as db:
            db.execute("DELETE FROM manifests WHERE book_id = ?", (book_id,))
            db.execute("UPDATE library SET evicted_at = ? WHERE book_id = ?", (now, book_id))
            db.execute(
                "UPDATE deliveries SET version = 0, started_at = NULL, first_chapter_at = NULL,"
                " completed_at = NULL, bytes_fetched = 0 WHERE book_id = ?",
                (book_id,),
            )
            list(db.execute("PRAGMA incremental_vacuum"))

    def set_pinned(self, book_id: str, pinned: bool) -> bool:
        with self.transaction() as db:
            db.execute(
                "UPDATE library SET pinned = ? WHERE book_id = ? AND in_library",
                (int(pinned), book_id),
            )
            return self._db.changes() > 0

    def mark_opened(self, book_id: str, now: float) -> bool:
        with self.transaction() as db:
            db.execute(
                "UPDATE library SET opened_at = ? WHERE book_id = ? AND in_library",
                (now, book_id),
            )
            return self._db.changes() > 0

    def request_download(self, book_id: str, now: float) -> bool:
        with self.transaction() as db:
            db.execute(
                "UPDATE library SET requested_at = ? WHERE book_id = ? AND in_library",
                (now, book_id),
            )
            return self._db.changes() > 0

    def in_library(self, book_id: str) -> bool:
        row = self.one("SELECT in_library FROM library WHERE book_id = ?", (book_id,))
        return bool(row and row[0])

    # -- manifests and frames -------------------------------------------------------------------

    def wanted_version(self, book_id: str) -> int:
        """The version the library wants on the device (0 if the book is not in the library)."""
        row = self.one(
            "SELECT wanted_version FROM library WHERE book_id = ? AND in_library", (book_id,)
        )
        return 0 if row is None else int(row[0])

    def trusted_version(self, book_id: str) -> int:
        row = self.one("SELECT version FROM trusted_versions WHERE book_id = ?", (book_id,))
        return 0 if row is None else int(row[0])

    def held_frame_hashes(self, book_id: str) -> dict[int, list[str]]:
        """The frame hashes of every version of the book held, by version."""
        held: dict[int, list[str]] = {}
        for version, sha256 in self.query(
            "SELECT version, sha256 FROM frames WHERE book_id = ? ORDER BY version, idx",
            (book_id,),
        ):
            held.setdefault(version, []).append(sha256)
        return held

    def frame_hashes(self, book_id: str, version: int) -> list[str] | None:
        """The frame hashes of a held manifest, or None if that version is not held."""
        if not self.one(
            "SELECT 1 FROM manifests WHERE book_id = ? AND version = ?", (book_id, version)
        ):
            return None
        rows = self.query(
            "SELECT sha256 FROM frames WHERE book_id = ? AND version = ? ORDER BY idx",
            (book_id, version),
        )
        return [r[0] for r in rows]

    def record_manifest(self, manifest: Manifest, envelope: bytes, now: float) -> None:
        """Store a verified manifest: its frame and resource tables, the trusted version and
        time floor. Frames whose bytes an older version already holds are copied, not fetched.
        """
        m = manifest
        key = (m.book_id, m.version)
        with self.durable_transaction() as db:
            if not self.one("SELECT 1 FROM manifests WHERE book_id = ? AND version = ?", key):
                db.execute(
                    "INSERT INTO manifests (book_id, version, envelope, title, authors, language,"
                    " toc, first_chapter, first_chapter_frames, frame_count, package_size,"
                    " plain_size, expires_at, content_key, dictionary, sealed_in_chunks, reading)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1,?)",
                    (
                        *key,
                        envelope,
                        m.title,
                        json.dumps(list(m.authors), ensure_ascii=False),
                        m.language,
                        json.dumps([toc_to_doc(t) for t in m.toc], ensure_ascii=False),
                        m.first_chapter,
                        m.first_chapter_frames(),
                        len(m.frames),
                        m.package_size,
                        m.plain_size,
                        m.expires_at,
                        json.dumps(dataclasses.asdict(m.content_key)) if m.content_key else "",
                        m.dictionary.sha256 if m.dictionary else None,
                        json.dumps(reading_to_doc(m.reading), ensure_ascii=False),
                    ),
                )
                db.executemany(
                    f"INSERT INTO frames (book_id, version, {_FRAME_COLUMNS}) VALUES"
                    " (?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            *key,
                            i,
                            f.sha256,
                            f.offset,
                            f.length,
                            f.plain_offset,
                            f.plain_size,
                            f.codec,
                        )
                        for i, f in enumerate(m.frames)
                    ],
                )
                db.executemany(
                    f"INSERT INTO resources ({_RESOURCE_COLUMNS}, ord) VALUES (?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            *key,
                            r.path,
                            r.media_type,
                            r.size,
                            r.offset,
                            frames.start if frames else 0,
                            frames.stop - 1 if frames else -1,
                            order,
                        )
                        for order, r in enumerate(m.resources)
                        for frames in (m.frames_for(r),)
                    ],
                )
                db.execute(
                    "UPDATE frames SET data = (SELECT old.data FROM frames old"
                    "   WHERE old.book_id = frames.book_id AND old.version <> frames.version"
                    "   AND old.sha256 = frames.sha256 AND old.data IS NOT NULL LIMIT 1)"
                    " WHERE book_id = ? AND version = ?",
                    key,
                )
                db.execute(
                    f"UPDATE frames SET seal_nonce = substr(data, 1, {NONCE_BYTES})"
                    " WHERE book_id = ? AND version = ? AND data IS NOT NULL",
                    key,
                )
            db.execute(
                "INSERT INTO trusted_versions (book_id, version) VALUES (?, ?)"
                " ON CONFLICT (book_id) DO UPDATE SET version = max(version, excluded.version)",
                key,
            )
            # The floor follows verified issue times, but a day at most past what the device
            # already believes the time is: one manifest issued ten years ahead (a service's
            # clock or key gone wrong) would otherwise make every later one expired, for good
            # (issue 24 #6).
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('time_floor', ?1) ON CONFLICT (key)"
                " DO UPDATE SET value = max(CAST(value AS INTEGER),"
                "   min(?1, max(?2, CAST(value AS INTEGER)) + ?3))",
                (min(m.issued_at, int(now) + FLOOR_STEP_S), int(now), FLOOR_STEP_S),
            )
            db.execute(
                "UPDATE deliveries SET version = ?, started_at = COALESCE(started_at, ?)"
                " WHERE book_id = ?",
                (m.version, now, m.book_id),
            )
            self._settle(db, m.book_id, m.version, now)

    def discard_frame(self, book_id: str, version: int, idx: int) -> None:
        """Forget a stored frame that failed verification, so that it is fetched again."""
        with self.transaction() as db:
            db.execute(
                "UPDATE frames SET data = NULL WHERE book_id = ? AND version = ? AND idx = ?",
                (book_id, version, idx),
            )
            db.execute(
                "UPDATE manifests SET complete = 0 WHERE book_id = ? AND version = ?",
                (book_id, version),
            )

    def manifest_sealing(self, book_id: str, version: int) -> ManifestSealing | None:
        """How a held version's frames are sealed and compressed: one read of its row."""
        row = self.one(
            "SELECT content_key, dictionary, sealed_in_chunks FROM manifests"
            " WHERE book_id = ? AND version = ?",
            (book_id, version),
        )
        if row is None:
            return None
        key = WrappedKey(**json.loads(row[0])) if row[0] else None
        return ManifestSealing(key, row[1], bool(row[2]))

    def dictionary(self, sha256: str) -> bytes | None:
        row = self.one("SELECT data FROM dictionaries WHERE sha256 = ?", (sha256,))
        return None if row is None else bytes(row[0])

    def put_dictionary(self, sha256: str, data: bytes) -> None:
        """Keep a verified dictionary (the caller checked `data` against `sha256`)."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO dictionaries (sha256, data) VALUES (?, ?)", (sha256, data)
            )

    def missing_frames(self, book_id: str, version: int) -> list[FrameRow]:
        rows = self._rows(
            f"SELECT {_FRAME_COLUMNS} FROM frames WHERE book_id = ? AND version = ?"
            " AND data IS NULL ORDER BY idx",
            (book_id, version),
        )
        return [FrameRow(**r) for r in rows]

    @contextmanager
    def downloading(self) -> Iterator[None]:
        """While a package's frames stream in: the -wal keeps WAL_KEPT_DOWNLOADING_BYTES when
        it starts over, and the writer's backstop is WAL_BACKSTOP_DOWNLOADING_PAGES. Nested
        (concurrent downloads): the last to end puts both back."""
        if self._downloads == 0:
            self._keep_wal_bytes(WAL_KEPT_DOWNLOADING_BYTES)
            self._backstop_pages = WAL_BACKSTOP_DOWNLOADING_PAGES
        self._downloads += 1
        try:
            yield
        finally:
            self._downloads -= 1
            if self._downloads == 0:
                self._backstop_pages = WAL_BACKSTOP_PAGES
                self._keep_wal_bytes(WAL_KEPT_BYTES)

    def _keep_wal_bytes(self, limit: int) -> None:
        try:
            self._db.execute(f"PRAGMA journal_size_limit = {int(limit)}")
        except apsw.Error as e:
            raise self._typed(e) from e

    def commit_frame(
        self, book_id: str, version: int, idx: int, data: bytes | memoryview, now: float
    ) -> CommitResult:
        """Store one verified frame; note first-chapter and completion times as they happen."""
        with self.transaction() as db:
            db.execute(
                f"UPDATE frames SET data = ?1, seal_nonce = substr(?1, 1, {NONCE_BYTES})"
                " WHERE book_id = ?2 AND version = ?3 AND idx = ?4 AND data IS NULL",
                (data, book_id, version, idx),
            )
            if self._db.changes() == 0:
                if not self.one(
                    "SELECT 1 FROM manifests WHERE book_id = ? AND version = ?", (book_id, version)
                ):
                    raise StoreError(f"{book_id} v{version} is no longer held (removed?)")
                return CommitResult(False, False)
            db.execute(
                "UPDATE deliveries SET bytes_fetched = bytes_fetched + ?, failures = 0"
                " WHERE book_id = ?",
                (len(data), book_id),
            )
            return self._settle(db, book_id, version, now)

    def _settle(self, db: apsw.Connection, book_id: str, version: int, now: float) -> CommitResult:
        """Record first-chapter and completion milestones reached by the frames now held."""
        # Counted in the partial index of missing frames: the planner took frames_nonce for the
        # second count, and read every held frame's row at every commit (issue 22 #6).
        missing_first, missing_all = self.one(
            "SELECT (SELECT count(*) FROM frames f INDEXED BY frames_missing"
            "   WHERE f.book_id = m.book_id AND f.version = m.version AND f.data IS NULL"
            "   AND f.idx < m.first_chapter_frames),"
            " (SELECT count(*) FROM frames f INDEXED BY frames_missing"
            "   WHERE f.book_id = m.book_id AND f.version = m.version AND f.data IS NULL)"
            " FROM manifests m WHERE m.book_id = ? AND m.version = ?",
            (book_id, version),
        )
        first_ready = complete = False
        if missing_first == 0:
            db.execute(
                "UPDATE deliveries SET first_chapter_at = ? WHERE book_id = ? AND version = ?"
                " AND first_chapter_at IS NULL",
                (now, book_id, version),
            )
            first_ready = self._db.changes() > 0
        if missing_all == 0:
            db.execute(
                "UPDATE manifests SET complete = 1 WHERE book_id = ? AND version = ?"
                " AND NOT complete",
                (book_id, version),
            )
            complete = self._db.changes() > 0
            if complete:
                db.execute(
                    "UPDATE deliveries SET completed_at = ?, last_error = NULL, retry_at = 0"
                    " WHERE book_id = ? AND version = ?",
                    (now, book_id, version),
                )
                # The new version is whole: the old one is no longer needed to read.
                db.execute(
                    "DELETE FROM manifests WHERE book_id = ? AND version < ?", (book_id, version)
                )
                list(db.execute("PRAGMA incremental_vacuum"))
        return CommitResult(first_ready, complete)

    def record_delivery_failure(self, book_id: str, error: str, retry_at: float) -> int:
        """Note a failed attempt; returns the count of consecutive failures without progress."""
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET failures = failures + 1, retries = retries + 1,"
                " last_error = ?, retry_at = ? WHERE book_id = ?",
                (error[:500], retry_at, book_id),
            )
        row = self.one("SELECT failures FROM deliveries WHERE book_id = ?", (book_id,))
        return 0 if row is None else int(row[0])

    def make_retries_due(self, book_ids: Collection[str] | None, now: float) -> int:
        """The service is back: these books' retries waiting past `now` (every one, if None)
        are due at once; their failures still count for the next backoff. How many were."""
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET retry_at = 0 WHERE completed_at IS NULL AND retries > 0"
                " AND retry_at > ?1"
                " AND (?2 IS NULL OR book_id IN (SELECT value FROM json_each(?2)))",
                (now, None if book_ids is None else json.dumps(list(book_ids))),
            )
            return int(self._db.changes())

    def delivery_failures(self, book_id: str) -> int:
        row = self.one("SELECT failures FROM deliveries WHERE book_id = ?", (book_id,))
        return 0 if row is None else int(row[0])

    # -- reads for the local API ----------------------------------------------------------------

    def readable_version(self, book_id: str) -> int | None:
        """The version to read: the newest complete one, else the newest partial one."""
        row = self.one(
            "SELECT version FROM manifests WHERE book_id = ? ORDER BY complete DESC,"
            " version DESC LIMIT 1",
            (book_id,),
        )
        return None if row is None else int(row[0])

    def library_view(
        self,
        after: tuple[float, str] | None = None,
        limit: int | None = None,
        book_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The books in the library with their delivery state, newest order first (then by id):
        all of them, or `limit` of them from just after the (ordered_at, book_id) `after`, or
        the one `book_id`."""
        page = "" if after is None else " AND (l.ordered_at, l.book_id) < (?, ?)"
        page += "" if book_id is None else " AND l.book_id = ?"
        rows = self._rows(
            "SELECT l.book_id, l.reason, l.ordered_at, l.notified_at, l.wanted_version,"
            " m.version, coalesce(m.title, l.title) AS title,"
            " coalesce(m.authors, l.authors) AS authors, m.language,"
            " m.frame_count, m.complete, m.package_size, l.cover_size,"
            " (SELECT count(*) FROM frames f WHERE f.book_id = m.book_id"
            "   AND f.version = m.version AND f.data IS NOT NULL) AS frames_held,"
            " (SELECT count(*) FROM frames f WHERE f.book_id = m.book_id AND f.version = m.version"
            "   AND f.data IS NULL AND f.idx < m.first_chapter_frames) AS first_missing,"
            " d.started_at, d.first_chapter_at, d.completed_at, d.bytes_fetched, d.retries,"
            " d.retry_at, d.last_error, l.pinned, l.opened_at, l.evicted_at,"
            f" {_FOR_DEVICE} AS for_device"
            " FROM library l"
            " LEFT JOIN manifests m ON m.book_id = l.book_id AND m.version = (SELECT m2.version"
            "   FROM manifests m2 WHERE m2.book_id = l.book_id ORDER BY m2.complete DESC,"
            "   m2.version DESC LIMIT 1)"
            " LEFT JOIN deliveries d ON d.book_id = l.book_id"
            f" WHERE l.in_library{page} ORDER BY l.ordered_at DESC, l.book_id DESC LIMIT ?",
            (*(after or ()), *(() if book_id is None else (book_id,)), limit or -1),  # -1: all
        )
        books = []
        for r in rows:
            version, authors = r["version"], r["authors"]
            books.append(
                {
                    "book_id": r["book_id"],
                    "title": r["title"],
                    "authors": json.loads(authors) if authors else [],
                    "language": r["language"],
                    "reason": r["reason"],
                    "version": version,
                    "wanted_version": r["wanted_version"],
                    "state": _state(
                        version,
                        r["complete"],
                        r["wanted_version"],
                        r["last_error"],
                        r["for_device"],
                        r["evicted_at"],
                    ),
                    "readable": version is not None and r["first_missing"] == 0,
                    "frames_held": r["frames_held"] or 0,
                    "frames_total": r["frame_count"] or 0,
                    "package_size": r["package_size"] or 0,
                    "cover_size": r["cover_size"],
                    "ordered_at": r["ordered_at"],
                    "notified_at": r["notified_at"],
                    "started_at": r["started_at"],
                    "first_chapter_at": r["first_chapter_at"],
                    "completed_at": r["completed_at"],
                    "bytes_fetched": r["bytes_fetched"] or 0,
                    "retries": r["retries"] or 0,
                    "retry_at": r["retry_at"] or None,
                    "last_error": r["last_error"],
                    "pinned": bool(r["pinned"]),
                    "opened_at": r["opened_at"],
                    "evicted_at": r["evicted_at"],
                    # bought before this device; lives in the cloud
                    "archived": not r["for_device"],
                }
            )
        return books

    def library_counts(self) -> dict[str, int]:
        """How many books of the library are in each state (as library_view names them), in
        one pass that holds no row: what the status report says of a library of any size."""
        rows = self.query(
            f"SELECT {_STATE_SQL} AS state, count(*) FROM library l"
            " LEFT JOIN deliveries d ON d.book_id = l.book_id WHERE l.in_library GROUP BY state"
        )
        return {state: int(n) for state, n in rows}

    def books_not_delivered(self, limit: int) -> list[dict[str, Any]]:
        """The books not on the device that the reader may be waiting for, the ones that matter
        first (downloading, then failing, then the rest, newest order first), at most `limit`:
        the status report's few lines. GET /v1/library lists them all."""
        rows = self._rows(
            "SELECT b.book_id, b.state, coalesce(m.title, b.title) AS title, m.frame_count,"
            " (SELECT count(*) FROM frames f WHERE f.book_id = m.book_id"
            "   AND f.version = m.version AND f.data IS NOT NULL) AS frames_held,"
            " (SELECT count(*) FROM frames f WHERE f.book_id = m.book_id AND f.version = m.version"
            "   AND f.data IS NULL AND f.idx < m.first_chapter_frames) AS first_missing,"
            " b.last_error, b.retries, b.retry_at"
            # The few first, then what they show: the subqueries run for those rows alone.
            " FROM (SELECT * FROM (SELECT l.book_id, l.title, l.ordered_at, d.last_error,"
            " d.retries,"
            f"     d.retry_at, {_STATE_SQL} AS state"
            "     FROM library l LEFT JOIN deliveries d ON d.book_id = l.book_id"
            "     WHERE l.in_library)"
            "   WHERE state NOT IN ('complete', 'in_cloud')"
            "   ORDER BY CASE state WHEN 'downloading' THEN 0 WHEN 'retrying' THEN 1 ELSE 2 END,"
            "   ordered_at DESC, book_id LIMIT ?) b"
            " LEFT JOIN manifests m ON m.book_id = b.book_id AND m.version = (SELECT m2.version"
            "   FROM manifests m2 WHERE m2.book_id = b.book_id ORDER BY m2.complete DESC,"
            "   m2.version DESC LIMIT 1)"
            " ORDER BY CASE b.state WHEN 'downloading' THEN 0 WHEN 'retrying' THEN 1 ELSE 2 END,"
            " b.ordered_at DESC, b.book_id",
            (limit,),
        )
        return [
            {
                "book_id": r["book_id"],
                "title": r["title"],
                "state": r["state"],
                "readable": r["frame_count"] is not None and r["first_missing"] == 0,
                "frames_held": r["frames_held"] or 0,
                "frames_total": r["frame_count"] or 0,
                "last_error": r["last_error"],
                "retries": r["retries"] or 0,
                "retry_at": r["retry_at"] or None,
            }
            for r in rows
        ]

    def book_details(self, book_id: str) -> dict[str, Any] | None:
        """A book of the library: its metadata, contents and resources, with its delivery
        state; one not readable yet (queued, in the cloud) has what the feed told of it and no
        resources. None for a book not in the library."""
        entry = self.library_view(book_id=book_id)
        if not entry:
            return None
        state = {"state": entry[0]["state"], "readable": entry[0]["readable"]}
        version = self.readable_version(book_id)
        if version is None:
            return {
                "book_id": book_id,
                "version": None,
                "title": entry[0]["title"],
                "authors": entry[0]["authors"],
                "language": entry[0]["language"],
                "complete": False,
                "first_chapter": None,
                "toc": [],
                **reading_to_doc(Reading()),
                "resources": [],
                **state,
            }
        title, authors, language, toc, first_chapter, complete, reading = self.one(
            "SELECT title, authors, language, toc, first_chapter, complete, reading"
            " FROM manifests WHERE book_id = ? AND version = ?",
            (book_id, version),
        )
        held = {
            r[0]
            for r in self.query(
                "SELECT idx FROM frames WHERE book_id = ? AND version = ? AND data IS NOT NULL",
                (book_id, version),
            )
        }
        resources = [
            {
                "path": r.path,
                "media_type": r.media_type,
                "size": r.size,
                "available": all(i in held for i in range(r.first_frame, r.last_frame + 1)),
            }
            for r in self.resources(book_id, version)
        ]
        return {
            "book_id": book_id,
            "version": version,
            "title": title,
            "authors": json.loads(authors),
            "language": language,
            "complete": bool(complete),
            "first_chapter": first_chapter,
            "toc": json.loads(toc),
            **reading_to_doc(Reading()),  # packages before layout 4 carried none
            **json.loads(reading),
            "resources": resources,
            **state,
        }

    def resources(self, book_id: str, version: int) -> list[ResourceRow]:
        rows = self._rows(
            f"SELECT {_RESOURCE_COLUMNS} FROM resources WHERE book_id = ? AND version = ?"
            " ORDER BY ord",
            (book_id, version),
        )
        return [ResourceRow(**r) for r in rows]

    def resource(self, book_id: str, path: str) -> ResourceRow | None:
        """The resource at `path` in the readable version of a book in the library."""
        version = self.readable_version(book_id)
        if version is None or not self.in_library(book_id):
            return None
        rows = self._rows(
            f"SELECT {_RESOURCE_COLUMNS} FROM resources WHERE book_id = ? AND version = ?"
            " AND path = ?",
            (book_id, version, path),
        )
        return ResourceRow(**rows[0]) if rows else None

    def frame_row(self, book_id: str, version: int, idx: int) -> FrameRow:
        rows = self._rows(
            f"SELECT {_FRAME_COLUMNS} FROM frames WHERE book_id = ? AND version = ? AND idx = ?",
            (book_id, version, idx),
        )
        if not rows:
            raise StoreError(f"{book_id} v{version} has no frame {idx}")
        return FrameRow(**rows[0])

    def frame(self, book_id: str, version: int, idx: int) -> tuple[FrameRow, bytes | None]:
        """The frame's row and all its stored bytes (None until committed)."""
        row = self.one(
            f"SELECT {_FRAME_COLUMNS}, data FROM frames WHERE book_id = ? AND version = ?"
            " AND idx = ?",
            (book_id, version, idx),
        )
        if row is None:
            raise StoreError(f"{book_id} v{version} has no frame {idx}")
        return FrameRow(*row[:7]), row[7]

    def resource_frames(self, resource: ResourceRow) -> list[tuple[FrameRow, StoredFrame | None]]:
        """The frames a resource spans, in order, each with where its bytes are stored (None
        until committed): one query per read, reading no blob. (`data IS NULL` as a result
        column loads the blob, and ORDER BY here made SQLite read the rows 4x slower; length()
        reads only the record header, and Python sorts the one or two rows.)"""
        rows = self.query(
            f"SELECT {_FRAME_COLUMNS}, rowid, length(data) FROM frames"
            " WHERE book_id = ? AND version = ? AND idx BETWEEN ? AND ?",
            (resource.book_id, resource.version, resource.first_frame, resource.last_frame),
        )
        return [
            (FrameRow(*row[:7]), None if row[8] is None else StoredFrame(row[7], row[8]))
            for row in sorted(rows)
        ]

    def seal_nonce(self, book_id: str, version: int, idx: int) -> bytes | None:
        """A committed frame's first bytes as they were committed (daemon/sql/0007), from the
        covering index (0008): the column lies past the blob, whose overflow pages SQLite
        would otherwise walk to reach it."""
        row = self.one(
            "SELECT seal_nonce FROM frames INDEXED BY frames_nonce"
            " WHERE book_id = ? AND version = ? AND idx = ?",
            (book_id, version, idx),
        )
        return None if row is None else row[0]

    def read_frame(self, frame: StoredFrame, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of a stored frame, read incrementally (apsw blob I/O):
        a read of one chunk of a 2 MiB frame touches that chunk's pages only."""
        try:
            blob = self._db.blob_open("main", "frames", "data", frame.blob_id, False)
            try:
                blob.seek(offset)
                return blob.read(size)
            finally:
                blob.close()
        except apsw.Error as e:
            raise self._typed(e) from e

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: what is read inside stays consistent while other connections
        commit (WAL), so a resource is never served half from an old version."""
        try:
            with self._db:
                self._db.execute("SELECT 1 FROM meta LIMIT 1")
                yield
        except apsw.Error as e:
            raise self._typed(e) from e

    def books_bytes(self) -> int:
        """What the frames on the device hold (kept by daemon/sql/0013's triggers)."""
        return int(self.one("SELECT bytes FROM held_bytes")[0])

    def integrity_check(self, give_up: Callable[[], bool] | None = None) -> str | None:
        """`PRAGMA integrity_check`'s verdict ("ok", or the first problems found), or None if
        `give_up` said so first: it is asked every few thousand steps, so a check of a large
        database stops at once when the daemon has other work (the idle check, issue 15)."""
        if give_up is not None:
            self._db.set_progress_handler(give_up, 4096)
        try:
            rows = self.query("PRAGMA integrity_check(20)")
        except StoreError as e:
            if isinstance(e.__cause__, apsw.InterruptError):
                return None
            return str(e)  # damaged where the check itself cannot read
        finally:
            if give_up is not None:
                self._db.set_progress_handler(None)
        return "; ".join(str(r[0]) for r in rows)[:500]


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


def _state(
    version: int | None,
    complete: int | None,
    wanted: int,
    last_error: str | None,
    for_device: int,
    evicted_at: float | None,
) -> str:
    if version is not None and complete and version >= wanted:
        return "complete"
    if last_error:
        return "retrying"
    if version is None:
        if evicted_at is not None:
            return "evicted"  # removed to make room; back when there is room and it is wanted
        return "queued" if for_device else "in_cloud"
    return "downloading"
