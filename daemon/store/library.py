"""The library: which books the device holds or should, why, and how each delivery went (the
library and deliveries tables, and the changes feed's cursor); what the planner decides on."""

from __future__ import annotations

import json
from collections.abc import Collection

import apsw

from daemon.models import DeliveryCandidate, HeldBook, LibraryChange
from daemon.store.gateway import Gateway

# Of the books ordered since the device joined, the planner sees this many of the new purchases
# and of the wanted books at each step, oldest first, besides the running and failing ones: far
# more than a step can start (a profile's concurrency is at most 16), and enough that books
# too large for the room left are passed over for ones that fit.
PLAN_WINDOW = 64
# A library row is this device's to fetch (not just archived in the cloud): ordered since the
# device joined the account, or asked for by the reader.
FOR_DEVICE = (
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


class Library(Gateway):
    def library_cursor(self) -> int:
        return int(self._meta_value("library_cursor") or 0)

    def service_clock_offset(self) -> float:
        """How far the service's clock is ahead of this device's (seconds; negative: behind),
        as measured at the last changes page: order times are the service's clock."""
        return float(self._meta_value("service_clock_offset") or 0.0)

    def apply_library_changes(
        self, changes: list[LibraryChange], cursor: int, now: float, *, rewound: bool = False
    ) -> list[str]:
        """Apply one page of the changes feed and advance the cursor, all or nothing. The
        cursor never moves back (a pull that began before a push was applied ends after it)
        but for a pull that `rewound` from a cursor past the feed's end.

        Returns the ids of books removed from the device.
        """
        removed = []
        with self._transaction() as db:
            for change in changes:
                row = self._row(
                    "SELECT change_seq FROM library WHERE book_id = ?", (change.book_id,)
                )
                if row is not None and row["change_seq"] >= change.seq:
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
        row = self._one(
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
        registered = float(self._meta_value("registered_at") or 0)
        fresh_since = None if fresh_since is None else fresh_since + offset  # service's clock
        since = registered if fresh_since is None else min(registered, fresh_since)
        fresh_from = since if fresh_since is None else max(since, fresh_since)
        # Without the fresh window's start (a look from outside the planner), every one.
        window = -1 if fresh_since is None else PLAN_WINDOW
        archive = 0
        if archive_slots > 0:
            # Enough of the archive's newest that, whichever of them are singled out or wait
            # for a retry (skipped without taking a slot), the planner still sees its picks.
            skipped = self._row(
                f"SELECT (SELECT count(*) FROM library INDEXED BY library_pending_touched"
                f"   WHERE {_PENDING} AND {_TOUCHED}) AS touched,"
                " (SELECT count(*) FROM deliveries WHERE retry_at > 0) AS retrying"
            )
            assert skipped is not None  # counts: always one row
            archive = archive_slots + int(skipped["touched"]) + int(skipped["retrying"])
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
            f" {FOR_DEVICE} AS wanted, l.evicted_at IS NOT NULL AS evicted,"
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
        sizes = [r[0] for r in self._query("SELECT package_size FROM manifests ORDER BY 1")]
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
            f" {FOR_DEVICE} AS wanted, l.requested_at IS NOT NULL AS requested"
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
        with self._transaction() as db:
            db.execute("DELETE FROM manifests WHERE book_id = ?", (book_id,))
            db.execute("UPDATE library SET evicted_at = ? WHERE book_id = ?", (now, book_id))
            db.execute(
                "UPDATE deliveries SET version = 0, started_at = NULL, first_chapter_at = NULL,"
                " completed_at = NULL, bytes_fetched = 0 WHERE book_id = ?",
                (book_id,),
            )
            list(db.execute("PRAGMA incremental_vacuum"))

    def set_pinned(self, book_id: str, pinned: bool) -> bool:
        with self._transaction() as db:
            db.execute(
                "UPDATE library SET pinned = ? WHERE book_id = ? AND in_library",
                (int(pinned), book_id),
            )
            return self._db.changes() > 0

    def mark_opened(self, book_id: str, now: float) -> bool:
        with self._transaction() as db:
            db.execute(
                "UPDATE library SET opened_at = ? WHERE book_id = ? AND in_library",
                (now, book_id),
            )
            return self._db.changes() > 0

    def request_download(self, book_id: str, now: float) -> bool:
        with self._transaction() as db:
            db.execute(
                "UPDATE library SET requested_at = ? WHERE book_id = ? AND in_library",
                (now, book_id),
            )
            return self._db.changes() > 0

    def in_library(self, book_id: str) -> bool:
        row = self._one("SELECT in_library FROM library WHERE book_id = ?", (book_id,))
        return bool(row and row[0])

    def wanted_version(self, book_id: str) -> int:
        """The version the library wants on the device (0 if the book is not in the library)."""
        row = self._one(
            "SELECT wanted_version FROM library WHERE book_id = ? AND in_library", (book_id,)
        )
        return 0 if row is None else int(row[0])

    def record_delivery_failure(self, book_id: str, error: str, retry_at: float) -> int:
        """Note a failed attempt; returns the count of consecutive failures without progress."""
        with self._transaction() as db:
            db.execute(
                "UPDATE deliveries SET failures = failures + 1, retries = retries + 1,"
                " last_error = ?, retry_at = ? WHERE book_id = ?",
                (error[:500], retry_at, book_id),
            )
        row = self._one("SELECT failures FROM deliveries WHERE book_id = ?", (book_id,))
        return 0 if row is None else int(row[0])

    def make_retries_due(self, book_ids: Collection[str] | None, now: float) -> int:
        """The service is back: these books' retries waiting past `now` (every one, if None)
        are due at once; their failures still count for the next backoff. How many were."""
        with self._transaction() as db:
            db.execute(
                "UPDATE deliveries SET retry_at = 0 WHERE completed_at IS NULL AND retries > 0"
                " AND retry_at > ?1"
                " AND (?2 IS NULL OR book_id IN (SELECT value FROM json_each(?2)))",
                (now, None if book_ids is None else json.dumps(list(book_ids))),
            )
            return int(self._db.changes())

    def delivery_failures(self, book_id: str) -> int:
        row = self._one("SELECT failures FROM deliveries WHERE book_id = ?", (book_id,))
        return 0 if row is None else int(row[0])
