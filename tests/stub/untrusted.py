"""Hostile EPUBs made from real ones: one XML file of a sample-library book rewritten."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path

from server_stub.cli import SAMPLE_LIBRARY

# (book, the XML file to rewrite, its root element): an EPUB 2 NCX, an EPUB 3 package document,
# an EPUB 3 navigation document.
TARGETS = {
    "ncx": ("cwa_christmas_carol.epub", "OEBPS/toc.ncx", "ncx"),
    "opf": ("epubjs_alice.epub", "OPS/package.opf", "package"),
    "nav": ("se_h-g-wells_the-time-machine.epub", "epub/toc.xhtml", "html"),
}

XXE = '<!DOCTYPE {root} [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
PARAMETER_XXE = (
    '<!DOCTYPE {root} [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]>'
)
# The classic billion laughs: ten levels of ten references, 10^9 "lol"s if expanded.
BILLION_LAUGHS = (
    '<!DOCTYPE {root} [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 1 else "") + ";") * 10}">'
        for n in range(1, 10)
    )
    + "]>"
)


def rewrite_epub(source: Path, target: Path, member: str, change: Callable[[bytes], bytes]) -> Path:
    """A copy of the EPUB `source` with `member` changed; every other entry byte for byte, in
    the same order and with the same compression (so 'mimetype' stays first and stored)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            data = original.read(info)
            copy.writestr(info, change(data) if info.filename == member else data)
    return target


def with_doctype(doctype: str, reference: str | None) -> Callable[[bytes], bytes]:
    """Put `doctype` right after the XML declaration and, if given, the entity `reference` into
    the first text after the root element's first child."""

    def change(data: bytes) -> bytes:
        text = data.decode("utf-8")
        declaration = re.match(r"<\?xml[^>]*\?>", text)
        assert declaration, "the sample books' XML files start with a declaration"
        head, body = text[: declaration.end()], text[declaration.end() :]
        if reference is not None:
            body = re.sub(r">([^<\s][^<]*)<", rf">{reference}\1<", body, count=1)
        return (head + "\n" + doctype + body).encode("utf-8")

    return change


def hostile_epub(folder: Path, target: str, doctype: str, reference: str | None) -> Path:
    book, member, root = TARGETS[target]
    name = f"{Path(book).stem}-{target}-hostile.epub"
    change = with_doctype(doctype.format(root=root), reference)
    return rewrite_epub(SAMPLE_LIBRARY / book, folder / name, member, change)
