"""OPDS catalog import: an OPDS 1.2 (Atom) or 2.0 (JSON) acquisition feed's URL in, its EPUBs
imported as from a folder (server_stub/catalog.py) out.

The feed is followed page by page (`rel="next"`); each entry's free EPUB acquisition link
(`http://opds-spec.org/acquisition` or `.../acquisition/open-access` with type
`application/epub+zip`) is downloaded, with its cover (`http://opds-spec.org/image`, else the
thumbnail). Everything here comes from outside and is bounded (`OpdsLimits`): the bytes of a
feed page, an EPUB and a cover, the pages followed, the books taken, every request's time. Only
http and https are fetched; a link, or a redirect, to any other scheme is refused. Feeds are
parsed with server_stub/safe_xml.py, which refuses entities. A page or a book that fails is
logged with its URL and the reason, and the rest import.

Calibre's content server, calibre-web and Kavita publish OPDS 1.2; Readium and Thorium-style
servers OPDS 2.0. Buying, borrowing, sampling and indirect acquisitions are not followed: the
stub serves books it can read, not a store front.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import aiohttp

from daemon.errors import ShelfsyncError
from server_stub.catalog import (
    MAX_COVER_BYTES,
    EpubSource,
    ImportReport,
    PackagingSettings,
    import_epubs,
)
from server_stub.logs import kv
from server_stub.safe_xml import MalformedXml, UnsafeXml, parse_xml
from server_stub.store import Cover, Store

log = logging.getLogger("server_stub.opds")

ATOM = "{http://www.w3.org/2005/Atom}"
XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"
EPUB_TYPE = "application/epub+zip"
ACQUISITION = "http://opds-spec.org/acquisition"
FREE_ACQUISITIONS = frozenset({ACQUISITION, ACQUISITION + "/open-access"})
# Full-size first, then thumbnails; calibre-web also writes the pre-1.0 `cover` relation and
# old Stanza catalogs their own.
COVER_RELS = ("http://opds-spec.org/image", "http://opds-spec.org/cover", "x-stanza-cover-image")
THUMBNAIL_RELS = ("http://opds-spec.org/image/thumbnail", "x-stanza-cover-image-thumbnail")
SCHEMES = ("http", "https")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/svg+xml")
CHUNK = 64 * 1024
# What a feed reader wants, for servers that negotiate between a feed and an HTML page.
FEED_TYPES = "application/atom+xml, application/opds+json;q=0.9, application/json;q=0.5"


class OpdsError(ShelfsyncError):
    """A feed page, a book or a cover could not be fetched or read; names the URL and why."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"{_shown(url)}: {problem}")
        self.url = url
        self.problem = problem


@dataclass(frozen=True, slots=True)
class OpdsLimits:
    """What one catalog import may take from the network."""

    max_feed_bytes: int = 4 * 1024 * 1024  # one page: calibre's 100 entries are ~150 KB
    max_pages: int = 200
    max_books: int = 10_000
    max_epub_bytes: int = 256 * 1024 * 1024  # the EPUB reader unpacks at most 1 GiB
    max_cover_bytes: int = MAX_COVER_BYTES
    max_redirects: int = 5
    connect_timeout: float = 10.0  # seconds
    read_timeout: float = 30.0  # seconds without a byte
    request_timeout: float = 600.0  # seconds for one whole response (a 256 MB EPUB on 4 Mbit/s)


@dataclass(frozen=True, slots=True)
class OpdsBook:
    """One entry of a feed that can be imported."""

    title: str
    epub_url: str
    cover_url: str | None


@dataclass(slots=True)
class OpdsPage:
    books: list[OpdsBook] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (entry title, why)
    without_epub: int = 0  # entries with no free EPUB link: other formats, buying, navigation
    next_url: str | None = None


# -- parsing (pure) -------------------------------------------------------------------------------


def parse_feed(data: bytes, url: str, content_type: str = "") -> OpdsPage:
    """A feed page's importable books and its next page; `url` resolves relative links.
    Raises OpdsError if it is neither an OPDS 1 Atom feed nor an OPDS 2 JSON feed."""
    if "json" in content_type or data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return _parse_opds2(data, url)
    return _parse_opds1(data, url)


# Catalogs also put their key in the URL: Kavita as a path segment (/api/opds/<uuid>/...), others
# as a query parameter. A segment that looks like a key is shown as REDACTED; so is the value of
# a parameter named like one.
_KEY_SEGMENT = re.compile(
    r"\A(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{32,})\Z"
)
_KEY_PARAMETERS = frozenset(
    {"apikey", "api_key", "key", "token", "access_token", "auth", "password", "secret"}
)
REDACTED = "REDACTED"


def _public(url: str) -> str:
    """The URL without its user and password (`http://user:password@host/opds` is how a
    catalog behind HTTP basic authentication is named) and without API keys in its path or
    query: never logged, never stored."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    path = "/".join(REDACTED if _KEY_SEGMENT.match(s) else s for s in parts.path.split("/"))
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name.lower() in _KEY_PARAMETERS for name, _ in pairs):
            query = urlencode(
                [(n, REDACTED if n.lower() in _KEY_PARAMETERS else v) for n, v in pairs]
            )
    if (path, query) == (parts.path, parts.query) and parts.geturl() == url:
        return url
    return urlunsplit(parts._replace(path=path, query=query))


def _shown(url: str) -> str:
    """A URL as logs and reports show it: without credentials, and a data: URI or a
    pathological link is not worth 1 MB of log."""
    url = _public(url)
    return url if len(url) <= 200 else url[:200] + "..."


def _http_url(base: str, href: str) -> str | None:
    """`href` resolved against `base`, if it is an http(s) URL."""
    resolved = urljoin(base, href.strip())
    return resolved if urlsplit(resolved).scheme in SCHEMES else None


def _media_type(value: object) -> str:
    return value.split(";", 1)[0].strip().lower() if isinstance(value, str) else ""


def _parse_opds1(data: bytes, url: str) -> OpdsPage:
    try:
        feed = parse_xml(data)
    except UnsafeXml as e:
        raise OpdsError(url, f"the feed is refused: {e} (XML entities are not accepted)") from e
    except MalformedXml as e:
        raise OpdsError(url, f"the feed is not well-formed XML ({e})") from e
    if feed.tag != ATOM + "feed":
        raise OpdsError(url, f"not an OPDS feed: the root element is {feed.tag!r}, not Atom's feed")
    base = urljoin(url, feed.get(XML_BASE, ""))
    page = OpdsPage()
    for link in feed.findall(ATOM + "link"):
        if "next" in (link.get("rel") or "").split() and link.get("href"):
            page.next_url = _http_url(base, link.get("href", ""))
            break
    for entry in feed.findall(ATOM + "entry"):
        entry_base = urljoin(base, entry.get(XML_BASE, ""))
        title = " ".join("".join(entry.findtext(ATOM + "title") or "").split())
        links = [
            (link.get("rel") or "alternate", _media_type(link.get("type")), link.get("href"))
            for link in entry.findall(ATOM + "link")
        ]
        _add_book(page, title, entry_base, [(r, t, h) for r, t, h in links if h], {})
    return page


def _add_book(
    page: OpdsPage,
    title: str,
    base: str,
    links: list[tuple[str, str, str]],
    image_areas: Mapping[str, int],
) -> None:
    """Add the entry whose links are (rel, media type, href) if it has a free EPUB link."""
    epubs = [h for rel, kind, h in links if rel in FREE_ACQUISITIONS and kind == EPUB_TYPE]
    if not epubs:
        page.without_epub += 1
        return
    epub_url = _http_url(base, epubs[0])
    if epub_url is None:
        page.skipped.append((title, f"its EPUB link {_shown(epubs[0])!r} is not http or https"))
        return
    images = [h for rel in COVER_RELS for r, _, h in links if r == rel]
    images.sort(key=lambda href: image_areas.get(href, 0), reverse=True)
    images += [h for rel in THUMBNAIL_RELS for r, _, h in links if r == rel]
    covers = (c for c in (_http_url(base, h) for h in images) if c is not None)
    page.books.append(OpdsBook(title or epub_url, epub_url, next(covers, None)))


def _parse_opds2(data: bytes, url: str) -> OpdsPage:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise OpdsError(url, f"the feed is not JSON ({e})") from e
    if not isinstance(doc, dict) or not any(
        k in doc for k in ("publications", "groups", "navigation")
    ):
        raise OpdsError(url, "not an OPDS 2 feed: no publications, groups or navigation")
    page = OpdsPage()
    for link in _objects(doc.get("links")):
        if "next" in _rels(link) and isinstance(link.get("href"), str):
            page.next_url = _http_url(url, link["href"])
            break
    for publication in _publications(doc):
        metadata = publication.get("metadata")
        title = _title(metadata.get("title") if isinstance(metadata, dict) else None)
        links = [
            (rel, _media_type(link.get("type")), link["href"])
            for link in _objects(publication.get("links"))
            if isinstance(link.get("href"), str)
            for rel in _rels(link)
        ]
        images = [i for i in _objects(publication.get("images")) if isinstance(i.get("href"), str)]
        areas = {i["href"]: _area(i) for i in images}
        for image in images:
            kind = _media_type(image.get("type"))
            rels = _rels(image) or ["http://opds-spec.org/image"]  # images are covers by default
            if not kind or kind in IMAGE_TYPES:
                links += [(rel, kind, image["href"]) for rel in rels]
        _add_book(page, title, url, links, areas)
    return page


def _objects(value: object) -> Iterator[dict[str, Any]]:
    return (v for v in value if isinstance(v, dict)) if isinstance(value, list) else iter(())


def _rels(link: dict[str, Any]) -> list[str]:
    rel = link.get("rel")
    if isinstance(rel, str):
        return [rel]
    return [r for r in rel if isinstance(r, str)] if isinstance(rel, list) else []


def _area(image: dict[str, Any]) -> int:
    width, height = image.get("width"), image.get("height")
    return width * height if isinstance(width, int) and isinstance(height, int) else 0


def _title(value: object) -> str:
    """OPDS 2 titles are a string or a map of language to string."""
    if isinstance(value, dict):
        value = next((v for v in value.values() if isinstance(v, str)), "")
    return " ".join(value.split()) if isinstance(value, str) else ""


def _publications(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from _objects(doc.get("publications"))
    for group in _objects(doc.get("groups")):
        yield from _objects(group.get("publications"))


# -- fetching -------------------------------------------------------------------------------------


async def _get(
    http: aiohttp.ClientSession,
    url: str,
    cap: int,
    limits: OpdsLimits,
    sink: BinaryIO | None = None,
    accept: str = "*/*",
) -> tuple[bytes, str]:
    """GET `url`, following at most `limits.max_redirects` http(s) redirects, reading at most
    `cap` bytes (into `sink`, a binary file, if given). Returns (body or b"", content type)."""
    for _ in range(limits.max_redirects + 1):
        try:
            async with http.get(url, allow_redirects=False, headers={"Accept": accept}) as response:
                if response.status in (301, 302, 303, 307, 308):
                    target = _http_url(url, response.headers.get("Location", ""))
                    if target is None:
                        location = response.headers.get("Location", "")
                        raise OpdsError(url, f"redirects to {_shown(location)!r}, not http(s)")
                    url = target
                    continue
                if response.status != 200:
                    raise OpdsError(url, f"HTTP {response.status} {response.reason or ''}".strip())
                if response.content_length is not None and response.content_length > cap:
                    raise OpdsError(
                        url, f"{response.content_length} bytes, over the limit of {cap}"
                    )
                body = bytearray()
                size = 0
                async for chunk in response.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > cap:
                        raise OpdsError(url, f"more than {cap} bytes, the limit")
                    if sink is None:
                        body += chunk
                    else:
                        sink.write(chunk)
                return bytes(body), response.headers.get("Content-Type", "")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise OpdsError(url, f"cannot fetch it ({type(e).__name__}: {e})") from e
    raise OpdsError(url, f"more than {limits.max_redirects} redirects")


async def read_catalog(
    http: aiohttp.ClientSession, feed_url: str, limits: OpdsLimits
) -> tuple[list[OpdsBook], list[tuple[str, str]]]:
    """Every importable book of the feed, page after page; and (URL, problem) for each page or
    entry that could not be read. Stops at a page seen before, or after `max_pages`."""
    books: list[OpdsBook] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    url: str | None = feed_url
    while url is not None and url not in seen:
        if len(seen) == limits.max_pages:
            problems.append(
                (_shown(url), f"not read: the catalog has more than {limits.max_pages} pages")
            )
            log.warning(kv("opds_pages_limited", feed=_shown(feed_url), pages=limits.max_pages))
            break
        seen.add(url)
        try:
            data, content_type = await _get(
                http, url, limits.max_feed_bytes, limits, accept=FEED_TYPES
            )
            page = parse_feed(data, url, content_type)
        except OpdsError as e:
            problems.append((_shown(url), e.problem))
            log.warning(kv("opds_page_refused", url=_shown(url), problem=e.problem))
            break
        log.info(
            kv(
                "opds_page_read",
                url=_shown(url),
                books=len(page.books),
                skipped=len(page.skipped),
                without_epub=page.without_epub,
            )
        )
        for title, why in page.skipped:
            problems.append((_shown(url), f"entry {title!r}: {why}"))
            log.warning(kv("opds_entry_skipped", url=_shown(url), title=title, problem=why))
        books += page.books
        url = page.next_url
    unique = list({b.epub_url: b for b in books}.values())  # a book listed twice is one book
    if len(unique) > limits.max_books:
        log.warning(kv("opds_books_limited", feed=_shown(feed_url), books=limits.max_books))
        unique = unique[: limits.max_books]
    return unique, problems


async def _cover(http: aiohttp.ClientSession, url: str, limits: OpdsLimits) -> Cover | None:
    """The catalog's cover image, or None (logged) if it cannot be had within the limits."""
    try:
        data, content_type = await _get(http, url, limits.max_cover_bytes, limits)
    except OpdsError as e:
        log.info(kv("opds_cover_skipped", url=_shown(url), problem=e.problem))
        return None
    kind = _media_type(content_type)
    if kind not in IMAGE_TYPES or not data:
        log.info(kv("opds_cover_skipped", url=_shown(url), problem=f"not an image ({kind})"))
        return None
    return Cover("opds", kind, data)


async def import_opds(
    store: Store,
    feed_url: str,
    clock: Callable[[], float] = time.time,
    settings: PackagingSettings | None = None,
    limits: OpdsLimits | None = None,
) -> ImportReport:
    """Import every free EPUB the OPDS catalog at `feed_url` links to into `store`."""
    limits = limits or OpdsLimits()
    report = ImportReport()
    if urlsplit(feed_url).scheme not in SCHEMES:
        report.refused_links.append((_shown(feed_url), "not an http or https URL"))
        log.warning(kv("opds_refused", feed=_shown(feed_url), problem="not http or https"))
        return report
    timeout = aiohttp.ClientTimeout(
        total=limits.request_timeout,
        sock_connect=limits.connect_timeout,
        sock_read=limits.read_timeout,
    )
    with tempfile.TemporaryDirectory(prefix="shelfsync-opds-") as folder:
        sources: list[EpubSource] = []
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=True) as http:
            books, problems = await read_catalog(http, feed_url, limits)
            report.refused_links += problems
            for number, book in enumerate(books):
                path = Path(folder) / f"{number:05d}.epub"
                try:
                    with path.open("wb") as sink:
                        await _get(http, book.epub_url, limits.max_epub_bytes, limits, sink)
                except OpdsError as e:
                    report.refused_links.append((_shown(book.epub_url), e.problem))
                    log.warning(kv("epub_refused", file=_shown(book.epub_url), problem=e.problem))
                    continue
                cover = await _cover(http, book.cover_url, limits) if book.cover_url else None
                sources.append(EpubSource(path, _public(book.epub_url), cover))
        imported = await asyncio.to_thread(import_epubs, store, sources, clock, settings)
    report.merge(imported)
    log.info(
        kv(
            "opds_imported",
            feed=_shown(feed_url),
            imported=len(report.imported),
            updated=len(report.updated),
            unchanged=len(report.unchanged),
            refused=len(report.refused_links),
        )
    )
    return report
