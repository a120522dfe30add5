"""GET /v1/library's pages (daemon/api/library.py): every book once, newest first, whatever the
page size; a state filter; cursors and limits checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.api.answers import Refused
from daemon.api.library import library_page
from daemon.models import LibraryChange
from daemon.store import Store
from tests.builders import NOW

REGISTERED = NOW + 1000  # books ordered before the device joined live in the cloud


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store.open(tmp_path / "shelfsync.db")
    store.set_meta("registered_at", str(REGISTERED))
    # 60 in the cloud, 40 queued for the device; pairs share an ordered_at (the id breaks ties).
    changes = [
        LibraryChange(i + 1, f"bk_{i:03d}", "add", "bought", 1, REGISTERED + (i // 2) - 30)
        for i in range(100)
    ]
    store.library.apply_library_changes(changes, 100, REGISTERED)
    return store


def walk(store: Store, **query: str) -> list[list[str]]:
    """The book ids of every page, following next_cursor to the end."""
    pages = []
    while True:
        page = library_page(store, query)
        pages.append([b["book_id"] for b in page["books"]])
        if page["next_cursor"] is None:
            return pages
        query = {**query, "cursor": page["next_cursor"]}


@pytest.mark.parametrize("limit", ["1", "7", "50", "100", "500"])
def test_pages_list_every_book_once_newest_first(store: Store, limit: str) -> None:
    pages = walk(store, limit=limit)
    everything = [b["book_id"] for b in store.views.library_view()]
    assert [book for page in pages for book in page] == everything
    assert len(everything) == 100
    assert all(len(page) == int(limit) for page in pages[:-1])


def test_a_state_filter_pages_through_those_books_only(store: Store) -> None:
    states = {b["book_id"]: b["state"] for b in store.views.library_view()}
    assert sorted(set(states.values())) == ["in_cloud", "queued"]
    cloud = [book for page in walk(store, limit="9", state="in_cloud") for book in page]
    assert cloud == [b for b in states if states[b] == "in_cloud"]
    assert len(cloud) == 60
    both = [book for page in walk(store, limit="30", state="queued,in_cloud") for book in page]
    assert both == list(states)
    assert walk(store, state="complete") == [[]]


def test_the_default_page_is_100_books(store: Store) -> None:
    page = library_page(store, {})
    assert (len(page["books"]), page["next_cursor"]) == (100, None)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"limit": "0"}, "bad_query"),
        ({"limit": "501"}, "bad_query"),
        ({"limit": "ten"}, "bad_query"),
        ({"state": "complete,lost"}, "bad_query"),
        ({"cursor": "not a cursor"}, "bad_cursor"),
        ({"cursor": "WzEsIDJd"}, "bad_cursor"),  # [1, 2]: well-formed JSON, not a cursor
    ],
)
def test_bad_queries_are_refused(store: Store, query: dict[str, str], code: str) -> None:
    with pytest.raises(Refused) as refused:
        library_page(store, query)
    assert refused.value.response.status == 400
    assert refused.value.response.text is not None
    assert f'"error": "{code}"' in refused.value.response.text
