"""Trip mode: get the device ready for days without a network, and say how ready it is.

A trip asks the planner for more than it fetches day to day: on top of purchases, wanted and
likely books, the most recently ordered books of the archive, about one for every
DAYS_PER_BOOK days away. Readiness is told in a reader's words.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from daemon.errors import in_words
from daemon.store import Store

DAYS_PER_BOOK = 2.0  # a reader on holiday finishes a book in two or three days
MAX_TRIP_DAYS = 90


@dataclass(frozen=True, slots=True)
class Trip:
    days: int
    started_at: float
    until: float


def archive_slots(days: int) -> int:
    return math.ceil(days / DAYS_PER_BOOK)


def start_trip(store: Store, days: int, now: float) -> Trip:
    trip = Trip(days, now, now + days * 86400.0)
    store.set_meta("trip", json.dumps({"days": days, "started_at": now, "until": trip.until}))
    return trip


def trip_state(store: Store, now: float) -> Trip | None:
    """The trip being prepared or under way, if any."""
    raw = store.get_meta("trip")
    if not raw:
        return None
    doc = json.loads(raw)
    trip = Trip(int(doc["days"]), float(doc["started_at"]), float(doc["until"]))
    return trip if now < trip.until else None


def next_connection_words(next_attempt_at: float) -> str:
    """What a trip means for a purchase, in a reader's words: on a trip the radio is off
    between connections, so a book bought now comes at the next one (issue 18)."""
    at = datetime.fromtimestamp(next_attempt_at, UTC).strftime("%H:%M UTC")
    return f"On a trip: books bought now arrive at the next connection, about {at}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def readiness(
    days: int,
    books: list[dict[str, Any]],
    waiting: dict[str, str],
    shared_highlights: int,
    notes_pending: int,
    free_bytes: int,
    *,
    highlights_refreshed: bool = True,
    library_synced: bool = True,
    online: bool = True,
    next_attempt_at: float | None = None,
    between_windows: bool = False,
) -> dict[str, Any]:
    """How ready the device is for `days` offline, with a sentence a reader understands.

    `highlights_refreshed`, `library_synced`: other readers' passages were refreshed, and the
    library pulled from the service, since the trip was asked for (until then a purchase made
    just before may not be known yet, and the count of passages may be old). `online`: the
    service can be reached; while it cannot, the sentence says so first, since nothing missing
    can come until it can; `between_windows`: it is not tried until the trip's next window (the
    radio is off by choice, nothing is wrong). Either way, offline, it says when a book bought
    now arrives: when the device next tries (`next_attempt_at`, wall clock)."""
    ready = [b for b in books if b["state"] == "complete"]
    # The archive books the trip brings down: the most recent orders (`books` is newest first).
    in_cloud = [b["book_id"] for b in books if b["state"] == "in_cloud"]
    archive_held = sum(1 for b in books if b["archived"] and b["state"] != "in_cloud")
    trip_archive = set(in_cloud[: max(0, archive_slots(days) - archive_held)])
    missing = [
        {
            "book_id": b["book_id"],
            "title": b["title"] or "a book not yet described by the service",
            "why": (
                f"last attempt failed ({in_words(b['last_error'])}); retrying"
                if b["last_error"]
                else waiting.get(b["book_id"], "still downloading")
            ),
        }
        for b in books
        if b["state"] != "complete" and (b["state"] != "in_cloud" or b["book_id"] in trip_archive)
    ]
    notes = (
        "all highlights, notes and bookmarks synced"
        if notes_pending == 0
        else f"{_count(notes_pending, 'change', 'changes')} to highlights, notes, bookmarks or"
        " reading positions not yet synced"
    )
    free = (
        f"{free_bytes / 1e9:.1f} GB free"
        if free_bytes >= 1e9
        else f"{free_bytes / 1e6:.0f} MB free"
    )
    summary = (
        f"{_count(len(ready), 'book', 'books')},"
        f" {_count(shared_highlights, 'shared highlight', 'shared highlights')}, {notes}; {free}"
    )
    is_ready = not missing and notes_pending == 0 and highlights_refreshed and library_synced
    away = _count(days, "day", "days")
    if is_ready:
        sentence = f"Ready for {away} offline: {summary}"
        if not online and next_attempt_at is not None:
            sentence += ". " + next_connection_words(next_attempt_at)
    else:
        waits = []
        if not online and not between_windows:
            waits.append("the service cannot be reached (no network?); waiting for it")
        if not online and next_attempt_at is not None:
            waits.append(next_connection_words(next_attempt_at))
        if not library_synced:
            waits.append("library: asking the service for new books")
        if missing:
            waits.append("missing: " + "; ".join(f"{m['title']}: {m['why']}" for m in missing))
        if not highlights_refreshed:
            waits.append("shared highlights: refreshing")
        sentence = f"Not ready for {away} offline yet: {summary}. " + ". ".join(
            w[0].upper() + w[1:] for w in waits
        )
    return {
        "days": days,
        "ready": is_ready,
        "online": online,
        "books_ready": len(ready),
        "missing": missing,
        "shared_highlights": shared_highlights,
        "shared_highlights_refreshed": highlights_refreshed,
        "library_synced": library_synced,
        "notes_pending": notes_pending,
        "free_bytes": free_bytes,
        "sentence": sentence,
    }
