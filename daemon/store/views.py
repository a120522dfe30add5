"""The library as the local API and the status report show it: every book with its delivery
state, counts by state, the books not delivered yet, one book's details."""

from __future__ import annotations

import json
from typing import Any

from daemon.protocol.reading import Reading, reading_to_doc
from daemon.store.frames import Frames
from daemon.store.gateway import Gateway
from daemon.store.library import FOR_DEVICE

# A library row's state, as `_state` names it, in SQL over library l and deliveries d.
_STATE_SQL = (
    "CASE WHEN l.complete_version >= l.wanted_version THEN 'complete'"
    " WHEN coalesce(d.last_error, '') <> '' THEN 'retrying'"
    " WHEN EXISTS (SELECT 1 FROM manifests m WHERE m.book_id = l.book_id) THEN 'downloading'"
    " WHEN l.evicted_at IS NOT NULL THEN 'evicted'"
    f" WHEN {FOR_DEVICE} THEN 'queued' ELSE 'in_cloud' END"
)


class LibraryViews(Gateway):
    def __init__(self, over: Gateway, frames: Frames) -> None:
        super().__init__(over)
        self._frames = frames  # what of a book can be read

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
            f" {FOR_DEVICE} AS for_device"
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
        rows = self._rows(
            f"SELECT {_STATE_SQL} AS state, count(*) AS books FROM library l"
            " LEFT JOIN deliveries d ON d.book_id = l.book_id WHERE l.in_library GROUP BY state"
        )
        return {r["state"]: int(r["books"]) for r in rows}

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
        version = self._frames.readable_version(book_id)
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
        m = self._row(
            "SELECT title, authors, language, toc, first_chapter, complete, reading"
            " FROM manifests WHERE book_id = ? AND version = ?",
            (book_id, version),
        )
        assert m is not None  # the readable version's row, read in the same transaction
        held = {
            r[0]
            for r in self._query(
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
            for r in self._frames.resources(book_id, version)
        ]
        return {
            "book_id": book_id,
            "version": version,
            "title": m["title"],
            "authors": json.loads(m["authors"]),
            "language": m["language"],
            "complete": bool(m["complete"]),
            "first_chapter": m["first_chapter"],
            "toc": json.loads(m["toc"]),
            **reading_to_doc(Reading()),  # packages before layout 4 carried none
            **json.loads(m["reading"]),
            "resources": resources,
            **state,
        }


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
