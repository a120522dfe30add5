"""Where a reader lands in a book, and what that page needs to render (docs/PROTOCOL.md).

Pure: the EPUB's parsed parts in, a `FirstPage` out. The first chapter is, in order:
1. where the publisher marks the text's start: the EPUB 3 landmark `bodymatter`, the EPUB 2 guide
   reference `text` (or `start`), else the first spine document whose body is typed `bodymatter`
   or `chapter`, whatever its size;
2. for a fixed-layout book, its first page (with the facing page of its spread);
3. else the first linear spine document, from where the table of contents begins, that is not
   front or back matter: a cover, title page, contents page, copyright or licence page, imprint,
   colophon, dedication, epigraph, foreword, notes... known by its epub:type, the EPUB 2 guide,
   its name, a Project Gutenberg licence header, or a part-title page with no text to speak of;
4. else the first linear spine document.

What the page needs: its stylesheets (and what they import, and the fonts and images they name),
then the images, SVG, audio and video the document references, in document order; for a fixed
layout book also the facing page and the cover image. A book is readable once these are on the
device, and the service packs them first.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree as ET

from server_stub.safe_xml import MalformedXml, UnsafeXml, parse_xml

EPUB_TYPE = "{http://www.idpf.org/2007/ops}type"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
BODY_TYPES = frozenset({"bodymatter", "chapter", "part"})
# epub:type values (EPUB 3 Structural Semantics) and EPUB 2 guide types a reader skips past.
FRONT_OR_BACK_TYPES = frozenset(
    {
        "cover",
        "titlepage",
        "title-page",
        "halftitlepage",
        "fulltitle",
        "frontmatter",
        "backmatter",
        "toc",
        "landmarks",
        "loi",
        "lot",
        "page-list",
        "copyright-page",
        "colophon",
        "imprint",
        "dedication",
        "epigraph",
        "foreword",
        "preface",
        "acknowledgments",
        "acknowledgements",
        "contributors",
        "other-credits",
        "errata",
        "glossary",
        "bibliography",
        "appendix",
        "notes",
        "rearnotes",
        "endnotes",
        "footnotes",
        "afterword",
        "index",
    }
)
# Words in a document's file name or manifest id that name front or back matter.
FRONT_OR_BACK_NAMES = frozenset(
    {
        "cover",
        "title",
        "titlepage",
        "halftitle",
        "halftitlepage",
        "toc",
        "contents",
        "copyright",
        "license",
        "licence",
        "colophon",
        "imprint",
        "dedication",
        "acknowledgments",
        "acknowledgements",
        "about",
        "readme",
        "frontmatter",
        "backmatter",
        "endnotes",
        "footnotes",
    }
)
TITLE_CLASSES = frozenset({"titlepage", "title-page", "halftitle", "halftitlepage", "cover"})
DIVIDER_TEXT_CHARS = 100  # a part-title page: a heading and nothing else
GUTENBERG_START = re.compile(rb"\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG", re.I)
GUTENBERG_END = re.compile(rb"\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG", re.I)
GUTENBERG_TEXT_AFTER_START = 2000  # fewer characters after the header: it is only the header
CONTENTS_LINK_SHARE = 0.6  # of a document's text inside links to other documents: a contents page
MAX_CSS_DEPTH = 4  # @import chains

_CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]+)\1\s*\)|@import\s+(['"])([^'"]+)\3""", re.I)
_ATTRIBUTE_REF = re.compile(
    rb"""\b(?:src|href|xlink:href|poster|data)\s*=\s*(["'])([^"']+)\1""", re.I
)


@dataclass(frozen=True, slots=True)
class SpineDocument:
    path: str
    item_id: str
    linear: bool
    properties: frozenset[str]  # of the itemref: page-spread-left, page-spread-right, ...


@dataclass(frozen=True, slots=True)
class BookFacts:
    """What the package document and navigation say, as epub.py read them."""

    spine: Sequence[SpineDocument]
    entries: Mapping[str, bytes]  # every file of the EPUB by its full path
    marked_start: str | None  # landmarks bodymatter / guide text, resolved
    guide_types: Mapping[str, str]  # document path -> EPUB 2 guide type
    toc_start: str | None  # the document the table of contents' first entry opens
    nav_documents: frozenset[str]
    fixed_layout: bool
    cover_image: str | None


@dataclass(frozen=True, slots=True)
class FirstPage:
    chapter: str
    needs: tuple[str, ...]  # other resources the page shows, in the order it needs them
    why: str  # which rule chose the chapter: what to read first when a choice looks wrong


def first_page(book: BookFacts) -> FirstPage:
    chapter, why = _choose(book)
    documents = [chapter]
    if book.fixed_layout:
        documents += _facing_page(book.spine, chapter)
    needs: list[str] = []
    for document in documents:
        if document != chapter:
            needs.append(document)
        needs += references(document, book.entries)
    if book.fixed_layout and book.cover_image:
        needs.append(book.cover_image)
    return FirstPage(chapter, tuple(dict.fromkeys(n for n in needs if n != chapter)), why)


def _choose(book: BookFacts) -> tuple[str, str]:
    paths = [d.path for d in book.spine]
    if book.marked_start in paths:
        assert book.marked_start is not None
        return book.marked_start, "marked by the publisher (landmarks or guide)"
    linear = [d for d in book.spine if d.linear] or list(book.spine)
    if book.fixed_layout:
        return linear[0].path, "fixed layout: the first page"
    typed = next((d for d in linear if _body_types(book.entries[d.path]) & BODY_TYPES), None)
    if typed is not None:
        return typed.path, "typed bodymatter or chapter"
    start = next((i for i, d in enumerate(linear) if d.path == book.toc_start), 0)
    for document in linear[start:]:
        if not _front_or_back(document, book):
            return document.path, "first document past the front matter"
    return linear[0].path, "first linear document (all look like front or back matter)"


def _front_or_back(document: SpineDocument, book: BookFacts) -> bool:
    data = book.entries[document.path]
    if document.path in book.nav_documents:
        return True
    if book.guide_types.get(document.path, "").lower() in FRONT_OR_BACK_TYPES:
        return True
    types = _body_types(data)
    if types & BODY_TYPES:
        return False
    if types & FRONT_OR_BACK_TYPES or _body_classes(data) & TITLE_CLASSES:
        return True
    if _name_words(document) & FRONT_OR_BACK_NAMES:
        return True
    return _gutenberg_boilerplate(data) or _is_divider(data) or _is_contents_page(data)


def _name_words(document: SpineDocument) -> set[str]:
    stem = posixpath.basename(document.path).split(".", 1)[0]
    words = set()
    for name in (stem, document.item_id):
        spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
        words |= {w.lower() for w in re.split(r"[^A-Za-z]+", spaced) if w}
        words.add(re.sub(r"[^a-z]", "", name.lower()))
    return words


def _parse(data: bytes) -> ET.Element | None:
    """A content document's tree, parsed as untrusted (safe_xml: no entity ever expands); None
    for HTML that is not XML, or that declares entities, for the fallbacks below."""
    try:
        return parse_xml(data)
    except (MalformedXml, UnsafeXml):
        return None


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _body(root: ET.Element | None) -> ET.Element | None:
    if root is None:
        return None
    return next((e for e in root.iter() if _local(e.tag) == "body"), None)


def _body_types(data: bytes) -> set[str]:
    """epub:type of the body and of its top-level sections."""
    body = _body(_parse(data))
    if body is None:
        return set()
    types = set((body.get(EPUB_TYPE) or "").split())
    for child in body:
        if _local(child.tag) in ("section", "article", "div"):
            types |= set((child.get(EPUB_TYPE) or "").split())
    return types


def _body_classes(data: bytes) -> set[str]:
    body = _body(_parse(data))
    if body is None:
        return set()
    classes = set((body.get("class") or "").lower().split())
    for child in body:
        classes |= set((child.get("class") or "").lower().split())
    return classes


def _text_of(data: bytes) -> str:
    body = _body(_parse(data))
    if body is not None:
        return " ".join("".join(body.itertext()).split())
    text = re.sub(rb"<[^>]*>", b" ", data.split(b"<body", 1)[-1])
    return " ".join(text.decode("utf-8", "replace").split())


def _gutenberg_boilerplate(data: bytes) -> bool:
    start = GUTENBERG_START.search(data)
    if start is not None:
        after = re.sub(rb"<[^>]*>", b" ", data[start.end() :])
        return len(b" ".join(after.split())) < GUTENBERG_TEXT_AFTER_START
    end = GUTENBERG_END.search(data)
    return end is not None and end.start() < len(data) // 4


def _is_divider(data: bytes) -> bool:
    root = _parse(data)
    media = root is not None and any(_local(e.tag) in ("img", "image", "svg") for e in root.iter())
    return not media and len(_text_of(data)) < DIVIDER_TEXT_CHARS


def _is_contents_page(data: bytes) -> bool:
    body = _body(_parse(data))
    if body is None:
        return False
    links = [
        e
        for e in body.iter()
        if _local(e.tag) == "a" and e.get("href") and not urlsplit(e.get("href", "")).scheme
    ]
    linked = sum(len(" ".join("".join(a.itertext()).split())) for a in links)
    total = len(" ".join("".join(body.itertext()).split()))
    return len(links) >= 5 and total > 0 and linked / total >= CONTENTS_LINK_SHARE


def _facing_page(spine: Sequence[SpineDocument], chapter: str) -> list[str]:
    """The other page of the chapter's spread, if the spine pairs it with the next page."""
    index = next(i for i, d in enumerate(spine) if d.path == chapter)
    here = spine[index].properties
    if index + 1 >= len(spine) or not here & {"page-spread-left", "page-spread-right"}:
        return []
    there = spine[index + 1].properties
    pairs = ("page-spread-left" in here and "page-spread-right" in there) or (
        "page-spread-right" in here and "page-spread-left" in there
    )
    return [spine[index + 1].path] if pairs else []


def references(document: str, entries: Mapping[str, bytes]) -> list[str]:
    """What a content document shows: stylesheets first (with what they import and name), then
    its images, SVG and media in document order; only files the EPUB holds."""
    data = entries.get(document, b"")
    base = posixpath.dirname(document)
    styles: list[str] = []
    media: list[str] = []
    root = _parse(data)
    if root is None:
        for match in _ATTRIBUTE_REF.finditer(data):
            target = _resolve(base, match.group(2).decode("utf-8", "replace"))
            if target is not None and target in entries:
                (styles if target.lower().endswith(".css") else media).append(target)
    else:
        for element in root.iter():
            name = _local(element.tag)
            if name == "link" and "stylesheet" in (element.get("rel") or "").lower().split():
                styles.append(_resolve(base, element.get("href", "")) or "")
            elif name == "style" and element.text:
                media += _css_references(element.text, base, entries, 0)
            elif name in ("img", "source", "audio", "video", "track", "embed", "input"):
                media += [_resolve(base, element.get(a) or "") or "" for a in ("src", "poster")]
            elif name == "image":
                href = element.get(XLINK_HREF) or element.get("href") or ""
                media.append(_resolve(base, href) or "")
            elif name == "object":
                media.append(_resolve(base, element.get("data") or "") or "")
            if element.get("style"):
                media += _css_references(element.get("style", ""), base, entries, 0)
    found: list[str] = []
    for sheet in styles:
        if sheet in entries:
            found.append(sheet)
            found += _css_references(
                entries[sheet].decode("utf-8", "replace"), posixpath.dirname(sheet), entries, 1
            )
    found += media
    return list(dict.fromkeys(p for p in found if p in entries and p != document))


def _css_references(css: str, base: str, entries: Mapping[str, bytes], depth: int) -> list[str]:
    found: list[str] = []
    for match in _CSS_URL.finditer(css):
        target = _resolve(base, match.group(2) or match.group(4) or "")
        if target is None or target not in entries:
            continue
        found.append(target)
        if target.lower().endswith(".css") and depth < MAX_CSS_DEPTH:
            found += _css_references(
                entries[target].decode("utf-8", "replace"),
                posixpath.dirname(target),
                entries,
                depth + 1,
            )
    return found


def _resolve(base: str, href: str) -> str | None:
    href = href.strip()
    if not href or href.startswith(("#", "//", "data:")) or urlsplit(href).scheme:
        return None
    target = unquote(href.split("#", 1)[0])
    joined = posixpath.normpath(posixpath.join(base, target))
    if joined == ".." or joined.startswith(("../", "/")):
        return None
    return joined
