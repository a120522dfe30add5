"""The status report: what is on the device, what is coming, and why not yet.

Built from the store alone, so `shelfsync status` tells the same story whether it asks the
running daemon or, with the daemon stopped, reads the database itself. Bounded whatever the
library: counts by state and the few books that matter (downloading, failing, then the rest
not delivered), at most STATUS_BOOKS of them; GET /v1/library pages through every book.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daemon.content.trip import next_connection_words
from daemon.errors import in_words
from daemon.notes.store import annotation_status
from daemon.store import Store

STATUS_NOTICES = 5  # the newest notices shown; GET /v1/notices has them all
STATUS_BOOKS = 10  # books not delivered listed by name; GET /v1/library has them all
LIBRARY_ROUTE = "/v1/library"
_DELIVERED = ("complete", "in_cloud")  # states the report counts but does not list
# A stopped daemon writes nothing: its disk is no one's concern until it runs again.
_STOPPED_STORAGE = {"full": False, "mode": "stopped", "reason": None, "full_since": None}
_STOPPED_STORAGE |= {"damaged": None}


def _sync_error(store: Store, notes: dict[str, Any] | None) -> str | None:
    """The library sync's last failure, unless a later sync succeeded (the library's clears
    it; the notes' since the failure says the service answers again)."""
    recorded = store.get_meta("last_sync_error")
    if not recorded:
        return None
    failed_at = float(store.get_meta("last_sync_error_at") or 0)
    notes_ok = (notes or {}).get("last_sync_at")
    return None if notes_ok is not None and notes_ok > failed_at else recorded


def build_status(store: Store, runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    counts = store.views.library_counts()
    books = store.views.books_not_delivered(STATUS_BOOKS)
    last_sync = store.get_meta("last_sync_at")
    # The planner's reason for every book it holds back is for the listed books' "why" only:
    # with a large library it is thousands of entries.
    daemon = {k: v for k, v in (runtime or {"running": False}).items() if k != "waiting"}
    notes = annotation_status(store)
    sync_error = _sync_error(store, notes)
    if notes is not None and notes["last_sync_error"]:
        notes = {
            **notes,
            "last_sync_error": in_words(notes["last_sync_error"]),
            "last_sync_error_detail": notes["last_sync_error"],
        }
    return {
        "daemon": daemon,
        "device_id": store.get_meta("device_id"),
        "device_name": store.get_meta("device_name"),
        "last_sync_at": float(last_sync) if last_sync else None,
        "last_sync_error": in_words(sync_error) if sync_error else None,
        "last_sync_error_detail": sync_error,  # the exception, for a developer
        "library_cursor": store.library.library_cursor(),
        "annotations": notes,
        "books": counts,
        "not_delivered": [
            {
                "book_id": b["book_id"],
                "title": b["title"],
                "state": b["state"],
                "readable": b["readable"],
                "progress": _progress(b),
                "why": _why(b, runtime),
                "retries": b["retries"],
                "retry_at": b["retry_at"],
            }
            for b in books
        ],
        "not_delivered_total": sum(n for state, n in counts.items() if state not in _DELIVERED),
        "library_route": LIBRARY_ROUTE,  # every book, paged
        "downloads_paused": (runtime or {}).get("downloads_paused"),
        "power": (runtime or {}).get("power"),  # only a running daemon knows its battery policy
        "storage": _storage(store, runtime),
        "receipts": store.receipts.receipt_status(),
        "notices": store.receipts.recent_notices(STATUS_NOTICES),
    }


def _storage(store: Store, runtime: dict[str, Any] | None) -> dict[str, Any]:
    """The disk and the database: full or not (a running daemon's), damage found while
    running, a damaged database set aside at start, the last idle integrity check."""
    record = store.integrity_record()
    return {
        **(runtime or {}).get("storage", _STOPPED_STORAGE),
        "set_aside": store.set_aside_marker(),
        "wal_lost": store.wal_lost_marker(),
        "integrity": None if record is None else {"at": record.at, "verdict": record.verdict},
    }


def _progress(book: dict[str, Any]) -> float:
    total = book["frames_total"]
    return round(book["frames_held"] / total, 4) if total else 0.0


def _why(book: dict[str, Any], runtime: dict[str, Any] | None) -> str:
    if book["last_error"]:
        return f"last attempt failed ({in_words(book['last_error'])}); retrying"
    planned = (runtime or {}).get("waiting", {}).get(book["book_id"])
    if planned:
        return str(planned)
    if book["state"] == "evicted":
        return "removed to make room; it comes back when there is room"
    if runtime is not None and not runtime.get("online") and not book["frames_held"]:
        return "waiting for a connection to the service"
    if book["state"] == "queued":
        return "queued behind other downloads"
    return "downloading"


def format_status(status: dict[str, Any]) -> str:
    """Status in words, for a person at a terminal."""
    from datetime import UTC, datetime

    def when(ts: float | None) -> str:
        if ts is None:
            return "never"
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    daemon = status["daemon"]
    name = status.get("device_name")
    lines = [
        f"device: {name} ({status['device_id']})" if name else f"device: {status['device_id']}",
        f"daemon: {'running' if daemon.get('running') else 'not running'}"
        + (f", {'online' if daemon.get('online') else 'offline'}" if daemon.get("running") else ""),
        f"last successful sync: {when(status['last_sync_at'])}",
    ]
    trip = daemon.get("trip")
    if trip:
        lines.append(
            f"trip: {trip['days']} day{'s' * (trip['days'] != 1)} offline, until"
            f" {when(trip['until'])} (`shelfsync trip --days {trip['days']}` says how ready)"
        )
        if daemon.get("running") and not daemon.get("online"):
            planned = daemon.get("next_attempt_at") if daemon.get("between_windows") else None
            lines.append("on a trip: " + next_connection_words(planned))
    if status["last_sync_error"]:
        lines.append(f"last sync error: {status['last_sync_error']}")
    for worker, problem in (daemon.get("workers") or {}).items():
        if "error" in problem:
            lines.append(f"{worker}: {problem['error']} ({problem['doing']})")
        if "crashed" in problem:
            crash = problem["crashed"]
            lines.append(f"{worker}: failed and restarted {crash['restarts']}x ({crash['error']})")
    storage = status.get("storage") or {}
    if storage.get("reason"):
        lines.append(f"storage: {storage['mode'].replace('_', '-')}: {storage['reason']}")
    if storage.get("damaged"):
        lines.append(f"storage: {storage['damaged']}")
    set_aside = storage.get("set_aside")
    if set_aside:
        lines.append(
            f"database set aside {when(set_aside['at'])} as damaged ({set_aside['reason']}):"
            f" {set_aside['file']}; its notes exported to {set_aside.get('notes_export')}"
        )
    wal_lost = storage.get("wal_lost")
    if wal_lost:
        lines.append(f"storage ({when(wal_lost['at'])}): {wal_lost['reason']}")
    integrity = storage.get("integrity")
    if integrity and integrity["verdict"] != "ok":
        lines.append(f"integrity check: {integrity['verdict']} ({when(integrity['at'])})")
    if status.get("downloads_paused"):
        lines.append(f"downloads paused: {status['downloads_paused']}")
    notes = status.get("annotations")
    if notes:
        lines.append(_notes_line(notes, when))
    power = status.get("power")
    if power:
        percent = power["battery_percent"]
        lines.append(
            f"battery: {'unknown' if percent is None else f'{percent:.0f}%'}"
            + (", charging" if power["charging"] else "")
            + (", low: only purchases and note pushes run" if power["restricted"] else "")
        )
    receipts = status.get("receipts")
    if receipts and receipts["unsent"]:
        lines.append(f"delivery receipts: {receipts['unsent']} waiting to be sent")
    counts = status["books"]
    lines.append(
        "books: "
        + (
            ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in sorted(counts.items()))
            or "none"
        )
    )
    listed = status["not_delivered"]
    for b in listed:
        title = b["title"] or b["book_id"]
        readable = ", first chapter readable" if b["readable"] else ""
        lines.append(f"  {title}: {b['state']} {b['progress']:.0%}{readable} ({b['why']})")
    more = status.get("not_delivered_total", len(listed)) - len(listed)
    if more > 0:
        route = status.get("library_route", LIBRARY_ROUTE)
        lines.append(f"  ... and {more:,} more not delivered (every book: GET {route})")
    for notice in status.get("notices") or []:
        lines.append(f"notice ({when(notice['at'])}): {notice['message']}")
    return "\n".join(lines)


def _counted(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _notes_line(notes: dict[str, Any], when: Callable[[float | None], str]) -> str:
    """The reader's highlights, notes and bookmarks by their names, and what waits to sync."""
    kinds = notes.get("by_kind") or {}
    held = ", ".join(
        _counted(int(kinds.get(kind, 0)), kind, kind + "s")
        for kind in ("highlight", "note", "bookmark")
    )
    positions = int(notes.get("outbox_positions", 0))
    changes = int(notes["outbox_depth"]) - positions
    waiting = [
        *([_counted(changes, "change", "changes")] if changes else []),
        *([_counted(positions, "reading position", "reading positions")] if positions else []),
    ]
    line = (
        f"highlights, notes and bookmarks: {held} on the device; "
        + (" and ".join(waiting) + " waiting to sync" if waiting else "all synced")
        + f", last synced {when(notes['last_sync_at'])}"
    )
    if notes["rejected"]:
        line += f", {notes['rejected']} refused by the service"
    if notes.get("kept_despite_delete"):
        n = notes["kept_despite_delete"]
        it, it_was = ("it", "it was") if n == 1 else ("them", "they were")
        line += (
            f"; {_counted(n, 'annotation', 'annotations')} kept although another device deleted"
            f" {it}, because {it_was} edited meanwhile"
        )
    if notes.get("last_sync_error"):
        line += f"; last sync failed: {notes['last_sync_error']}"
    return line
