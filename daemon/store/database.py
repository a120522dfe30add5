"""The database's connection: one SQLite file (WAL) through apsw, opened, migrated, checkpointed,
checked, and set aside at start when found damaged. `Store` owns the connection and builds a
gateway a domain over it (daemon/store/__init__.py lists them).

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from importlib import resources as package_files
from pathlib import Path
from typing import Any

import apsw

from daemon.errors import SchemaTooNewError, StoreError
from daemon.logs import log_event
from daemon.store.disk import DiskWatch
from daemon.store.frames import Frames
from daemon.store.gateway import Gateway
from daemon.store.library import Library
from daemon.store.receipts import Receipts
from daemon.store.views import LibraryViews

_LOG = logging.getLogger("shelfsync.store")
READER_PAGE_CACHE_KIB = 256
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
# The writer's pages are mostly frames it writes once and never reads: SQLite's default 2 MiB
# cache only kept the last frame written resident after a delivery.
WRITER_PAGE_CACHE_KIB = 512
PAGE_BYTES = 16 * 1024
_INTEGRITY_KEY = "integrity_checked"  # meta: the last idle check's IntegrityRecord, as JSON
_SET_ASIDE_KEY = "database_set_aside"  # meta: the damaged database this one replaced
_WAL_LOST_KEY = "wal_lost"  # meta: a -wal found deleted at start (wal_lost_at_start)


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
        with rebuilt._durable_transaction() as new:
            new.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta)
            new.executemany("INSERT OR REPLACE INTO notes_meta (key, value) VALUES (?, ?)", clock)
            new.executemany("INSERT OR IGNORE INTO trusted_versions VALUES (?, ?)", trusted)
            new.executemany("INSERT OR IGNORE INTO trust_roots VALUES (?, ?, ?, ?)", roots)
            for table, cols in _NOTE_TABLES.items():
                marks = ", ".join("?" * len(cols.split(", ")))
                new.executemany(
                    f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})", notes[table]
                )
            requeued = int(rebuilt._one("SELECT count(*) FROM outbox")[0])
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


class Store(Gateway):
    """The database's one writing connection (or a reader's), and a gateway a domain over it:
    `library`, `frames` (manifests, frames, dictionaries, trust), `views` (the library as the
    local API shows it) and `receipts` (receipts and notices)."""

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
        self.library = Library(self)
        self.frames = Frames(self, self.library)
        self.views = LibraryViews(self, self.frames)
        self.receipts = Receipts(self)

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

    def set_page_cache_kib(self, kib: int) -> None:
        """Size this connection's page cache (the profile's memory budget decides how much)."""
        self._db.execute(f"PRAGMA cache_size = -{max(64, int(kib))}")

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        return self._schema_version()

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
            with self._transaction() as db:
                db.execute(sql)
                db.execute(f"PRAGMA user_version = {int(version)}")

    # -- small facts ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        return self._meta_value(key)

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
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

    def integrity_check(self, give_up: Callable[[], bool] | None = None) -> str | None:
        """`PRAGMA integrity_check`'s verdict ("ok", or the first problems found), or None if
        `give_up` said so first: it is asked every few thousand steps, so a check of a large
        database stops at once when the daemon has other work (the idle check, issue 15)."""
        if give_up is not None:
            self._db.set_progress_handler(give_up, 4096)
        try:
            rows = self._query("PRAGMA integrity_check(20)")
        except StoreError as e:
            if isinstance(e.__cause__, apsw.InterruptError):
                return None
            return str(e)  # damaged where the check itself cannot read
        finally:
            if give_up is not None:
                self._db.set_progress_handler(None)
        return "; ".join(str(r[0]) for r in rows)[:500]
