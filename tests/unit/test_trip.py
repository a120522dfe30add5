"""Trip readiness in a reader's words (issue 23 #2, #3, #7): every missing book by title, the
shared highlights refresh it waits for, and a service that cannot be reached said first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from daemon.content.trip import readiness, trip_end


def book(n: int, state: str = "queued", title: str | None = None) -> dict[str, Any]:
    return {
        "book_id": f"bk_{n:04d}",
        "title": title if title is not None else f"Book number {n}",
        "state": state,
        "archived": False,
        "last_error": None,
    }


def test_every_missing_book_is_named_by_its_title() -> None:
    books = [book(n) for n in range(8)] + [book(9, "complete")]
    report = readiness(7, books, {}, 0, 0, 10**9)
    assert not report["ready"]
    assert len(report["missing"]) == 8
    for n in range(8):
        assert f"Book number {n}: still downloading" in report["sentence"]
    assert "bk_" not in report["sentence"]


def test_a_trip_waits_for_the_shared_highlights_refresh_it_asked_for() -> None:
    report = readiness(1, [book(1, "complete")], {}, 3, 0, 10**9, highlights_refreshed=False)
    assert not report["ready"]
    assert report["sentence"].endswith("Shared highlights: refreshing")
    ready = readiness(1, [book(1, "complete")], {}, 3, 0, 10**9)
    assert ready["ready"]
    assert ready["sentence"] == (
        "Ready for 1 day offline: 1 book, 3 shared highlights, all highlights, notes and"
        " bookmarks synced; 1.0 GB free"
    )


def test_offline_the_trip_says_the_service_cannot_be_reached() -> None:
    report = readiness(3, [book(1, "complete")], {}, 0, 3, 10**9, online=False)
    assert not report["ready"]
    assert "the service cannot be reached" in report["sentence"].lower()


def test_on_a_trip_between_connections_it_says_when_a_book_bought_now_arrives() -> None:
    at_0805 = 1_765_008_300.0  # 2025-12-06 08:05 UTC
    report = readiness(7, [book(1, "complete")], {}, 0, 0, 10**9, online=False)
    assert report["ready"]
    between = readiness(
        7,
        [book(1, "complete")],
        {},
        0,
        0,
        10**9,
        online=False,
        next_attempt_at=at_0805,
        between_windows=True,
    )
    assert between["sentence"].endswith(
        "On a trip: books bought now arrive at the next connection, about 08:05 UTC"
    )
    pending = readiness(
        7, [book(1, "complete")], {}, 0, 2, 10**9, online=False, next_attempt_at=at_0805
    )
    # Not a window's end but a fault: the next try may fail too, so no time is promised.
    assert "cannot be reached" in pending["sentence"]
    assert pending["sentence"].endswith("books bought now arrive at the next connection")


def test_a_trip_lasts_through_its_last_day_to_local_midnight() -> None:
    here = datetime.now(UTC).astimezone().tzinfo
    evening = datetime(2026, 12, 6, 18, 0, tzinfo=here).timestamp()  # a Sunday
    end = datetime.fromtimestamp(trip_end(evening, 7), here)
    assert end == datetime(2026, 12, 14, 0, 0, tzinfo=here)  # after the next Sunday, whole
    morning = datetime(2026, 12, 6, 0, 30, tzinfo=here).timestamp()
    assert trip_end(morning, 7) == trip_end(evening, 7)


def test_under_way_it_tells_how_the_trip_goes_and_being_offline_is_no_fault() -> None:
    at_0805 = 1_765_008_300.0  # 2025-12-06 08:05 UTC
    report = readiness(
        7,
        [book(1, "complete"), book(2, "complete")],
        {},
        12,
        3,
        10**9,
        online=False,
        next_attempt_at=at_0805,
        between_windows=True,
        under_way=True,
    )
    assert report["sentence"] == (
        "On a trip (7 days offline): 2 books, 12 shared highlights, 3 changes to highlights,"
        " notes, bookmarks or reading positions not yet synced; 1.0 GB free. Books bought now"
        " arrive at the next connection, about 08:05 UTC"
    )
    assert not report["ready"]  # still: notes wait to sync
