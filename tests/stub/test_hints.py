"""Series in the catalog, and the service's hints: the next book of a series, samples and the
wish list, each added to the library as a hint that a later order turns into a purchase."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from daemon.protocol.reading import Series
from server_stub.app import RunningStub, running_stub
from server_stub.catalog import import_library
from server_stub.epub import read_epub
from server_stub.store import Store
from tests.conftest import StubImport, import_into_stub
from tests.stub.helpers import Api, series_metadata, with_metadata, with_series

WELLS = "se_h-g-wells_the-time-machine.epub"  # EPUB 3, en-GB
ALICE = "epubjs_alice.epub"  # EPUB 3, en-US
QUICK_START = "calibre_quick_start_eng.epub"  # EPUB 2 by calibre, en
QUICK_START_DE = "calibre_quick_start_deu.epub"  # the same, in German
JLREQ = "idpf_jlreq-in-japanese.epub"  # an OPF with prefixed elements (<opf:metadata>)
HARUKO = "idpf_haruko-html-jpeg.epub"  # Japanese manga, in no series
SERIES = "The Voyagers"


@pytest.mark.parametrize("style", ["epub3", "calibre"])
@pytest.mark.parametrize(
    "name", [WELLS, QUICK_START, pytest.param(JLREQ, marks=pytest.mark.needs_books(JLREQ))]
)
def test_series_is_read_from_the_package_document(
    tmp_path: Path, corpus_dir: Path, name: str, style: str
) -> None:
    assert read_epub(corpus_dir / name).series == ()
    book = with_series(corpus_dir / name, tmp_path / name, "The  Voyagers ", "2", style)
    assert read_epub(book).series == (Series("The Voyagers", 2.0),)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # calibre writes both forms into EPUB 3: one series.
        (
            series_metadata(SERIES, "3") + series_metadata("the voyagers", "3.0", "calibre"),
            (Series(SERIES, 3.0),),
        ),
        # A novella between two books; a position that is not a number is no position.
        (series_metadata(SERIES, "1.5"), (Series(SERIES, 1.5),)),
        (series_metadata(SERIES, "two", "calibre"), (Series(SERIES, None),)),
        (series_metadata(SERIES, "-1"), (Series(SERIES, None),)),
        # A set is a collection but not a series.
        (series_metadata(SERIES, "1").replace(b">series<", b">set<"), ()),
        # A collection refining another describes that collection, not this book.
        (
            b'<meta property="belongs-to-collection" refines="#other">Omnibus</meta>'
            b'<meta refines="#c" property="collection-type">series</meta>',
            (),
        ),
        # Two series at once (a world's chronology and its publication order).
        (
            series_metadata(SERIES, "4")
            + series_metadata("Voyages, by date", "1").replace(b"series-1", b"series-2"),
            (Series(SERIES, 4.0), Series("Voyages, by date", 1.0)),
        ),
    ],
)
def test_series_metadata_edge_cases(
    tmp_path: Path, corpus_dir: Path, extra: bytes, expected: tuple[Series, ...]
) -> None:
    book = with_metadata(corpus_dir / WELLS, tmp_path / WELLS, extra)
    assert read_epub(book).series == expected


@pytest.fixture(scope="module")
def series_import(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> StubImport:
    """A catalog with a series: Wells is book 1, Alice book 2 (calibre's form), the German
    Quick Start also book 2 but in another language, the English one book 3; Haruko has none."""
    library = tmp_path_factory.mktemp("series-library")
    with_series(corpus_dir / WELLS, library / WELLS, SERIES, "1")
    with_series(corpus_dir / ALICE, library / ALICE, SERIES, "2", "calibre")
    with_series(corpus_dir / QUICK_START_DE, library / QUICK_START_DE, SERIES, "2", "calibre")
    with_series(corpus_dir / QUICK_START, library / QUICK_START, SERIES, "3", "calibre")
    shutil.copy(corpus_dir / HARUKO, library / HARUKO)
    data_dir = tmp_path_factory.mktemp("series-data")
    report = import_into_stub(data_dir, library)
    assert not report.refused, report.refused
    return StubImport(data_dir, report, {b.path.name: b.book_id for b in report.imported})


@pytest.fixture
async def series_stub(tmp_path: Path, series_import: StubImport) -> AsyncIterator[RunningStub]:
    data = Path(shutil.copytree(series_import.data_dir, tmp_path / "data"))
    async with running_stub(data) as running:
        yield running


@pytest.fixture
def series_api(http: aiohttp.ClientSession, series_stub: RunningStub) -> Api:
    return Api(http, series_stub.url)


async def _feed(api: Api, device: str) -> list[tuple[str, str, str]]:
    changes = (await api.call("GET", "/v1/library/changes", device))["changes"]
    return [(c["book_id"], c["action"], c["reason"]) for c in changes]


async def test_the_catalog_shows_each_books_series(
    series_api: Api, series_import: StubImport
) -> None:
    ids = series_import.book_ids
    account = await series_api.account()
    books = {
        b["book_id"]: b for b in (await series_api.call("GET", "/v1/catalog", account))["books"]
    }
    assert books[ids[WELLS]]["series"] == [{"name": SERIES, "position": 1}]
    assert books[ids[ALICE]]["series"] == [{"name": SERIES, "position": 2}]
    assert books[ids[HARUKO]]["series"] == []


async def test_buying_book_one_hints_book_two_in_the_same_language(
    series_api: Api, series_import: StubImport
) -> None:
    ids = series_import.book_ids
    account = await series_api.account()
    _, device = await series_api.device(account)
    bought = await series_api.call(
        "POST", "/v1/library/buy", account, {"book_id": ids[WELLS]}, expect=201
    )
    assert [(h["book_id"], h["reason"]) for h in bought["hints"]] == [(ids[ALICE], "series_next")]
    assert await _feed(series_api, device) == [
        (ids[WELLS], "add", "bought"),
        (ids[ALICE], "add", "series_next"),  # not the German book 2
    ]
    changes = (await series_api.call("GET", "/v1/library/changes", device))["changes"]
    assert changes[1]["package_size"] > 0  # the device plans its space before the manifest
    assert bought["hints"][0]["seq"] == changes[1]["seq"] > bought["seq"]
    # The hinted book is in the library: the device may fetch it.
    book = f"/v1/books/{ids[ALICE]}/manifest"
    async with series_api.session.get(
        series_api.url + book, headers={"Authorization": f"Bearer {device}"}
    ) as response:
        assert response.status == 200


async def test_no_hint_for_a_book_already_held_or_without_a_next_one(
    series_api: Api, series_import: StubImport
) -> None:
    ids = series_import.book_ids
    account = await series_api.account()
    _, device = await series_api.device(account)
    await series_api.buy(account, ids[ALICE])  # book 2 first: it hints book 3
    await series_api.buy(account, ids[WELLS])  # book 2 is held already
    await series_api.buy(account, ids[HARUKO])  # no series
    assert await _feed(series_api, device) == [
        (ids[ALICE], "add", "bought"),
        (ids[QUICK_START], "add", "series_next"),
        (ids[WELLS], "add", "bought"),
        (ids[HARUKO], "add", "bought"),
    ]
    # Buying the last book of the series hints nothing; it was hinted, so it becomes bought.
    bought = await series_api.call(
        "POST", "/v1/library/buy", account, {"book_id": ids[QUICK_START]}, expect=201
    )
    assert bought["hints"] == []
    assert (await _feed(series_api, device))[-1] == (ids[QUICK_START], "add", "bought")
    await series_api.call(
        "POST", "/v1/library/buy", account, {"book_id": ids[QUICK_START]}, expect=409
    )


async def test_a_book_sent_to_one_device_hints_the_next_for_that_device(
    series_api: Api, series_import: StubImport
) -> None:
    ids = series_import.book_ids
    account = await series_api.account()
    kindle_id, kindle = await series_api.device(account, "kindle")
    _, kobo = await series_api.device(account, "kobo")
    await series_api.call(
        "POST",
        "/v1/library/send",
        account,
        {"book_id": ids[WELLS], "device_id": kindle_id},
        expect=201,
    )
    assert await _feed(series_api, kindle) == [
        (ids[WELLS], "add", "sent"),
        (ids[ALICE], "add", "series_next"),
    ]
    assert await _feed(series_api, kobo) == []


async def test_samples_and_the_wish_list_are_hints_that_a_purchase_upgrades(
    series_api: Api, series_stub: RunningStub, series_import: StubImport
) -> None:
    ids = series_import.book_ids
    account = await series_api.account()
    kindle_id, kindle = await series_api.device(account, "kindle")
    _, kobo = await series_api.device(account, "kobo")
    sample = {"book_id": ids[HARUKO], "device_id": kindle_id}

    # The same shapes and errors as buy and send.
    await series_api.call("POST", "/v1/library/sample", kindle, sample, expect=401)
    await series_api.call("POST", "/v1/library/wishlist", account, {}, expect=400)
    await series_api.call(
        "POST", "/v1/library/wishlist", account, {"book_id": "bk_nope"}, expect=404
    )
    other_device, _ = await series_api.device(await series_api.account("other"))
    doc = await series_api.call(
        "POST",
        "/v1/library/sample",
        account,
        {"book_id": ids[HARUKO], "device_id": other_device},
        expect=404,
    )
    assert doc["error"] == "unknown_device"

    sampled = await series_api.call("POST", "/v1/library/sample", account, sample, expect=201)
    assert sampled["hints"] == []
    doc = await series_api.call("POST", "/v1/library/sample", account, sample, expect=409)
    assert doc["error"] == "already_on_device"
    wished = await series_api.call(
        "POST", "/v1/library/wishlist", account, {"book_id": ids[WELLS]}, expect=201
    )
    # A hint brings no further hint: only an order of book 1 suggests book 2.
    assert wished["hints"] == []
    doc = await series_api.call(
        "POST", "/v1/library/wishlist", account, {"book_id": ids[WELLS]}, expect=409
    )
    assert doc["error"] == "already_in_library"
    assert await _feed(series_api, kindle) == [
        (ids[HARUKO], "add", "sample"),
        (ids[WELLS], "add", "wishlist"),
    ]
    assert await _feed(series_api, kobo) == [(ids[WELLS], "add", "wishlist")]

    # Buying the sampled book makes it a purchase on every device; the wish-list book too,
    # and that order hints the series' next book.
    headers = {"Authorization": f"Bearer {kobo}"}
    async with series_api.session.ws_connect(f"{series_stub.url}/v1/push", headers=headers) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        await series_api.buy(account, ids[HARUKO])
        bought = await series_api.call(
            "POST", "/v1/library/buy", account, {"book_id": ids[WELLS]}, expect=201
        )
        await ws.receive_json(timeout=5)
        hint_seq = bought["hints"][0]["seq"]
        assert await ws.receive_json(timeout=5) == {"type": "library_changed", "cursor": hint_seq}
    assert await _feed(series_api, kindle) == [
        (ids[HARUKO], "add", "sample"),
        (ids[WELLS], "add", "wishlist"),
        (ids[HARUKO], "add", "bought"),
        (ids[WELLS], "add", "bought"),
        (ids[ALICE], "add", "series_next"),
    ]
    for book in (ids[HARUKO], ids[WELLS]):
        await series_api.call("POST", "/v1/library/buy", account, {"book_id": book}, expect=409)
    # Returning a hinted book removes it like any other.
    returned = await series_api.call(
        "POST", "/v1/library/return", account, {"book_id": ids[ALICE]}, expect=201
    )
    assert (await _feed(series_api, kobo))[-1] == (ids[ALICE], "remove", "returned")
    assert returned["seq"] > hint_seq


async def test_a_sample_sent_to_one_device_becomes_that_devices_purchase(
    series_api: Api, series_import: StubImport
) -> None:
    ids = series_import.book_ids
    account = await series_api.account()
    kindle_id, kindle = await series_api.device(account, "kindle")
    _, kobo = await series_api.device(account, "kobo")
    sample = {"book_id": ids[HARUKO], "device_id": kindle_id}
    await series_api.call("POST", "/v1/library/sample", account, sample, expect=201)
    await series_api.call("POST", "/v1/library/send", account, sample, expect=201)
    await series_api.call("POST", "/v1/library/send", account, sample, expect=409)
    assert await _feed(series_api, kindle) == [
        (ids[HARUKO], "add", "sample"),
        (ids[HARUKO], "add", "sent"),
    ]
    assert await _feed(series_api, kobo) == []


def test_a_catalog_imported_before_series_reads_them_without_repackaging(
    tmp_path: Path, series_import: StubImport
) -> None:
    data = Path(shutil.copytree(series_import.data_dir, tmp_path / "data"))
    store = Store.open(data)
    try:
        # As migration 5 leaves a catalog imported by an older stub: no series, none read.
        with store._transaction() as db:
            db.execute("DELETE FROM book_series")
            db.execute("UPDATE books SET series_read = 0")
        assert store.catalog()[0].series == ()
        library = series_import.report.imported[0].path.parent
        report = import_library(store, library)
        assert len(report.unchanged) == len(series_import.book_ids), report
        assert report.imported == report.updated == []
        book = store.book(series_import.book_ids[WELLS])
        assert book is not None
        assert book.series == (Series(SERIES, 1.0),)
    finally:
        store.close()
