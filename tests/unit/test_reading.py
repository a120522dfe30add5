"""The manifest's `reading` object and first-page list: signed with the rest, checked on parse,
stored, and served by the book API without the reader app parsing the OPF."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from daemon.errors import ManifestError
from daemon.models import LibraryChange
from daemon.protocol.manifest import encode_manifest, parse_manifest
from daemon.protocol.reading import Landmark, Page, Reading, Series, SpineItem
from daemon.store import Store
from tests.builders import NOW, make_manifest

READING = Reading(
    direction="rtl",
    layout="pre-paginated",
    spread="landscape",
    cover="cover.jpg",
    spine=(
        SpineItem("p1.xhtml", True, ("page-spread-left",), "p1.smil"),
        SpineItem("p2.xhtml", False),
    ),
    landmarks=(Landmark("bodymatter", "Start", "p1.xhtml#top"),),
    page_list=(Page("1", "p1.xhtml"), Page("ii", "p2.xhtml#page-ii")),
    series=(Series("Haruko", 1.0), Series("Unnumbered", None)),
)
FILES = [(p, b"<html/>" + p.encode()) for p in ("p1.xhtml", "p2.xhtml", "cover.jpg", "p1.smil")]


def test_reading_and_first_page_needs_survive_the_round_trip() -> None:
    manifest, _ = make_manifest(FILES)
    manifest = dataclasses.replace(
        manifest, reading=READING, first_chapter_needs=("cover.jpg", "p2.xhtml")
    )
    parsed = parse_manifest(encode_manifest(manifest))
    assert parsed.reading == READING
    assert parsed.first_chapter_needs == ("cover.jpg", "p2.xhtml")
    assert parsed.first_chapter_frames() == 3  # p1, then cover.jpg (2) and p2 (1): frames 0-2


def test_a_manifest_without_them_reads_as_before() -> None:
    manifest, _ = make_manifest(FILES)
    doc = json.loads(encode_manifest(manifest))
    assert "reading" not in doc
    assert "first_chapter_needs" not in doc
    parsed = parse_manifest(encode_manifest(manifest))
    assert (parsed.reading, parsed.first_chapter_needs) == (Reading(), ())
    assert parsed.first_chapter_frames() == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"direction": "up"}, "reading.direction"),
        ({"cover": "../etc/passwd"}, "reading.cover"),
        ({"spine": [{"path": "p1.xhtml", "linear": "yes"}]}, "reading.spine.linear"),
        ({"spine": [{"path": "nope.xhtml", "linear": True}]}, "reading.spine.path"),
        ({"landmarks": [{"type": "toc", "label": "x", "href": "elsewhere.xhtml#a"}]}, "href"),
        ({"page_list": "1-10"}, "reading.page_list"),
        ({"series": [{"name": "S", "position": "first"}]}, "series.position"),
        ({"series": [{"name": "S", "position": float("nan")}]}, "series.position"),
    ],
)
def test_a_malformed_reading_object_is_refused_by_name(
    change: dict[str, object], message: str
) -> None:
    manifest, _ = make_manifest(FILES)
    doc = json.loads(encode_manifest(dataclasses.replace(manifest, reading=READING)))
    doc["reading"].update(change)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(json.dumps(doc).encode())


@pytest.mark.parametrize("needs", [["nope.xhtml"], ["p1.xhtml"], ["p2.xhtml", "p2.xhtml"], "p2"])
def test_first_page_needs_must_be_other_resources_of_the_book(needs: object) -> None:
    manifest, _ = make_manifest(FILES)
    doc = json.loads(encode_manifest(manifest))
    doc["first_chapter_needs"] = needs
    with pytest.raises(ManifestError, match="first_chapter_needs"):
        parse_manifest(json.dumps(doc).encode())


def test_the_book_api_view_carries_direction_layout_cover_and_landmarks(tmp_path: Path) -> None:
    manifest, _ = make_manifest(FILES)
    store = Store.open(tmp_path / "db")
    store.library.apply_library_changes(
        [LibraryChange(1, "bk_test", "add", "bought", 1, NOW)], 1, NOW
    )
    store.frames.record_manifest(dataclasses.replace(manifest, reading=READING), b"envelope", NOW)
    details = store.views.book_details("bk_test")
    assert details is not None
    assert (details["direction"], details["layout"], details["spread"]) == (
        "rtl",
        "pre-paginated",
        "landscape",
    )
    assert details["cover"] == "cover.jpg"
    assert details["landmarks"] == [
        {"type": "bodymatter", "label": "Start", "href": "p1.xhtml#top"}
    ]
    assert details["page_list"][1] == {"label": "ii", "href": "p2.xhtml#page-ii"}
    assert details["spine"][0]["media_overlay"] == "p1.smil"
    assert details["series"] == [
        {"name": "Haruko", "position": 1.0},
        {"name": "Unnumbered", "position": None},
    ]
    store.close()
