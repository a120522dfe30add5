"""EPUB reading and validation: a ZIP file path in, an `Epub` value out, no other effects.

The checks are those of a strict OCF reader (the ones the corpus' SOURCES.md lists), so a file the
service accepts can be packaged and read back exactly. A refused file raises `EpubError` naming the
file and the problem. The resource order is the reading order of docs/PROTOCOL.md ("The manifest").
"""

from __future__ import annotations

import math
import mimetypes
import posixpath
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree as ET

from daemon.errors import ShelfsyncError
from daemon.protocol.manifest import TocEntry, check_resource_path
from daemon.protocol.reading import (
    LAYOUTS,
    MAX_LABEL,
    SPREADS,
    Landmark,
    Page,
    Reading,
    Series,
    SpineItem,
)
from server_stub.first_page import BookFacts, SpineDocument, first_page
from server_stub.safe_xml import MalformedXml, UnsafeXml, parse_xml

MIMETYPE = b"application/epub+zip"
CONTAINER = "META-INF/container.xml"
MAX_ENTRIES = 50_000  # mahabharata has 2,020; far more is a hostile ZIP, not a book
MAX_UNPACKED = 1024 * 1024 * 1024  # declared sizes, summed: a ZIP bomb stops here
MAX_TOC_DEPTH = 16  # daemon.protocol.manifest refuses deeper tables of contents

_EPUB_TYPE = "{http://www.idpf.org/2007/ops}type"
# RFC 6838 type/subtype names; anything else in an OPF falls back to a guess by extension.
_MEDIA_TYPE = re.compile(r"\A[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\Z")
# Fixed table first, so the media types in a stored manifest do not depend on the host's
# /etc/mime.types; `mimetypes` only for extensions an EPUB rarely carries.
_BY_EXTENSION = {
    ".xhtml": "application/xhtml+xml",
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".xml": "application/xml",
    ".opf": "application/oebps-package+xml",
    ".ncx": "application/x-dtbncx+xml",
    ".smil": "application/smil+xml",
    ".pls": "application/pls+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".otf": "font/otf",
    ".ttf": "font/ttf",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".js": "application/javascript",
    ".mp3": "audio/mpeg",
    ".mp4": "video/mp4",
    ".txt": "text/plain",
}


class EpubError(ShelfsyncError):
    """An EPUB file is malformed; `problem` says what a publisher or operator must fix."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class UnsafeXmlError(EpubError):
    """An XML file of the EPUB (`member`) declares or references entities: an XXE or an entity
    bomb, never a book's need. The whole EPUB is refused, not only that file."""

    def __init__(self, path: Path, member: str, reason: str) -> None:
        super().__init__(path, f"{member} is refused: {reason} (XML entities are not accepted)")
        self.member = member
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EpubFile:
    """One file of the EPUB, with the bytes exactly as the publisher wrote them."""

    path: str
    media_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Epub:
    source: Path
    identifier: str  # the OPF's unique identifier
    title: str
    authors: tuple[str, ...]
    language: str
    files: tuple[EpubFile, ...]  # every file once, in reading order
    first_chapter: str
    toc: tuple[TocEntry, ...]
    series: tuple[Series, ...] = ()  # usually one; EPUB 3 allows several
    first_chapter_needs: tuple[str, ...] = ()  # what its first page shows (first_page.py)
    reading: Reading = field(default_factory=Reading)  # how to lay it out (PROTOCOL.md)
    cover: str | None = None  # the cover image's path, if the package document names one
    toc_problems: tuple[str, ...] = ()  # navigation documents skipped as unreadable, and why

    def file(self, path: str) -> EpubFile | None:
        return next((f for f in self.files if f.path == path), None)


@dataclass(frozen=True, slots=True)
class _Item:
    id: str
    path: str | None  # full path in the ZIP; None for a remote resource
    media_type: str | None
    properties: frozenset[str]
    media_overlay: str | None = None  # the manifest id of the SMIL that narrates it


def read_epub(path: Path) -> Epub:
    """Read and validate the EPUB at `path`; raise EpubError if it is malformed."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise EpubError(path, f"not a ZIP archive ({e})") from e
    except OSError as e:
        raise EpubError(path, f"cannot read the file ({e.strerror or e})") from e
    with archive:
        _check_mimetype(path, archive)
        entries = _read_entries(path, archive)
    return _read_publication(path, entries)


def _check_mimetype(path: Path, archive: zipfile.ZipFile) -> None:
    infos = archive.infolist()
    if not any(i.filename == "mimetype" for i in infos):
        raise EpubError(path, "the 'mimetype' entry is missing")
    first = infos[0]
    if first.filename != "mimetype":
        raise EpubError(
            path, f"'mimetype' is not the first ZIP entry (the first is {first.filename!r})"
        )
    if first.compress_type != zipfile.ZIP_STORED:
        raise EpubError(path, "the 'mimetype' entry is compressed; OCF requires it STORED")


def _read_entries(path: Path, archive: zipfile.ZipFile) -> dict[str, bytes]:
    """Every file entry's bytes, in ZIP order. Reading checks each CRC, as testzip() would."""
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise EpubError(path, f"{len(infos)} ZIP entries, over the limit of {MAX_ENTRIES}")
    declared = sum(i.file_size for i in infos)
    if declared > MAX_UNPACKED:
        raise EpubError(path, f"unpacks to {declared} bytes, over the limit of {MAX_UNPACKED}")
    entries: dict[str, bytes] = {}
    for info in infos:
        if info.is_dir():
            continue
        name = info.filename
        try:
            check_resource_path(name)
        except ValueError as e:
            raise EpubError(path, f"ZIP entry {name[:200]!r} has an unsafe path: {e}") from e
        if name in entries:
            raise EpubError(path, f"ZIP entry {name!r} appears twice")
        try:
            entries[name] = archive.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise EpubError(path, f"ZIP entry {name!r} is corrupt ({e})") from e
        except NotImplementedError as e:
            raise EpubError(path, f"ZIP entry {name!r} uses an unsupported method ({e})") from e
        except RuntimeError as e:  # zipfile's way of saying "encrypted, password required"
            raise EpubError(path, f"ZIP entry {name!r} cannot be read ({e})") from e
    if entries["mimetype"] != MIMETYPE:
        raise EpubError(
            path, f"'mimetype' holds {entries['mimetype'][:60]!r}, not 'application/epub+zip'"
        )
    return entries


def _local(tag: object) -> str:
    """An element's name without its namespace (OPF files use every prefix convention)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(parent: ET.Element, name: str) -> Iterator[ET.Element]:
    return (c for c in parent if _local(c.tag) == name)


def _first(parent: ET.Element, name: str) -> ET.Element | None:
    return next((e for e in parent.iter() if _local(e.tag) == name), None)


def _text(element: ET.Element) -> str:
    return " ".join("".join(element.itertext()).split())


def _parse_xml(path: Path, name: str, data: bytes) -> ET.Element:
    try:
        return parse_xml(data)
    except UnsafeXml as e:
        raise UnsafeXmlError(path, name, str(e)) from e
    except MalformedXml as e:
        raise EpubError(path, f"{name} is not well-formed XML ({e})") from e


def _is_remote(href: str) -> bool:
    return bool(urlsplit(href).scheme) or href.startswith("//")


def _resolve(base_dir: str, href: str) -> str | None:
    """The full ZIP path an href names (percent-decoded, fragment dropped); None if outside."""
    target = unquote(href.split("#", 1)[0])
    if not target:
        return None
    joined = posixpath.normpath(posixpath.join(base_dir, target))
    if joined == ".." or joined.startswith(("../", "/")):
        return None
    return joined


def _toc_href(base_dir: str, href: str) -> str:
    """The book path (with its fragment) a TOC link names; "" for a link out of the book, which
    a device refuses in a manifest (a `javascript:` or a web link is no place in the book)."""
    if _is_remote(href):
        return ""
    fragment = href.split("#", 1)[1] if "#" in href else ""
    resolved = _resolve(base_dir, href) or ""
    return resolved + ("#" + fragment if fragment else "")


def _guess_media_type(name: str) -> str:
    if name == "mimetype":
        return "text/plain"
    if name == CONTAINER:
        return "application/xml"
    extension = posixpath.splitext(name)[1].lower()
    if extension in _BY_EXTENSION:
        return _BY_EXTENSION[extension]
    guessed, _ = mimetypes.guess_type(name, strict=True)
    return guessed if guessed and _MEDIA_TYPE.match(guessed) else "application/octet-stream"


def _clean_media_type(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.split(";", 1)[0].strip().lower()
    return value if _MEDIA_TYPE.match(value) else None


def _rootfile(path: Path, entries: dict[str, bytes]) -> str:
    if CONTAINER not in entries:
        raise EpubError(path, f"{CONTAINER} is missing")
    container = _parse_xml(path, CONTAINER, entries[CONTAINER])
    rootfiles = [r for r in container.iter() if _local(r.tag) == "rootfile" and r.get("full-path")]
    if not rootfiles:
        raise EpubError(path, f"{CONTAINER} names no rootfile")
    preferred = [
        r for r in rootfiles if r.get("media-type") == "application/oebps-package+xml"
    ] or rootfiles
    opf_path = preferred[0].get("full-path", "")
    if opf_path not in entries:
        raise EpubError(path, f"the package document {opf_path!r} named in {CONTAINER} is missing")
    return opf_path


def _read_publication(path: Path, entries: dict[str, bytes]) -> Epub:
    opf_path = _rootfile(path, entries)
    opf_dir = posixpath.dirname(opf_path)
    package = _parse_xml(path, opf_path, entries[opf_path])
    if _local(package.tag) != "package":
        raise EpubError(path, f"{opf_path}: the root element is {_local(package.tag)!r}")
    metadata = _first(package, "metadata")
    if metadata is None:
        raise EpubError(path, f"{opf_path} has no <metadata>")
    identifier = _unique_identifier(path, opf_path, package, metadata)

    items = _manifest_items(path, opf_path, opf_dir, package, entries)
    by_id = {item.id: item for item in items}
    spine = _spine(path, opf_path, package, by_id)

    media_types = {"mimetype": "text/plain", CONTAINER: "application/xml"}
    for item in items:
        if item.path is not None and item.media_type is not None:
            media_types.setdefault(item.path, item.media_type)

    navs = [i for i in items if "nav" in i.properties and i.path]
    ncx_ref = _first(package, "spine")
    ncx_id = ncx_ref.get("toc") if ncx_ref is not None else None
    ncxs = [
        i
        for i in items
        if i.path and (i.id == ncx_id or i.media_type == "application/x-dtbncx+xml")
    ]

    order: list[str] = []
    seen: set[str] = set()

    def add(name: str | None) -> None:
        if name is not None and name in entries and name not in seen:
            seen.add(name)
            order.append(name)

    add("mimetype")
    for name in entries:
        if name.startswith("META-INF/"):
            add(name)
    add(opf_path)
    for item in navs + ncxs:
        add(item.path)
    for item in items:
        if item.media_type == "text/css":
            add(item.path)
    spine_element = _first(package, "spine")
    direction = (
        spine_element.get("page-progression-direction") if spine_element is not None else None
    )
    layout = _meta_property(metadata, "rendition:layout")
    spread = _meta_property(metadata, "rendition:spread")
    series = _series(metadata)
    # What the first page shows goes first, in the order it needs it (first_page.py). A small
    # cover comes before the text, for the library view; a large one (a 570 KB SVG, a full-page
    # JPEG) right after the first chapter, which it would otherwise hold up.
    cover = _cover_path(metadata, items, by_id)
    toc, toc_problems = _toc(path, navs, ncxs, entries)
    first = first_page(
        BookFacts(
            spine=tuple(SpineDocument(i.path or "", i.id, linear, p) for i, linear, p in spine),
            entries=entries,
            marked_start=_marked_start(path, package, opf_dir, navs, entries),
            guide_types=_guide_types(package, opf_dir),
            toc_start=toc[0].href.split("#", 1)[0] if toc else None,
            nav_documents=frozenset(i.path for i in navs if i.path),
            fixed_layout=layout == "pre-paginated",
            cover_image=cover,
        )
    )
    for need in first.needs:
        if media_types.get(need) == "text/css" or need.lower().endswith(_FONT_EXTENSIONS):
            add(need)
    if cover is not None and len(entries.get(cover, b"")) <= SMALL_COVER_BYTES:
        add(cover)
    add(first.chapter)
    for need in first.needs:
        add(need)
    add(cover)
    for spine_item, _, _ in spine:
        add(spine_item.path)
    for item in items:
        add(item.path)
    for name in entries:
        add(name)

    files = tuple(
        EpubFile(name, media_types.get(name) or _guess_media_type(name), entries[name])
        for name in order
    )
    creators = [_text(e) for e in metadata.iter() if _local(e.tag) == "creator"]
    title = next((_text(e) for e in metadata.iter() if _local(e.tag) == "title"), "")
    language = next((_text(e) for e in metadata.iter() if _local(e.tag) == "language"), "")
    toc, toc_problems = _toc(path, navs, ncxs, entries)
    return Epub(
        source=path,
        identifier=identifier,
        title=title or path.stem,
        authors=tuple(dict.fromkeys(c for c in creators if c)),
        language=language or "und",
        files=files,
        first_chapter=first.chapter,
        toc=toc,
        series=series,
        first_chapter_needs=first.needs,
        reading=Reading(
            direction=direction if direction in ("ltr", "rtl") else "default",
            layout=layout if layout in LAYOUTS else "reflowable",
            spread=spread if spread in SPREADS else "auto",
            cover=cover,
            spine=tuple(
                SpineItem(
                    item.path or "",
                    linear,
                    tuple(sorted(properties)),
                    by_id[item.media_overlay].path if item.media_overlay in by_id else None,
                )
                for item, linear, properties in spine
            ),
            landmarks=_landmarks(path, package, opf_dir, navs, entries),
            page_list=_page_list(path, navs, ncxs, entries),
            series=series,
        ),
        cover=cover if cover in entries else None,
        toc_problems=toc_problems,
    )


def _series(metadata: ET.Element) -> tuple[Series, ...]:
    """Series from EPUB 3 collections (`belongs-to-collection` refined by `collection-type`
    series and `group-position`) and from calibre's `calibre:series` / `calibre:series_index`.

    A collection that itself refines another (a series inside a set) describes that collection,
    not this book, and is skipped. Calibre writes both forms into EPUB 3: one entry per name."""
    metas = [e for e in metadata.iter() if _local(e.tag) == "meta"]
    refinements: dict[str, dict[str, str]] = {}
    for meta in metas:
        refines, prop = meta.get("refines", ""), meta.get("property")
        if refines.startswith("#") and prop:
            refinements.setdefault(refines[1:], {}).setdefault(prop, _text(meta))
    found: dict[str, Series] = {}
    for meta in metas:
        if meta.get("property") != "belongs-to-collection" or meta.get("refines"):
            continue
        details = refinements.get(meta.get("id") or "", {})
        name = _text(meta)
        if name and details.get("collection-type") == "series":
            position = _position(details.get("group-position"))
            found.setdefault(series_key(name), Series(name, position))
    names = {m.get("name"): " ".join((m.get("content") or "").split()) for m in metas}
    calibre_name = names.get("calibre:series")
    if calibre_name:
        position = _position(names.get("calibre:series_index"))
        found.setdefault(series_key(calibre_name), Series(calibre_name, position))
    return tuple(found.values())


def series_key(name: str) -> str:
    """What makes two series names the same series: case and spacing aside."""
    return " ".join(name.split()).casefold()


def _position(text: str | None) -> float | None:
    """A series position: a finite number of at least 0 ("2", "2.0", "1.5"), else None."""
    try:
        value = float((text or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _unique_identifier(path: Path, opf_path: str, package: ET.Element, metadata: ET.Element) -> str:
    ref = package.get("unique-identifier")
    if not ref:
        raise EpubError(path, f"{opf_path}: <package> has no unique-identifier attribute")
    for element in metadata.iter():
        if _local(element.tag) == "identifier" and element.get("id") == ref:
            value = _text(element)
            if not value:
                raise EpubError(path, f"{opf_path}: the unique identifier {ref!r} is empty")
            return value
    raise EpubError(path, f"{opf_path}: unique-identifier {ref!r} names no <dc:identifier>")


def _manifest_items(
    path: Path, opf_path: str, opf_dir: str, package: ET.Element, entries: dict[str, bytes]
) -> list[_Item]:
    manifest = _first(package, "manifest")
    if manifest is None:
        raise EpubError(path, f"{opf_path} has no <manifest>")
    items: list[_Item] = []
    missing: list[str] = []
    for element in _children(manifest, "item"):
        item_id = element.get("id", "")
        href = element.get("href")
        if not href:
            raise EpubError(path, f"{opf_path}: manifest item {item_id!r} has no href")
        full: str | None = None
        if not _is_remote(href):
            full = _resolve(opf_dir, href)
            if full is None:
                raise EpubError(
                    path, f"{opf_path}: manifest item {item_id!r} ({href!r}) points outside"
                )
            if full not in entries:
                missing.append(full)
        properties = frozenset((element.get("properties") or "").split())
        media_type = _clean_media_type(element.get("media-type"))
        overlay = element.get("media-overlay")
        items.append(_Item(item_id, full, media_type, properties, overlay))
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise EpubError(
            path, f"{len(missing)} manifest item(s) missing from the ZIP: {shown}{more}"
        )
    return items


def _spine(
    path: Path, opf_path: str, package: ET.Element, by_id: dict[str, _Item]
) -> list[tuple[_Item, bool, frozenset[str]]]:
    """The spine's local items in order, each with whether it is linear and its itemref's
    properties (page-spread-left, ...)."""
    spine_element = _first(package, "spine")
    if spine_element is None:
        raise EpubError(path, f"{opf_path} has no <spine>")
    spine: list[tuple[_Item, bool, frozenset[str]]] = []
    for ref in _children(spine_element, "itemref"):
        idref = ref.get("idref", "")
        item = by_id.get(idref)
        if item is None:
            raise EpubError(path, f"{opf_path}: the spine names unknown manifest item {idref!r}")
        if item.path is not None:
            properties = frozenset((ref.get("properties") or "").split())
            spine.append((item, ref.get("linear", "yes") != "no", properties))
    if not spine:
        raise EpubError(path, f"{opf_path}: the spine is empty")
    return spine


def _cover_path(metadata: ET.Element, items: list[_Item], by_id: dict[str, _Item]) -> str | None:
    for item in items:
        if "cover-image" in item.properties:
            return item.path
    for meta in metadata.iter():
        if _local(meta.tag) == "meta" and meta.get("name") == "cover":
            content = meta.get("content", "")
            if content in by_id:
                return by_id[content].path
    return None


SMALL_COVER_BYTES = 64 * 1024
_FONT_EXTENSIONS = (".otf", ".ttf", ".woff", ".woff2")


def _marked_start(
    path: Path, package: ET.Element, opf_dir: str, navs: list[_Item], entries: dict[str, bytes]
) -> str | None:
    """Where the publisher says the text begins: the EPUB 3 landmark `bodymatter`, or the
    EPUB 2 guide reference of type `text`."""
    for nav_item in navs:
        assert nav_item.path is not None
        root = _parse_xml(path, nav_item.path, entries[nav_item.path])
        base = posixpath.dirname(nav_item.path)
        for element in root.iter():
            kinds = (element.get(_EPUB_TYPE) or "").split()
            if _local(element.tag) == "a" and "bodymatter" in kinds and element.get("href"):
                return _resolve(base, element.get("href", "").split("#", 1)[0])
    return next(
        (g.href.split("#", 1)[0] for g in _guide(package, opf_dir) if g.kind == "text"), None
    )


def _guide(package: ET.Element, opf_dir: str) -> list[Landmark]:
    """The EPUB 2 guide's references, in order: type, title, href resolved (fragment kept)."""
    guide = _first(package, "guide")
    return [
        Landmark(r.get("type") or "", r.get("title") or "", _toc_href(opf_dir, r.get("href", "")))
        for r in (guide.iter() if guide is not None else ())
        if _local(r.tag) == "reference" and r.get("href")
    ]


def _guide_types(package: ET.Element, opf_dir: str) -> dict[str, str]:
    """The EPUB 2 guide's type of each document it names whole (cover, toc, title-page, ...): a
    reference to a fragment names a part of a document (Gutenberg's contents inside its first
    chapter), not what the document is."""
    types: dict[str, str] = {}
    for reference in _guide(package, opf_dir):
        if reference.href and "#" not in reference.href:
            types.setdefault(reference.href, reference.kind)
    return types


def _landmarks(
    path: Path, package: ET.Element, opf_dir: str, navs: list[_Item], entries: dict[str, bytes]
) -> tuple[Landmark, ...]:
    """The navigation document's landmarks, else the EPUB 2 guide; local targets only."""
    for nav in navs:
        assert nav.path is not None
        found = [
            Landmark(kind, label, href)
            for kind, label, href in _nav_links(path, nav.path, entries, "landmarks")
            if href.split("#", 1)[0] in entries
        ]
        if found:
            return tuple(found)
    return tuple(g for g in _guide(package, opf_dir) if g.href.split("#", 1)[0] in entries)


def _page_list(
    path: Path, navs: list[_Item], ncxs: list[_Item], entries: dict[str, bytes]
) -> tuple[Page, ...]:
    """The print edition's pages: the navigation document's page-list, else the NCX's."""
    for nav in navs:
        assert nav.path is not None
        pages = [
            Page(label, href)
            for _, label, href in _nav_links(path, nav.path, entries, "page-list")
            if href.split("#", 1)[0] in entries
        ]
        if pages:
            return tuple(pages)
    for ncx in ncxs:
        assert ncx.path is not None
        try:
            root = _parse_xml(path, ncx.path, entries[ncx.path])
        except EpubError:
            continue
        pages = []
        for target in root.iter():
            if _local(target.tag) != "pageTarget":
                continue
            label = next((_text(e) for e in target.iter() if _local(e.tag) == "navLabel"), "")
            content = next((e for e in target.iter() if _local(e.tag) == "content"), None)
            href = (
                _toc_href(posixpath.dirname(ncx.path), content.get("src", ""))
                if content is not None
                else ""
            )
            if href and href.split("#", 1)[0] in entries:
                pages.append(Page(label, href))
        if pages:
            return tuple(pages)
    return ()


def _nav_links(
    path: Path, nav_path: str, entries: dict[str, bytes], kind: str
) -> list[tuple[str, str, str]]:
    """(epub:type, label, href) of each link in the navigation document's <nav> of `kind`."""
    try:
        root = _parse_xml(path, nav_path, entries[nav_path])
    except EpubError:
        return []
    base = posixpath.dirname(nav_path)
    for nav in root.iter():
        if _local(nav.tag) == "nav" and kind in (nav.get(_EPUB_TYPE) or "").split():
            return [
                ((a.get(_EPUB_TYPE) or "").strip(), _text(a), _toc_href(base, a.get("href", "")))
                for a in nav.iter()
                if _local(a.tag) == "a" and a.get("href") and not _is_remote(a.get("href", ""))
            ]
    return []


def _meta_property(metadata: ET.Element, name: str) -> str | None:
    """An EPUB 3 `<meta property=...>` of the whole publication (refinements aside)."""
    for meta in metadata.iter():
        if _local(meta.tag) == "meta" and meta.get("property") == name and not meta.get("refines"):
            return _text(meta)
    return None


def _toc(
    path: Path, navs: list[_Item], ncxs: list[_Item], entries: dict[str, bytes]
) -> tuple[tuple[TocEntry, ...], tuple[str, ...]]:
    """The EPUB 3 navigation document's toc, else the NCX's, and the problem of each one
    skipped on the way: a broken one is skipped, as reading systems do, rather than refusing an
    otherwise readable book. One with entities is not broken but hostile: UnsafeXmlError
    refuses the book."""
    problems: list[str] = []
    for nav in navs:
        assert nav.path is not None
        try:
            root = _parse_xml(path, nav.path, entries[nav.path])
        except UnsafeXmlError:
            raise
        except EpubError as e:
            problems.append(e.problem)
            continue
        toc = _nav_toc(root, posixpath.dirname(nav.path))
        if toc:
            return toc, tuple(problems)
    for ncx in ncxs:
        assert ncx.path is not None
        try:
            root = _parse_xml(path, ncx.path, entries[ncx.path])
        except UnsafeXmlError:
            raise
        except EpubError as e:
            problems.append(e.problem)
            continue
        nav_map = _first(root, "navMap")
        if nav_map is not None:
            toc = _ncx_points(nav_map, posixpath.dirname(ncx.path), 0)
            if toc:
                return toc, tuple(problems)
    return (), tuple(problems)


def _nav_toc(root: ET.Element, base_dir: str) -> tuple[TocEntry, ...]:
    for nav in root.iter():
        if _local(nav.tag) == "nav" and "toc" in (nav.get(_EPUB_TYPE) or "").split():
            ol = next(_children(nav, "ol"), None)
            return _nav_list(ol, base_dir, 0) if ol is not None else ()
    return ()


def _nav_list(ol: ET.Element, base_dir: str, depth: int) -> tuple[TocEntry, ...]:
    entries: list[TocEntry] = []
    for li in _children(ol, "li"):
        link = next((c for c in li if _local(c.tag) in ("a", "span")), None)
        sub = next(_children(li, "ol"), None)
        children = (
            _nav_list(sub, base_dir, depth + 1) if sub is not None and depth < MAX_TOC_DEPTH else ()
        )
        href = link.get("href") if link is not None else None
        target = _toc_href(base_dir, href) if href else ""
        # A heading without a link opens at its first child, as reading systems do.
        if not target and children:
            target = children[0].href
        if target:
            label = _text(link)[:MAX_LABEL] if link is not None else ""
            entries.append(TocEntry(label, target, children))
    return tuple(entries)


def _ncx_points(parent: ET.Element, base_dir: str, depth: int) -> tuple[TocEntry, ...]:
    entries: list[TocEntry] = []
    for point in _children(parent, "navPoint"):
        label_element = next(_children(point, "navLabel"), None)
        content = next(_children(point, "content"), None)
        src = content.get("src") if content is not None else None
        children = _ncx_points(point, base_dir, depth + 1) if depth < MAX_TOC_DEPTH else ()
        target = _toc_href(base_dir, src) if src else ""
        if not target and children:
            target = children[0].href
        if target:
            label = _text(label_element)[:MAX_LABEL] if label_element is not None else ""
            entries.append(TocEntry(label, target, children))
    return tuple(entries)
