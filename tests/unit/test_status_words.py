"""The status in a reader's words (issue 23 #7): highlights, notes and bookmarks by their names,
reading positions as such, no exception text, an error a later sync outdated gone, the device's
name, and a trip in progress (when a book bought now arrives)."""

from __future__ import annotations

import time
from pathlib import Path

from daemon.api.status import build_status, format_status
from daemon.notes.store import NotesStore
from daemon.protocol import annotation_input, merge
from daemon.protocol.hlc import HybridClock
from daemon.store import Store

BOOK = "bk_0123456789abcdef"
ANCHOR = {"resource": "OPS/ch1.xhtml", "start": 10, "end": 20, "quote": {"exact": "Call me"}}
RAW = "TransportError: GET /v1/library/changes: ClientOSError: [Errno 104] Connection reset"


def test_status_names_what_the_reader_made_and_hides_exception_text(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    notes = NotesStore.open(tmp_path / "db")
    clock = HybridClock("dev_0123456789abcdef")
    for n, kind in enumerate(("highlight", "highlight", "bookmark")):
        new = annotation_input.parse_new(
            {"kind": kind, "anchor": {**ANCHOR, "start": n, "end": n + 5}}
        )
        stamp = clock.tick(1_764_000_000_000)
        notes.commit_item_edit(
            merge.create_delta(f"an_item{n:05d}", BOOK, stamp, new), f"op_{n:08d}", stamp, 0.0
        )
    place = {"resource": "OPS/ch1.xhtml", "start": 0, "progress": 0.5}
    stamp = clock.tick(1_764_000_000_000)
    notes.commit_position(merge.position_delta(BOOK, stamp, place), "op_position1", stamp, 0.0)
    store.set_meta("device_name", "Kindle in the kitchen")
    store.set_meta("device_id", "dev_0123456789abcdef")
    store.set_meta("last_sync_error", RAW)
    store.set_meta("last_sync_error_at", repr(time.time()))
    trip = {"days": 7, "until": time.time() + 7 * 86400}
    text = format_status(build_status(store, {"running": True, "online": False, "trip": trip}))
    assert "device: Kindle in the kitchen (dev_0123456789abcdef)" in text
    assert "2 highlights, 0 notes, 1 bookmark on the device" in text
    assert "3 changes and 1 reading position waiting to sync" in text
    assert "last sync error: the service could not be reached" in text
    assert "trip: 7 days offline" in text
    assert "on a trip: books bought now arrive at the next connection\n" in text
    between = {"running": True, "online": False, "trip": trip, "next_attempt_at": time.time()}
    between["between_windows"] = True  # the trip's window ended: the next one is planned
    assert "on a trip: books bought now arrive at the next connection, about" in format_status(
        build_status(store, between)
    )
    for raw in ("TransportError", "Errno", "edits"):
        assert raw not in text

    # The service answers again (the notes synced after the failure): the error is outdated.
    notes.record_sync(time.time() + 1, "")
    assert build_status(store)["last_sync_error"] is None
    assert "last sync error" not in format_status(build_status(store))
    notes.close()
    store.close()


def test_annotations_kept_despite_a_delete_are_counted_in_words(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    notes = NotesStore.open(tmp_path / "db")
    status = build_status(store)
    status["annotations"]["kept_despite_delete"] = 1
    assert "1 annotation kept although another device deleted it, because it was edited" in (
        format_status(status)
    )
    status["annotations"]["kept_despite_delete"] = 4
    assert "4 annotations kept although another device deleted them, because they were" in (
        format_status(status)
    )
    notes.close()
    store.close()
