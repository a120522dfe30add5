"""OPDS catalog import: real OPDS 1 and 2 feeds served on loopback, the sample library's EPUBs and
pictures behind their links, imported through the same validation and packaging as a folder."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from server_stub.app import running_stub
from server_stub.catalog import PackagingSettings
from server_stub.cli import LISTENING, SAMPLE_LIBRARY
from server_stub.opds import OpdsError, OpdsLimits, import_opds, parse_feed
from server_stub.store import Store
from tests.stub.helpers import Api
from tests.stub.opds_origin import (
    ALICE,
    ATOM,
    CAROL,
    OPDS2,
    TIME_MACHINE,
    Origin,
    fixture,
    image,
    pointed_at,
    running_origin,
    with_next_atom,
    with_next_json,
)
from tests.stub.untrusted import XXE, hostile_epub

FAST = PackagingSettings(level=1)
WIKI = "readium_wiki_1_1.opds"
FEED_PATH = "/opds-catalogs/unpopular.xml"
ALICE_PICTURE = image(ALICE, "OPS/images/i001_th.jpg")
CAROL_TITLEPAGE = image(CAROL, "OEBPS/7861183851723336211_titlepage.jpg")


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with running_origin(Origin()) as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "data")
    yield opened
    opened.close()


def _wiki(origin: Origin, feed: str | None = None) -> str:
    """The OPDS specification's acquisition feed: its relative links resolve against this
    server, so they need no rewriting. Returns the feed's URL."""
    origin.serve(FEED_PATH, feed or fixture(WIKI), ATOM)
    origin.serve_file("/content/free/4561.epub", CAROL)
    origin.serve("/covers/4561.lrg.png", ALICE_PICTURE, "image/jpeg")
    origin.serve("/covers/4561.thmb.gif", CAROL_TITLEPAGE, "image/jpeg")
    return origin.url + FEED_PATH


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the feeds, parsed ----------------------------------------------------------------------------


def test_opds1_feed_gives_its_free_epub_with_the_full_size_cover() -> None:
    page = parse_feed(fixture(WIKI).encode(), "http://127.0.0.1:9/opds-catalogs/unpopular.xml")
    assert [(b.title, b.epub_url, b.cover_url) for b in page.books] == [
        (
            "Bob, Son of Bob",
            "http://127.0.0.1:9/content/free/4561.epub",
            "http://127.0.0.1:9/covers/4561.lrg.png",
        )
    ]
    assert page.without_epub == 1  # Modern Online Philately is for sale only
    assert page.next_url is None


def test_opds2_feed_takes_open_access_links_and_the_largest_image() -> None:
    text = fixture("opds_test_catalog_publications.json")
    page = parse_feed(text.encode(), "https://test.opds.io/2.0/publications.json", OPDS2)
    # Ten entries offer open access (nine share one link); buy, sample, subscribe, borrow do not.
    assert len(page.books) == 10
    assert page.without_epub == 4
    assert {b.epub_url for b in page.books} == {
        "https://feedbooks.github.io/opds-test-catalog/assets/centredelaterre/file.epub",
        "https://test.opds.io/assets/centredelaterre/file.epub",
    }
    assert {b.cover_url for b in page.books} == {
        "https://test.opds.io/assets/centredelaterre/normal.jpg"
    }
    assert page.books[1].title == "Title in multiple languages"


def test_opds2_groups_are_read_and_webpub_links_are_not_epubs() -> None:
    text = fixture("opds_test_catalog_home.json")
    page = parse_feed(text.encode(), "https://test.opds.io/2.0/home.json", OPDS2)
    assert [b.title for b in page.books] == [
        "Le Mystère de la chambre jaune",  # the feed's own publications, then its groups'
        "Voyage au centre de la Terre",
        "Le Rouge et le Noir",
        "Le Mystère de la chambre jaune",
        "Madame Bovary",
        "Du côté de chez Swann",
    ]
    assert page.without_epub == 4  # Moby-Dick twice, Romeo and Juliet, Jane Eyre: webpub+json
    rouge = page.books[2]
    assert rouge.cover_url == "https://test.opds.io/2.0/assets/rougenoir/normal.jpg"


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"<html><body>a login page</body></html>", "not an OPDS feed"),
        (b'{"title": "not a feed"}', "not an OPDS 2 feed"),
        (b"{", "not JSON"),
        (b"<feed", "not well-formed XML"),
    ],
)
def test_what_is_not_a_feed_is_refused_by_name(document: bytes, problem: str) -> None:
    with pytest.raises(OpdsError, match=problem) as refused:
        parse_feed(document, "http://127.0.0.1:9/feed")
    assert refused.value.url == "http://127.0.0.1:9/feed"


def test_a_feed_with_entities_is_refused() -> None:
    hostile = fixture(WIKI).replace("?>", '?><!DOCTYPE feed [<!ENTITY a "b">]>', 1)
    with pytest.raises(OpdsError, match="declares the XML entity 'a'"):
        parse_feed(hostile.encode(), "http://127.0.0.1:9/feed")


# -- imported from a loopback catalog -------------------------------------------------------------


async def test_opds1_catalog_imports_its_epub_with_the_catalogs_cover(
    origin: Origin, store: Store
) -> None:
    feed = _wiki(origin)
    report = await import_opds(store, feed, settings=FAST)
    assert report.refused_links == []
    [book] = report.imported
    assert book.url == origin.url + "/content/free/4561.epub"
    stored = store.book(book.book_id)
    assert stored is not None
    assert stored.title.startswith("A Christmas Carol")
    assert stored.source == book.url
    assert stored.cover is not None
    assert (stored.cover.origin, stored.cover.sha256) == ("opds", _sha(ALICE_PICTURE))
    # Never fetched: the Mobipocket file, the book for sale, the thumbnail (a full image exists).
    assert sorted(origin.requested) == sorted(
        [FEED_PATH, "/content/free/4561.epub", "/covers/4561.lrg.png"]
    )


async def test_an_unchanged_catalog_imports_again_as_unchanged(
    origin: Origin, store: Store
) -> None:
    feed = _wiki(origin)
    first = await import_opds(store, feed, settings=FAST)
    again = await import_opds(store, feed, settings=FAST)
    assert [b.book_id for b in again.unchanged] == [b.book_id for b in first.imported]
    assert again.imported == again.updated == []


async def test_opds2_catalog_follows_next_and_refuses_the_bad_books_by_link(
    origin: Origin, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Page 1 is the test catalog's publications feed, with a `next` link added to page 2, its
    home feed. Behind the links: three sample books, a hostile one, and three missing."""
    base = origin.url
    first = with_next_json(fixture("opds_test_catalog_publications.json"), "/2.0/home.json")
    origin.serve("/2.0/publications.json", pointed_at(first, base), OPDS2)
    origin.serve("/2.0/home.json", pointed_at(fixture("opds_test_catalog_home.json"), base), OPDS2)
    origin.serve_file("/feedbooks/assets/centredelaterre/file.epub", CAROL)
    origin.serve_file("/assets/centredelaterre/file.epub", ALICE)
    origin.serve_file("/2.0/assets/centredelaterre/file.epub", TIME_MACHINE)
    hostile = hostile_epub(tmp_path, "ncx", XXE, "&xxe;")
    origin.serve_file("/2.0/assets/chambrejaune/file.epub", hostile)
    origin.serve("/assets/centredelaterre/normal.jpg", CAROL_TITLEPAGE, "image/jpeg")
    origin.serve("/2.0/assets/centredelaterre/normal.jpg", ALICE_PICTURE, "image/jpeg")
    caplog.set_level(logging.INFO)

    report = await import_opds(store, base + "/2.0/publications.json", settings=FAST)

    imported = {b.url: store.book(b.book_id) for b in report.imported}
    assert sorted(imported) == [
        base + "/2.0/assets/centredelaterre/file.epub",
        base + "/assets/centredelaterre/file.epub",
        base + "/feedbooks/assets/centredelaterre/file.epub",
    ]
    titles = {url: b.title for url, b in imported.items() if b is not None}
    assert titles[base + "/assets/centredelaterre/file.epub"] == "Alice's Adventures in Wonderland"
    covers = {url: b.cover for url, b in imported.items() if b is not None}
    alice_cover = covers[base + "/assets/centredelaterre/file.epub"]
    assert alice_cover is not None
    assert (alice_cover.origin, alice_cover.sha256) == ("opds", _sha(CAROL_TITLEPAGE))
    assert {c.origin for c in covers.values() if c is not None} == {"opds"}

    refused = dict(report.refused_links)
    for missing in ("rougenoir", "bovary", "swann"):
        assert refused[f"{base}/2.0/assets/{missing}/file.epub"] == "HTTP 404 Not Found"
    assert "OEBPS/toc.ncx is refused" in refused[f"{base}/2.0/assets/chambrejaune/file.epub"]
    assert len(refused) == 4
    # One request for the link nine entries share; the second page once.
    assert origin.requested.count("/assets/centredelaterre/file.epub") == 1
    assert origin.requested.count("/2.0/home.json") == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("event=opds_page_read" in m for m in messages) == 2
    assert any("event=epub_refused" in m and "chambrejaune" in m for m in messages)
    assert any("event=opds_imported" in m and "imported=3" in m for m in messages)


async def test_a_next_link_back_to_a_seen_page_ends_the_walk(origin: Origin, store: Store) -> None:
    feed = _wiki(origin, with_next_atom(fixture(WIKI), FEED_PATH))
    report = await import_opds(store, feed, settings=FAST)
    assert len(report.imported) == 1
    assert origin.requested.count(FEED_PATH) == 1


async def test_pages_are_bounded(
    origin: Origin, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A catalog whose every page links to one more."""

    async def endless(request: web.Request) -> web.StreamResponse:
        page = int(request.query.get("page", "1"))
        feed = with_next_atom(fixture(WIKI), f"{FEED_PATH}?page={page + 1}")
        return web.Response(text=feed, content_type="application/atom+xml")

    feed = _wiki(origin)
    origin.routes[FEED_PATH] = endless
    caplog.set_level(logging.WARNING, logger="server_stub.opds")
    report = await import_opds(store, feed, settings=FAST, limits=OpdsLimits(max_pages=3))
    assert len(report.imported) == 1
    assert report.refused_links == [
        (f"{feed}?page=4", "not read: the catalog has more than 3 pages")
    ]
    assert [p for p in origin.requested if p.startswith(FEED_PATH)] == [
        FEED_PATH,
        f"{FEED_PATH}?page=2",
        f"{FEED_PATH}?page=3",
    ]
    assert any("event=opds_pages_limited" in r.getMessage() for r in caplog.records)


async def test_a_feed_over_its_size_limit_is_refused(origin: Origin, store: Store) -> None:
    feed = _wiki(origin)
    report = await import_opds(store, feed, settings=FAST, limits=OpdsLimits(max_feed_bytes=1000))
    assert report.refused_links == [(feed, "3609 bytes, over the limit of 1000")]
    assert report.imported == []


async def test_an_epub_over_its_size_limit_is_refused_whether_or_not_it_says_its_size(
    origin: Origin, store: Store
) -> None:
    async def unsized(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/epub+zip"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        data = CAROL.read_bytes()
        for start in range(0, len(data), 64 * 1024):
            await response.write(data[start : start + 64 * 1024])
        return response

    feed = _wiki(origin)
    limits = OpdsLimits(max_epub_bytes=200_000)
    sized = await import_opds(store, feed, settings=FAST, limits=limits)
    origin.routes["/content/free/4561.epub"] = unsized
    chunked = await import_opds(store, feed, settings=FAST, limits=limits)
    link = origin.url + "/content/free/4561.epub"
    size = CAROL.stat().st_size
    assert sized.refused_links == [(link, f"{size} bytes, over the limit of 200000")]
    assert chunked.refused_links == [(link, "more than 200000 bytes, the limit")]
    assert store.catalog() == []


async def test_a_cover_over_its_limit_gives_way_to_the_epubs_own(
    origin: Origin, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    feed = _wiki(origin)
    caplog.set_level(logging.INFO, logger="server_stub.opds")
    limits = OpdsLimits(max_cover_bytes=len(ALICE_PICTURE) - 1)
    [book] = (await import_opds(store, feed, settings=FAST, limits=limits)).imported
    cover = store.cover(book.book_id)
    assert cover is not None
    assert (cover.origin, cover.resource) == ("epub", "OEBPS/7861183851723336211_cover.jpg")
    assert cover.data == image(CAROL, "OEBPS/7861183851723336211_cover.jpg")
    assert any("event=opds_cover_skipped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "link", ["file:///etc/passwd", "ftp://127.0.0.1/book.epub", "data:application/epub+zip,PK"]
)
async def test_links_to_other_schemes_are_never_followed(
    origin: Origin, store: Store, link: str, caplog: pytest.LogCaptureFixture
) -> None:
    feed = _wiki(origin, fixture(WIKI).replace("/content/free/4561.epub", link))
    caplog.set_level(logging.WARNING, logger="server_stub.opds")
    report = await import_opds(store, feed, settings=FAST)
    [(page, problem)] = report.refused_links
    assert page == feed
    assert problem == f"entry 'Bob, Son of Bob': its EPUB link {link!r} is not http or https"
    assert origin.requested == [FEED_PATH]
    assert any("event=opds_entry_skipped" in r.getMessage() for r in caplog.records)


async def test_a_redirect_is_followed_within_http_but_never_to_another_scheme(
    origin: Origin, store: Store
) -> None:
    feed = _wiki(origin)
    origin.redirect("/content/free/4561.epub", "/mirror/4561.epub")
    origin.serve_file("/mirror/4561.epub", CAROL)
    followed = await import_opds(store, feed, settings=FAST)
    assert len(followed.imported) == 1
    origin.redirect("/mirror/4561.epub", "file:///etc/passwd")
    refused = await import_opds(store, feed, settings=FAST)
    link = origin.url + "/content/free/4561.epub"
    assert refused.refused_links == [(link, "redirects to 'file:///etc/passwd', not http(s)")]


async def test_a_stalled_download_times_out_and_the_import_goes_on(
    origin: Origin, store: Store
) -> None:
    release = asyncio.Event()

    async def stalled(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/epub+zip"})
        await response.prepare(request)
        await response.write(b"PK")
        await release.wait()
        return response

    feed = _wiki(origin)
    origin.routes["/content/free/4561.epub"] = stalled
    try:
        report = await import_opds(store, feed, settings=FAST, limits=OpdsLimits(read_timeout=0.2))
    finally:
        release.set()
    [(link, problem)] = report.refused_links
    assert link == origin.url + "/content/free/4561.epub"
    assert problem.startswith("cannot fetch it (")
    assert "Timeout" in problem


async def test_a_catalog_that_is_not_http_is_refused(store: Store) -> None:
    report = await import_opds(store, "file:///etc/passwd", settings=FAST)
    assert report.refused_links == [("file:///etc/passwd", "not an http or https URL")]


async def test_an_unreachable_catalog_is_refused_and_the_stub_still_starts(
    tmp_path: Path, origin: Origin
) -> None:
    feed = _wiki(origin)
    async with running_stub(
        tmp_path / "stub",
        opds_urls=["http://127.0.0.1:9/nothing-listens-here.xml", feed],
        packaging=FAST,
    ) as stub:
        assert stub.import_report is not None
        [(url, problem)] = stub.import_report.refused_links
        assert url == "http://127.0.0.1:9/nothing-listens-here.xml"
        assert problem.startswith("cannot fetch it")
        assert len(stub.import_report.imported) == 1


async def test_the_stub_lists_and_serves_the_catalogs_cover(tmp_path: Path, origin: Origin) -> None:
    feed = _wiki(origin)
    async with (
        running_stub(tmp_path / "stub", opds_urls=[feed], packaging=FAST) as stub,
        aiohttp.ClientSession() as http,
    ):
        api = Api(http, stub.url)
        token = await api.account()
        [book] = (await api.call("GET", "/v1/catalog", token))["books"]
        assert book["cover"] == {
            "media_type": "image/jpeg",
            "size": len(ALICE_PICTURE),
            "sha256": _sha(ALICE_PICTURE),
            "origin": "opds",
            "resource": None,
        }
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{stub.url}/v1/books/{book['book_id']}/cover", headers=headers) as r:
            assert r.status == 200
            assert r.content_type == "image/jpeg"
            assert await r.read() == ALICE_PICTURE
        async with http.get(f"{stub.url}/v1/books/bk_none/cover", headers=headers) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "no_cover"


async def test_shelfsync_stub_imports_the_catalogs_named_with_opds(
    tmp_path: Path, origin: Origin
) -> None:
    feed = _wiki(origin)
    empty = tmp_path / "library"
    empty.mkdir()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "server_stub.cli", "--data", str(tmp_path / "data")),
        *("--library", str(empty), "--opds", feed, "--opds", "ftp://127.0.0.1/feed"),
        *("--port", "0", "--zstd-level", "1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith(LISTENING):
            line = await asyncio.wait_for(process.stdout.readline(), timeout=120)
            assert line, "the stub exited before listening"
            lines.append(line.decode().rstrip("\n"))
        assert lines[:2] == [
            "imported 1, updated 0, unchanged 0, refused 1",
            "refused ftp://127.0.0.1/feed: not an http or https URL",
        ]
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert b"event=opds_imported" in stderr
    assert b"Traceback" not in stderr


async def test_a_catalog_behind_basic_authentication_never_shows_its_password(
    origin: Origin, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """calibre-web asks OPDS readers for HTTP basic authentication: the password rides in the
    URL, and stays out of the logs, the report and the catalog."""
    feed = _wiki(origin)
    served = dict(origin.routes)

    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != aiohttp.encode_basic_auth("reader", "s3cret"):
            raise web.HTTPUnauthorized()
        return await served[request.path](request)

    for path in served:
        origin.routes[path] = guarded
    caplog.set_level(logging.INFO)
    with_password = feed.replace("http://", "http://reader:s3cret@")
    report = await import_opds(store, with_password, settings=FAST)
    [book] = report.imported
    assert book.url == origin.url + "/content/free/4561.epub"
    stored = store.book(book.book_id)
    assert stored is not None
    assert stored.source == book.url
    assert not any("s3cret" in r.getMessage() for r in caplog.records)
    unauthorized = await import_opds(store, feed, settings=FAST)
    assert unauthorized.refused_links == [(feed, "HTTP 401 Unauthorized")]


async def test_a_folder_books_own_cover_is_listed(tmp_path: Path) -> None:
    async with (
        running_stub(tmp_path / "stub", library_dir=SAMPLE_LIBRARY, packaging=FAST) as stub,
        aiohttp.ClientSession() as http,
    ):
        api = Api(http, stub.url)
        token = await api.account()
        books = (await api.call("GET", "/v1/catalog", token))["books"]
    covers = {b["title"].split(";")[0]: b["cover"] for b in books}
    carol = covers["A Christmas Carol in Prose"]
    assert carol["origin"] == "epub"
    assert carol["resource"] == "OEBPS/7861183851723336211_cover.jpg"
    assert carol["sha256"] == _sha(image(CAROL, "OEBPS/7861183851723336211_cover.jpg"))
    assert {c["media_type"] for c in covers.values()} == {"image/jpeg", "image/svg+xml"}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://kavita.example/api/opds/8f0a2c1e-5b7d-4e39-9a61-0c2b3d4e5f60/series/12",
            "https://kavita.example/api/opds/REDACTED/series/12",
        ),
        (
            "https://books.example/opds?apikey=s3cretKey&page=2",
            "https://books.example/opds?apikey=REDACTED&page=2",
        ),
        (
            "https://reader:s3cret@books.example/opds/Tk9e7QpL2xVb8Ww3Zr5Yd1Hc6Jm4Ns0A",
            "https://books.example/opds/REDACTED",
        ),
        ("https://www.gutenberg.org/ebooks/1342.epub3.images", None),
    ],
)
def test_a_key_in_a_catalog_url_is_never_shown_or_stored(url: str, shown: str | None) -> None:
    """Kavita puts its API key in the OPDS URL's path, other catalogs in its query: the key
    stays out of the logs and the stored source like a basic-auth password does."""
    assert str(OpdsError(url, "HTTP 404")) == f"{shown or url}: HTTP 404"
