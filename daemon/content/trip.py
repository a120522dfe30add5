"""Trip mode: get the device ready for days without a network, and say how ready it is.

A trip asks the planner for more than it fetches day to day: on top of purchases, wanted and
likely books, the most recently ordered books of the archive, about one for every
DAYS_PER_BOOK days away. Readiness is told in a reader's words.

A trip of N days lasts through the Nth day after the one it is asked on, to local midnight: a
reader who runs `shelfsync trip --days 7` on Sunday evening is away Monday to Sunday, and the
trip's windows (daemon/radio/connectivity.py) hold on that last Sunday evening too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
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
    ready_at: float | None = None  # when it first said ready: the reader may leave from then


def _save(store: Store, trip: Trip) -> None:
    doc = {"days": trip.days, "started_at": trip.started_at, "until": trip.until}
    store.set_meta("trip", json.dumps(doc | ({"ready_at": trip.ready_at} if trip.ready_at else {})))


def archive_slots(days: int) -> int:
    return math.ceil(days / DAYS_PER_BOOK)


def trip_end(started_at: float, days: int) -> float:
    """Local midnight at the end of the `days`th day after the one `started_at` falls on."""
    local = datetime.fromtimestamp(started_at, UTC).astimezone()
    last_day = local.date() + timedelta(days=days + 1)
    # At the start's offset from UTC: a change to summer time on the way moves it by its hour.
    return datetime.combine(last_day, time(), local.tzinfo).timestamp()


def start_trip(store: Store, days: int, now: float) -> Trip:
    trip = Trip(days, now, trip_end(now, days))
    _save(store, trip)
    return trip


def mark_ready(store: Store, trip: Trip, now: float) -> Trip:
    """The trip said ready: from now on it is under way (the reader may have left)."""
    if trip.ready_at is not None:
        return trip
    ready = dataclasses.replace(trip, ready_at=now)
    _save(store, ready)
    return ready


def trip_state(store: Store, now: float) -> Trip | None:
    """The trip being prepared or under way, if any."""
    raw = store.get_meta("trip")
    if not raw:
        return None
    doc = json.loads(raw)
    ready_at = doc.get("ready_at")
    trip = Trip(
        int(doc["days"]),
        float(doc["started_at"]),
        float(doc["until"]),
        None if ready_at is None else float(ready_at),
    )
    return trip if now < trip.until else None


def next_connection_words(planned_at: float | None) -> str:
    """What a trip means for a purchase, in a reader's words: on a trip the radio is off
    between connections, so a book bought now comes at the next one (issue 18), at the time
    the trip planned it (None when it is not planned but waited for: the network is gone)."""
    words = "books bought now arrive at the next connection"
    if planned_at is None:
        return words
    return words + ", about " + datetime.fromtimestamp(planned_at, UTC).strftime("%H:%M UTC")


def _capital(words: str) -> str:
    return words[0].upper() + words[1:]


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
    under_way: bool = False,
) -> dict[str, Any]:
    """How ready the device is for `days` offline, with a sentence a reader understands.

    `highlights_refreshed`, `library_synced`: other readers' passages were refreshed, and the
    library pulled from the service, since the trip was asked for (until then a purchase made
    just before may not be known yet, and the count of passages may be old). `online`: the
    service can be reached; while it cannot, the sentence says so first, since nothing missing
    can come until it can; `between_windows`: it is not tried until the trip's next window at
    `next_attempt_at` (wall clock; the radio is off by choice, nothing is wrong). Offline, it
    says when a book bought now arrives. `under_way`: the trip has said ready once, so the reader
    may be away: the sentence then tells how the trip goes, not how ready it is, and being
    offline is no fault."""
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
    planned = next_attempt_at if between_windows else None
    if under_way:
        sentence = f"On a trip ({away} offline): {summary}"
        if missing:
            sentence += ". Missing: " + "; ".join(f"{m['title']}: {m['why']}" for m in missing)
        if not online:
            sentence += ". " + _capital(next_connection_words(planned))
    elif is_ready:
        sentence = f"Ready for {away} offline: {summary}"
        if not online:
            sentence += ". On a trip: " + next_connection_words(planned)
    else:
        waits = []
        if not online and not between_windows:
            waits.append("the service cannot be reached (no network?); waiting for it")
        if not online:
            waits.append("on a trip: " + next_connection_words(planned))
        if not library_synced:
            waits.append("library: asking the service for new books")
        if missing:
            waits.append("missing: " + "; ".join(f"{m['title']}: {m['why']}" for m in missing))
        if not highlights_refreshed:
            waits.append("shared highlights: refreshing")
        sentence = f"Not ready for {away} offline yet: {summary}. " + ". ".join(
            _capital(w) for w in waits
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
