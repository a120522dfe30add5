"""Books' manifests and frames: recording a verified manifest, committing each frame as it
arrives, reading frames back, the dictionaries they were compressed with, and the trust that
verified them (trusted versions, the time floor, trust roots)."""

from __future__ import annotations

import dataclasses
import json

import apsw

from daemon.errors import StoreError
from daemon.killpoints import killpoint
from daemon.models import CommitResult, FrameRow, ManifestSealing, ResourceRow, StoredFrame
from daemon.protocol.crypto import NONCE_BYTES
from daemon.protocol.manifest import Manifest, WrappedKey, toc_to_doc
from daemon.protocol.reading import reading_to_doc
from daemon.store.gateway import Gateway
from daemon.store.library import Library

FLOOR_STEP_S = 86_400  # how far past max(clock, floor) one verified manifest moves the floor
_FRAME_COLUMNS = "idx, sha256, package_offset, length, plain_offset, plain_size, codec"
_RESOURCE_COLUMNS = "book_id, version, path, media_type, size, offset, first_frame, last_frame"


class Frames(Gateway):
    def __init__(self, over: Gateway, library: Library) -> None:
        super().__init__(over)
        self._library = library  # a resource is served only of a book in the library

    def time_floor(self) -> int:
        """The latest issue time of any manifest verified under the current trust root: a clock
        set back cannot go below it."""
        return int(self._meta_value("time_floor") or 0)

    def trust_root_envelope(self) -> bytes | None:
        """The newest trust root verified after the pinned one, or None (the pinned key)."""
        row = self._one("SELECT envelope FROM trust_roots ORDER BY version DESC LIMIT 1")
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
        with self._durable_transaction() as db:
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

    def trusted_version(self, book_id: str) -> int:
        row = self._one("SELECT version FROM trusted_versions WHERE book_id = ?", (book_id,))
        return 0 if row is None else int(row[0])

    def held_frame_hashes(self, book_id: str) -> dict[int, list[str]]:
        """The frame hashes of every version of the book held, by version."""
        held: dict[int, list[str]] = {}
        for row in self._rows(
            "SELECT version, sha256 FROM frames WHERE book_id = ? ORDER BY version, idx",
            (book_id,),
        ):
            held.setdefault(row["version"], []).append(row["sha256"])
        return held

    def frame_hashes(self, book_id: str, version: int) -> list[str] | None:
        """The frame hashes of a held manifest, or None if that version is not held."""
        if not self._one(
            "SELECT 1 FROM manifests WHERE book_id = ? AND version = ?", (book_id, version)
        ):
            return None
        rows = self._query(
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
        with self._durable_transaction() as db:
            if not self._one("SELECT 1 FROM manifests WHERE book_id = ? AND version = ?", key):
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
        with self._transaction() as db:
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
        row = self._row(
            "SELECT content_key, dictionary, sealed_in_chunks FROM manifests"
            " WHERE book_id = ? AND version = ?",
            (book_id, version),
        )
        if row is None:
            return None
        key = WrappedKey(**json.loads(row["content_key"])) if row["content_key"] else None
        return ManifestSealing(key, row["dictionary"], bool(row["sealed_in_chunks"]))

    def dictionary(self, sha256: str) -> bytes | None:
        row = self._one("SELECT data FROM dictionaries WHERE sha256 = ?", (sha256,))
        return None if row is None else bytes(row[0])

    def put_dictionary(self, sha256: str, data: bytes) -> None:
        """Keep a verified dictionary (the caller checked `data` against `sha256`)."""
        with self._transaction() as db:
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

    def commit_frame(
        self, book_id: str, version: int, idx: int, data: bytes | memoryview, now: float
    ) -> CommitResult:
        """Store one verified frame; note first-chapter and completion times as they happen."""
        with self._transaction() as db:
            db.execute(
                f"UPDATE frames SET data = ?1, seal_nonce = substr(?1, 1, {NONCE_BYTES})"
                " WHERE book_id = ?2 AND version = ?3 AND idx = ?4 AND data IS NULL",
                (data, book_id, version, idx),
            )
            if self._db.changes() == 0:
                if not self._one(
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
        missing = self._row(
            "SELECT (SELECT count(*) FROM frames f INDEXED BY frames_missing"
            "   WHERE f.book_id = m.book_id AND f.version = m.version AND f.data IS NULL"
            "   AND f.idx < m.first_chapter_frames) AS first_chapter,"
            " (SELECT count(*) FROM frames f INDEXED BY frames_missing"
            "   WHERE f.book_id = m.book_id AND f.version = m.version AND f.data IS NULL)"
            "   AS whole_book"
            " FROM manifests m WHERE m.book_id = ? AND m.version = ?",
            (book_id, version),
        )
        assert missing is not None  # a frame is committed only under its recorded manifest
        first_ready = complete = False
        if missing["first_chapter"] == 0:
            db.execute(
                "UPDATE deliveries SET first_chapter_at = ? WHERE book_id = ? AND version = ?"
                " AND first_chapter_at IS NULL",
                (now, book_id, version),
            )
            first_ready = self._db.changes() > 0
        if missing["whole_book"] == 0:
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

    def books_bytes(self) -> int:
        """What the frames on the device hold (kept by daemon/sql/0013's triggers)."""
        return int(self._one("SELECT bytes FROM held_bytes")[0])

    def readable_version(self, book_id: str) -> int | None:
        """The version to read: the newest complete one, else the newest partial one."""
        row = self._one(
            "SELECT version FROM manifests WHERE book_id = ? ORDER BY complete DESC,"
            " version DESC LIMIT 1",
            (book_id,),
        )
        return None if row is None else int(row[0])

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
        if version is None or not self._library.in_library(book_id):
            return None
        rows = self._rows(
            f"SELECT {_RESOURCE_COLUMNS} FROM resources WHERE book_id = ? AND version = ?"
            " AND path = ?",
            (book_id, version, path),
        )
        return ResourceRow(**rows[0]) if rows else None

    def frame(self, book_id: str, version: int, idx: int) -> tuple[FrameRow, bytes | None]:
        """The frame's row and all its stored bytes (None until committed)."""
        row = self._row(
            f"SELECT {_FRAME_COLUMNS}, data FROM frames WHERE book_id = ? AND version = ?"
            " AND idx = ?",
            (book_id, version, idx),
        )
        if row is None:
            raise StoreError(f"{book_id} v{version} has no frame {idx}")
        data = row.pop("data")
        return FrameRow(**row), data

    def resource_frames(self, resource: ResourceRow) -> list[tuple[FrameRow, StoredFrame | None]]:
        """The frames a resource spans, in order, each with where its bytes are stored (None
        until committed): one query per read, reading no blob. (`data IS NULL` as a result
        column loads the blob, and ORDER BY here made SQLite read the rows 4x slower; length()
        reads only the record header, and Python sorts the one or two rows.)"""
        rows = self._rows(
            f"SELECT {_FRAME_COLUMNS}, rowid AS blob_id, length(data) AS stored FROM frames"
            " WHERE book_id = ? AND version = ? AND idx BETWEEN ? AND ?",
            (resource.book_id, resource.version, resource.first_frame, resource.last_frame),
        )
        frames = []
        for row in sorted(rows, key=lambda r: int(r["idx"])):
            blob_id, stored = row.pop("blob_id"), row.pop("stored")
            frames.append(
                (FrameRow(**row), None if stored is None else StoredFrame(blob_id, stored))
            )
        return frames

    def seal_nonce(self, book_id: str, version: int, idx: int) -> bytes | None:
        """A committed frame's first bytes as they were committed (daemon/sql/0007), from the
        covering index (0008): the column lies past the blob, whose overflow pages SQLite
        would otherwise walk to reach it."""
        row = self._one(
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
