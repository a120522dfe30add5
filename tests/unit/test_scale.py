"""A large library: the planner is given what it can act on, status stays a screenful, and the
receipt worker does not watch the archive (issue 16). Counted, not timed."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

import apsw

from daemon.api.status import STATUS_BOOKS, build_status, format_status
from daemon.content import plan
from daemon.models import DeliveryCandidate, LibraryChange
from daemon.store import Store
from daemon.store.library import PLAN_WINDOW
from tests.builders import NOW, make_manifest

REGISTERED = float(NOW)
DAY = 86_400.0


def library(tmp_path: Path, archived: int, bought: int) -> Store:
    """A device that joined at REGISTERED, with `archived` books bought over the years before
    it (newest last) and `bought` since."""
    store = Store.open(tmp_path / "device.db")
    store.set_meta("registered_at", repr(REGISTERED))
    changes = [
        LibraryChange(i + 1, f"bk_old{i:05d}", "add", "bought", 1, REGISTERED - DAY - archived + i)
        for i in range(archived)
    ] + [
        LibraryChange(archived + i + 1, f"bk_new{i:05d}", "add", "bought", 1, REGISTERED + i)
        for i in range(bought)
    ]
    for start in range(0, len(changes), 500):  # pages, as the feed gives them
        page = changes[start : start + 500]
        store.library.apply_library_changes(page, page[-1].seq, REGISTERED + bought + 1)
    return store


def starts(candidates: list[DeliveryCandidate], now: float, archive_slots: int) -> list[str]:
    """What the planner starts on a device with room and slots to spare."""
    budget = plan.Budget(10**12, 10**12, 0, battery_restricted=False)
    return plan.plan_deliveries(
        candidates, [], budget, now, set(), 0, 10, archive_slots=archive_slots
    ).start


def test_the_archive_is_left_out_of_the_planners_look_unless_a_trip_wants_some(
    tmp_path: Path,
) -> None:
    store = library(tmp_path, archived=20_000, bought=3)
    now = REGISTERED + DAY
    try:
        picked = {
            c.book_id for c in store.library.delivery_candidates((), 0, now - plan.FRESH_WINDOW_S)
        }
        assert picked == {"bk_new00000", "bk_new00001", "bk_new00002"}
        # Asked for, or running: planned whenever it was bought.
        assert store.library.request_download("bk_old00007", now)
        running = store.library.delivery_candidates(["bk_old00009"], 0, now - plan.FRESH_WINDOW_S)
        assert {c.book_id for c in running} == picked | {"bk_old00007", "bk_old00009"}
        # A trip wants 4 of the archive: its newest, past the ones waiting out a failure; the
        # same starts as planning over the whole archive.
        for book_id in ("bk_old19999", "bk_old19997"):
            store.library.record_delivery_failure(
                book_id, "TransportError: reset", retry_at=now + 60
            )
        whole = store.library.delivery_candidates((), 10**9, now - plan.FRESH_WINDOW_S)
        assert len(whole) == 20_003
        some = store.library.delivery_candidates((), 4, now - plan.FRESH_WINDOW_S)
        assert len(some) < 20
        assert starts(some, now, 4) == [
            "bk_old00007",  # wanted, oldest order first
            *sorted(picked),
            "bk_old19998",
            "bk_old19996",
            "bk_old19995",
            "bk_old19994",
        ]
        for slots in (1, 4, 6):
            limited = store.library.delivery_candidates((), slots, now - plan.FRESH_WINDOW_S)
            assert starts(limited, now, slots) == starts(whole, now, slots)
    finally:
        store.close()


def test_nothing_in_the_archive_makes_the_planner_look_again_later(tmp_path: Path) -> None:
    store = library(tmp_path, archived=5_000, bought=0)
    now = REGISTERED + DAY
    try:
        every = store.library.delivery_candidates((), 10**9, now - plan.FRESH_WINDOW_S)
        budget = plan.Budget(10**12, 10**12, 0, battery_restricted=False)
        decided = plan.plan_deliveries(every, [], budget, now, set(), 0, 1)
        assert decided.start == []
        assert len(decided.waiting) == 5_000
        assert not decided.recheck  # in the cloud until asked: an event, not a timer
        low = plan.Budget(10**12, 10**12, 0, battery_restricted=True)
        assert plan.plan_deliveries(every, [], low, now, set(), 0, 1, archive_slots=1).recheck
    finally:
        store.close()


def test_the_receipt_worker_does_not_watch_an_archive_it_just_heard_of(tmp_path: Path) -> None:
    store = library(tmp_path, archived=5_000, bought=0)
    heard = REGISTERED + 1
    try:
        assert not store.receipts.has_open_deliveries(notified_since=heard - 600)
        store.library.apply_library_changes(
            [LibraryChange(5_001, "bk_bought", "add", "bought", 1, heard)], 5_001, heard
        )
        assert store.receipts.has_open_deliveries(notified_since=heard - 600)
    finally:
        store.close()


def test_status_of_5000_books_waiting_stays_a_screenful(tmp_path: Path) -> None:
    store = library(tmp_path, archived=1_000, bought=5_000)
    try:
        for book_id in ("bk_new00010", "bk_new00020", "bk_new00030"):
            store.library.record_delivery_failure(book_id, "TransportError: reset", retry_at=NOW)
        status = build_status(store, {"running": True, "online": True, "waiting": {}})
        text = format_status(status)
        lines = text.splitlines()
        assert len(lines) <= 40
        assert status["books"] == {"queued": 4_997, "retrying": 3, "in_cloud": 1_000}
        assert status["not_delivered_total"] == 5_000
        # The failing ones first, then the newest orders; the rest counted, not listed.
        listed = [b["book_id"] for b in status["not_delivered"]]
        assert len(listed) == STATUS_BOOKS
        assert listed[:3] == ["bk_new00030", "bk_new00020", "bk_new00010"]
        assert listed[3] == "bk_new04999"
        assert f"... and {5_000 - STATUS_BOOKS:,} more not delivered" in text
        assert "GET /v1/library" in text
        assert len(json.dumps(status)) < 8_000
    finally:
        store.close()


def test_a_step_over_an_owned_library_sees_only_what_it_can_start(tmp_path: Path) -> None:
    """20,000 books ordered since the device joined: each scheduling step is given a window of
    the oldest, past the running and failing ones, and starts what planning over all of them
    would (issue 22 #2)."""
    store = library(tmp_path, archived=0, bought=20_000)
    now = REGISTERED + 20_000 + 60  # the newest are new purchases, the rest wanted
    fresh_since = now - plan.FRESH_WINDOW_S
    try:
        running = ["bk_new00003", "bk_new19999"]
        for book_id in ("bk_new00000", "bk_new00001", "bk_new19500"):
            store.library.record_delivery_failure(
                book_id, "TransportError: reset", retry_at=now + 60
            )
        window = store.library.delivery_candidates(running, 0, fresh_since)
        assert len(window) <= 2 * (PLAN_WINDOW + len(running) + 3) + 3
        assert {"bk_new00000", "bk_new19500", *running} <= {c.book_id for c in window}
        whole = store.library.delivery_candidates(running, 0, None)
        budget = plan.Budget(10**12, 10**12, 0, battery_restricted=False)
        for concurrency in (1, 4, 16):
            slots = concurrency + len(running)
            assert (
                plan.plan_deliveries(window, [], budget, now, running, 1, slots).start
                == plan.plan_deliveries(whole, [], budget, now, running, 1, slots).start
            )
    finally:
        store.close()


def test_a_step_is_given_as_many_books_however_many_fail(tmp_path: Path) -> None:
    """The oldest 5,000 of an owned library failing (a feed ahead of the catalog): a step is
    given the same window past them, the failing ones due soonest and the soonest new purchase,
    and plans as it would over them all (issue 22 #2)."""
    store = library(tmp_path, archived=0, bought=20_000)
    now = REGISTERED + 20_000 + 60  # the newest 660 are new purchases, the rest wanted
    fresh_since = now - plan.FRESH_WINDOW_S
    running = ["bk_new10000"]
    try:
        before = store.library.delivery_candidates(running, 0, fresh_since, now=now)
        with closing(apsw.Connection(str(store.path))) as db, db:  # beside the store's own
            db.executemany(
                "UPDATE deliveries SET failures = 1, retries = 1, retry_at = ? WHERE book_id = ?",
                [(now + 60 + i, f"bk_new{i:05d}") for i in range(5_000)],
            )
        store.library.record_delivery_failure("bk_new19999", "TransportError: reset", now + 9_000)
        window = store.library.delivery_candidates(running, 0, fresh_since, now=now)
        assert len(window) <= len(before) + PLAN_WINDOW + 1
        assert "bk_new19999" in {c.book_id for c in window}  # holds back what is likely next
        whole = store.library.delivery_candidates(running, 0, None)
        assert len(whole) == 20_000
        budget = plan.Budget(10**12, 10**12, 0, battery_restricted=False)
        for concurrency in (1, 4, 16):
            assert (
                plan.plan_deliveries(window, [], budget, now, running, 0, concurrency).start
                == plan.plan_deliveries(whole, [], budget, now, running, 0, concurrency).start
            )
        assert plan.next_retry(window, now, running) == plan.next_retry(whole, now, running)
    finally:
        store.close()


def test_the_bytes_held_are_kept_as_frames_come_and_go(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "device.db")
    try:
        manifest, package = make_manifest([("OEBPS/a.xhtml", b"<p>a</p>" * 5000)])
        store.library.apply_library_changes(
            [LibraryChange(1, "bk_test", "add", "bought", 1, NOW)], 1, NOW
        )
        store.frames.record_manifest(manifest, b"envelope", NOW)
        assert store.frames.books_bytes() == 0
        for idx, frame in enumerate(manifest.frames):
            data = package[frame.offset : frame.offset + frame.length]
            store.frames.commit_frame("bk_test", 1, idx, data, NOW)
        assert (
            store.frames.books_bytes() == len(package) == store.library.held_books()[0].held_bytes
        )
        store.library.evict_book("bk_test", NOW)
        assert store.frames.books_bytes() == 0
    finally:
        store.close()
