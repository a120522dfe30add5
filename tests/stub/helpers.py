"""Test helpers for the stub: a synthetic EPUB builder and a small JSON API client."""

from __future__ import annotations

import random
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from daemon.protocol.crypto import x25519_public_text
from tests.builders import DEVICE_KEY

CONTAINER = b"""<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles>
    <rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>
  </rootfiles>
</container>"""

OPF = """<?xml version="1.0" encoding="UTF-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="uid">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/">
    <dc:identifier id="uid">{identifier}</dc:identifier>
    <dc:title>{title}</dc:title>
    <dc:creator>Ada Author</dc:creator>
    <dc:creator>Bo Writer</dc:creator>
    <dc:language>{language}</dc:language>
  </metadata>
  <manifest>
    <item id="fig" href="images/fig%201.png" media-type="image/png"/>
    <item id="ch2" href="text/ch2.xhtml" media-type="application/xhtml+xml"/>
    <item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>
    <item id="cover" href="images/cover.png" media-type="image/png" properties="cover-image"/>
    <item id="title" href="text/title.xhtml" media-type="application/xhtml+xml"/>
    <item id="ch1" href="text/ch1.xhtml" media-type="application/xhtml+xml"/>
    <item id="css" href="style.css" media-type="text/css"/>
    <item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>
    <item id="notes" href="text/notes.xhtml" media-type="application/xhtml+xml"/>
    <item id="remote" href="https://example.org/font.woff" media-type="font/woff"/>
  </manifest>
  <spine toc="ncx">
    <itemref idref="title"/>
    <itemref idref="notes" linear="no"/>
    <itemref idref="ch1"/>
    <itemref idref="ch2"/>
  </spine>
</package>"""

NAV = b"""<?xml version="1.0" encoding="UTF-8"?>
<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">
<head><title>Contents</title></head><body>
<nav epub:type="landmarks"><ol><li><a href="text/ch2.xhtml">Landmark</a></li></ol></nav>
<nav epub:type="toc"><ol>
  <li><a href="text/ch1.xhtml">Chapter
      One</a><ol><li><a href="text/ch1.xhtml#part-2">Part two</a></li></ol></li>
  <li><span>Later</span><ol><li><a href="text/ch2.xhtml">Chapter Two</a></li></ol></li>
</ol></nav></body></html>"""

NCX = b"""<?xml version="1.0" encoding="UTF-8"?>
<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1">
<navMap>
  <navPoint id="p1"><navLabel><text>NCX One</text></navLabel><content src="text/ch1.xhtml"/>
    <navPoint id="p2"><navLabel><text>NCX Deeper</text></navLabel>
      <content src="text/ch1.xhtml#deep"/></navPoint>
  </navPoint>
  <navPoint id="p3"><navLabel><text>NCX Two</text></navLabel><content src="text/ch2.xhtml"/>
  </navPoint>
</navMap></ncx>"""


def chapter(words: str, repeat: int) -> bytes:
    body = "".join(f"<p>{words} {i}</p>\n" for i in range(repeat))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>t</title></head>'
        f"<body>{body}</body></html>"
    ).encode()


# Reading order the stub must produce for the default book (PROTOCOL.md "The manifest").
EXPECTED_ORDER = [
    "mimetype",
    "META-INF/container.xml",
    "OEBPS/content.opf",
    "OEBPS/nav.xhtml",
    "OEBPS/toc.ncx",
    "OEBPS/style.css",
    "OEBPS/images/cover.png",
    "OEBPS/text/ch1.xhtml",  # the first chapter, and what it shows, before the spine
    "OEBPS/text/title.xhtml",
    "OEBPS/text/notes.xhtml",
    "OEBPS/text/ch2.xhtml",
    "OEBPS/images/fig 1.png",
    "OEBPS/extra.txt",
]


def epub_files(
    identifier: str = "urn:uuid:00000000-test-book",
    title: str = "A Test Book",
    language: str = "en",
    text: str = "It was a dark and stormy night",
) -> dict[str, bytes]:
    """The default book's files, in a ZIP order deliberately unlike the reading order."""
    return {
        "OEBPS/extra.txt": b"not in the manifest",
        "OEBPS/text/ch2.xhtml": chapter(text + " (two)", 400),
        "META-INF/container.xml": CONTAINER,
        # Incompressible, so packages span several frames and several 64 KiB writes.
        "OEBPS/images/fig 1.png": b"\x89PNG" + random.Random(text).randbytes(300_000),
        "OEBPS/text/ch1.xhtml": chapter(text, 200),
        "OEBPS/content.opf": OPF.format(
            identifier=identifier, title=title, language=language
        ).encode(),
        "OEBPS/text/notes.xhtml": chapter("notes", 100),
        "OEBPS/images/cover.png": b"\x89PNG cover" * 40,
        "OEBPS/style.css": b"p { margin: 0 }",
        "OEBPS/text/title.xhtml": chapter("title", 1),
        "OEBPS/nav.xhtml": NAV,
        "OEBPS/toc.ncx": NCX,
    }


def write_epub(
    path: Path,
    files: dict[str, bytes] | None = None,
    *,
    mimetype: bytes | None = b"application/epub+zip",
    mimetype_first: bool = True,
    mimetype_method: int = zipfile.ZIP_STORED,
    directories: bool = False,
) -> Path:
    """Write an EPUB: `mimetype` (unless None) then `files` in their order, deflated."""
    files = epub_files() if files is None else files
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        if mimetype is not None and mimetype_first:
            z.writestr("mimetype", mimetype, compress_type=mimetype_method)
        if directories:
            z.writestr(zipfile.ZipInfo("OEBPS/"), b"")
        for name, data in files.items():
            z.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
        if mimetype is not None and not mimetype_first:
            z.writestr("mimetype", mimetype, compress_type=mimetype_method)
    return path


def rewrite_epub(src: Path, dst: Path, edit: Callable[[str, bytes], bytes]) -> Path:
    """Copy the EPUB `src` to `dst` entry by entry (same order, same compression), each
    entry's bytes passed through `edit(name, data)`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info)))
    return dst


def package_document(epub: Path) -> str:
    """The OPF's path inside the EPUB, as META-INF/container.xml names it."""
    with zipfile.ZipFile(epub) as z:
        container = z.read("META-INF/container.xml").decode()
    match = re.search(r'full-path="([^"]+)"', container)
    assert match, f"{epub} names no rootfile"
    return match.group(1)


def series_metadata(name: str, position: str, style: str = "epub3") -> bytes:
    """Series metadata as a publisher writes it: EPUB 3 `belongs-to-collection` or calibre's."""
    if style == "calibre":
        return (
            f'<meta name="calibre:series" content="{name}"/>'
            f'<meta name="calibre:series_index" content="{position}"/>'
        ).encode()
    return (
        f'<meta property="belongs-to-collection" id="series-1">{name}</meta>'
        '<meta refines="#series-1" property="collection-type">series</meta>'
        f'<meta refines="#series-1" property="group-position">{position}</meta>'
    ).encode()


def with_metadata(src: Path, dst: Path, extra: bytes) -> Path:
    """A copy of the EPUB `src` at `dst` whose package document carries `extra` metadata."""
    opf = package_document(src)

    def edit(name: str, data: bytes) -> bytes:
        if name != opf:
            return data
        edited, n = re.subn(rb"</(\w+:)?metadata>", lambda m: extra + m.group(0), data, count=1)
        assert n == 1, f"{src.name}: no </metadata> in {opf}"
        return edited

    return rewrite_epub(src, dst, edit)


def with_series(src: Path, dst: Path, name: str, position: str, style: str = "epub3") -> Path:
    """A copy of the corpus EPUB `src` at `dst` as book `position` of the series `name`."""
    return with_metadata(src, dst, series_metadata(name, position, style))


class Api:
    """A JSON client for the stub's API, for tests."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        expect: int = 200,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.url + path, json=body, headers=headers
        ) as response:
            doc = await response.json()
            assert response.status == expect, (response.status, doc)
            return doc

    async def account(self, name: str = "reader") -> str:
        doc = await self.call("POST", "/v1/accounts", body={"name": name}, expect=201)
        assert doc["account_id"].startswith("acct_")
        return str(doc["account_token"])

    async def device(self, account_token: str, name: str = "kindle") -> tuple[str, str]:
        body = {"name": name, "public_key": x25519_public_text(DEVICE_KEY)}
        doc = await self.call("POST", "/v1/devices", account_token, body, expect=201)
        return str(doc["device_id"]), str(doc["device_token"])

    async def buy(self, account_token: str, book_id: str) -> int:
        doc = await self.call(
            "POST", "/v1/library/buy", account_token, {"book_id": book_id}, expect=201
        )
        return int(doc["seq"])
