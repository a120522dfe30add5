"""Trip readiness in a reader's words (issue 23 #2, #3, #7): every missing book by title, the
shared highlights refresh it waits for, and a service that cannot be reached said first."""

from __future__ import annotations

from typing import Any

from daemon.content.trip import readiness


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
