"""How to lay a book out, as its package document says: the manifest's `reading` object.

Reading direction, layout and spreads, the cover, the spine with linear and page-spread
properties and media overlays, landmarks, the page list and series, so that a reader app gets
them from the book API instead of parsing the OPF itself. The service reads them from the EPUB
(server_stub/epub.py); the device checks that every path names one of the book's resources.
Pure, like the rest of the manifest. Documented in docs/PROTOCOL.md ("reading").
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from daemon.errors import ManifestError

DIRECTIONS = ("default", "ltr", "rtl")  # OPF spine page-progression-direction
LAYOUTS = ("reflowable", "pre-paginated")  # rendition:layout
SPREADS = ("auto", "none", "landscape", "portrait", "both")  # rendition:spread
MAX_LABEL = 1000  # characters of a landmark's or a page's label
MAX_PROPERTY = 100  # characters of one spine property


@dataclass(frozen=True, slots=True)
class SpineItem:
    path: str
    linear: bool
    properties: tuple[str, ...] = ()  # page-spread-left, rendition:layout-pre-paginated, ...
    media_overlay: str | None = None  # the SMIL document that narrates it


@dataclass(frozen=True, slots=True)
class Landmark:
    kind: str  # epub:type (bodymatter, toc, cover, ...) or EPUB 2 guide type (text, ...)
    label: str
    href: str  # a resource path, with its #fragment if any


@dataclass(frozen=True, slots=True)
class Page:
    label: str  # the print edition's page number, as printed ("xii", "42")
    href: str


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    position: float | None  # 1 for the first book; None when the publisher gave none


@dataclass(frozen=True, slots=True)
class Reading:
    direction: str = "default"
    layout: str = "reflowable"
    spread: str = "auto"
    cover: str | None = None  # the cover image resource
    spine: tuple[SpineItem, ...] = ()
    landmarks: tuple[Landmark, ...] = ()
    page_list: tuple[Page, ...] = ()
    series: tuple[Series, ...] = ()


def reading_to_doc(r: Reading) -> dict[str, Any]:
    return {
        "direction": r.direction,
        "layout": r.layout,
        "spread": r.spread,
        "cover": r.cover,
        "spine": [
            {
                "path": s.path,
                "linear": s.linear,
                "properties": list(s.properties),
                "media_overlay": s.media_overlay,
            }
            for s in r.spine
        ],
        "landmarks": [{"type": m.kind, "label": m.label, "href": m.href} for m in r.landmarks],
        "page_list": [{"label": p.label, "href": p.href} for p in r.page_list],
        "series": [{"name": s.name, "position": s.position} for s in r.series],
    }


def parse_reading(doc: Any, resources: Collection[str], max_items: int = 65_536) -> Reading:
    """The `reading` object of a manifest whose resources are `resources`; ManifestError if
    any part is malformed, names something that is not one of them, or has a list of more
    than `max_items` entries."""
    if not isinstance(doc, dict):
        raise ManifestError("reading: expected an object")

    def choice(key: str, allowed: tuple[str, ...]) -> str:
        value = doc.get(key, allowed[0])
        if value not in allowed:
            raise ManifestError(f"reading.{key}: {str(value)[:40]!r} is not one of {allowed}")
        return str(value)

    def resource(value: Any, where: str, *, fragment: bool = False) -> str:
        path = value.split("#", 1)[0] if fragment and isinstance(value, str) else value
        if not isinstance(value, str) or path not in resources:
            raise ManifestError(f"reading.{where}: {str(value)[:80]!r} is not a resource")
        return str(value)

    def text(value: Any, where: str, limit: int = MAX_LABEL) -> str:
        if not isinstance(value, str) or len(value) > limit:
            raise ManifestError(f"reading.{where}: expected a string of at most {limit}")
        return value

    def items(key: str) -> list[dict[str, Any]]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ManifestError(f"reading.{key}: expected a list of objects")
        if len(value) > max_items:
            raise ManifestError(f"reading.{key}: {len(value)} entries, over {max_items}")
        return value

    cover = doc.get("cover")
    spine = []
    for item in items("spine"):
        properties = item.get("properties", [])
        if not isinstance(properties, list):
            raise ManifestError("reading.spine.properties: expected a list")
        overlay = item.get("media_overlay")
        if not isinstance(item.get("linear"), bool):
            raise ManifestError("reading.spine.linear: expected true or false")
        spine.append(
            SpineItem(
                path=resource(item.get("path"), "spine.path"),
                linear=item["linear"],
                properties=tuple(text(p, "spine.properties", MAX_PROPERTY) for p in properties),
                media_overlay=None if overlay is None else resource(overlay, "media_overlay"),
            )
        )
    series = []
    for entry in items("series"):
        position = entry.get("position")
        if position is not None and (
            isinstance(position, bool)
            or not isinstance(position, int | float)
            or not math.isfinite(position)
        ):
            raise ManifestError("reading.series.position: expected a number or null")
        series.append(
            Series(text(entry.get("name"), "series.name"), None if position is None else position)
        )
    return Reading(
        direction=choice("direction", DIRECTIONS),
        layout=choice("layout", LAYOUTS),
        spread=choice("spread", SPREADS),
        cover=None if cover is None else resource(cover, "cover"),
        spine=tuple(spine),
        landmarks=tuple(
            Landmark(
                text(m.get("type"), "landmarks.type", MAX_PROPERTY),
                text(m.get("label"), "landmarks.label"),
                resource(m.get("href"), "landmarks.href", fragment=True),
            )
            for m in items("landmarks")
        ),
        page_list=tuple(
            Page(
                text(p.get("label"), "page_list.label"),
                resource(p.get("href"), "page_list.href", fragment=True),
            )
            for p in items("page_list")
        ),
        series=tuple(series),
    )
