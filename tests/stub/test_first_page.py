"""Where a reader lands, and what that page needs (server_stub/first_page.py, PROTOCOL.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server_stub.epub import read_epub
from server_stub.first_page import BookFacts, SpineDocument, first_page, references

SAMPLE_LIBRARY = Path(__file__).resolve().parents[2] / "server_stub" / "sample_library"

# The document a reader lands on in each corpus book, and why a reader would agree.
EXPECTED_FIRST_CHAPTER = {
    # calibre's guides: past the cover, the title page and the contents page.
    "calibre_quick_start_deu.epub": "text/introduction.xhtml",
    "calibre_quick_start_eng.epub": "text/introduction.xhtml",
    "calibre_quick_start_fra.epub": "text/introduction.xhtml",
    # Gutenberg EPUB 2: the header file also holds the title, the contents and Stave One.
    "cwa_christmas_carol.epub": "OEBPS/2327096240692988772_46-h-0.htm.html",
    "epubjs_alice.epub": "OPS/chapter_001.xhtml",  # past cover, contents, title page
    "idpf_cole-voyage-of-life.epub": "EPUB/xhtml/0-intro.xhtml",
    "idpf_epub30-spec.epub": "EPUB/xhtml/epub30-overview.xhtml",  # landmarks bodymatter
    "idpf_georgia-pls-ssml.epub": "EPUB/georgia.xhtml",
    "idpf_haruko-html-jpeg.epub": "OPS/xhtml/p01.xhtml",  # fixed layout: page 1, not the appendix
    "idpf_israelsailing.epub": "OEBPS/chapter1.xhtml",  # past the cover and the copyright page
    # A W3C note: the contents begin at chapter 1, past its title, abstract and contents pages.
    "idpf_jlreq-in-japanese.epub": "OEBPS/xhtml/introduction.xhtml",
    "idpf_linear-algebra.epub": "EPUB/xhtml/fcla-xml-2.30li14.xhtml",  # landmarks bodymatter
    "idpf_mahabharata.epub": "EPUB/xhtml/b01001.xhtml",  # past two part-title pages
    "idpf_moby-dick.epub": "OPS/chapter_001.xhtml",  # past etymology and extracts (frontmatter)
    "idpf_regime-anticancer-arabic.epub": "EPUB/Content/C_content.xhtml",
    "idpf_wasteland.epub": "EPUB/wasteland-content.xhtml",
    "se_h-g-wells_the-time-machine.epub": "epub/text/chapter-1.xhtml",
    "se_samuel-pepys_the-diary.epub": "epub/text/chapter-1.xhtml",  # past preface, introduction
    "se_walt-whitman_leaves-of-grass.epub": "epub/text/inscriptions.xhtml",
    "sigil_plugin_framework_rev15.epub": "OEBPS/Text/sigil_plugin_anatomy.html",
}


def _book(name: str, corpus_dir: Path) -> Path:
    for folder in (SAMPLE_LIBRARY, corpus_dir):
        if (folder / name).exists():
            return folder / name
    pytest.skip(f"{name} is in the full corpus only ($SHELFSYNC_CORPUS)")


@pytest.mark.parametrize(("name", "expected"), sorted(EXPECTED_FIRST_CHAPTER.items()))
def test_the_first_chapter_is_where_a_reader_lands(
    name: str, expected: str, corpus_dir: Path
) -> None:
    epub = read_epub(_book(name, corpus_dir))
    assert epub.first_chapter == expected
    paths = [f.path for f in epub.files]
    # The chapter and what its first page needs come before every other content document.
    chapter_at = paths.index(expected)
    needs_at = [paths.index(n) for n in epub.first_chapter_needs if not n.endswith(".css")]
    other_spine = [
        f.path
        for f in epub.files
        if f.media_type in ("application/xhtml+xml", "text/html")
        and f.path not in (expected, *epub.first_chapter_needs)
        and not f.path.endswith(("nav.xhtml", "toc.xhtml"))
    ]
    assert all(paths.index(p) > max([chapter_at, *needs_at]) for p in other_spine), name


def test_what_the_first_page_shows_is_listed_and_exists(corpus_dir: Path) -> None:
    alice = read_epub(_book("epubjs_alice.epub", corpus_dir))
    assert alice.first_chapter_needs == (
        "OPS/css/stylesheet.css",
        "OPS/images/i001_th.jpg",
        "OPS/images/i002_th.jpg",
        "OPS/images/i003_th.jpg",
        "OPS/images/i004_th.jpg",
    )
    haruko = read_epub(_book("idpf_haruko-html-jpeg.epub", corpus_dir))
    # A manga's first spread: its page, the facing page (page-spread-left/right), their
    # pictures, and the cover.
    assert haruko.first_chapter_needs[:3] == (
        "OPS/images/01.jpg",
        "OPS/xhtml/p02.xhtml",
        "OPS/images/02.jpg",
    )
    moby = read_epub(_book("idpf_moby-dick.epub", corpus_dir))
    assert "OPS/fonts/STIXGeneral.otf" in moby.first_chapter_needs  # @font-face of its CSS


def _xhtml(body: str, head: str = "") -> bytes:
    return (
        '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops">'
        f"<head>{head}</head>{body}</html>"
    ).encode()


TEXT = "<p>" + "It was the best of times, it was the worst of times. " * 10 + "</p>"


def _facts(documents: dict[str, bytes], **overrides: object) -> BookFacts:
    spine = tuple(SpineDocument(p, p.split(".")[0], True, frozenset()) for p in documents)
    facts: dict[str, object] = {
        "spine": spine,
        "entries": documents,
        "marked_start": None,
        "guide_types": {},
        "toc_start": None,
        "nav_documents": frozenset(),
        "fixed_layout": False,
        "cover_image": None,
    }
    facts.update(overrides)
    return BookFacts(**facts)  # type: ignore[arg-type]


def test_a_small_document_typed_bodymatter_wins_over_a_long_appendix() -> None:
    documents = {
        "main.xhtml": _xhtml('<body epub:type="bodymatter"><img src="p1.jpg"/></body>'),
        "readme.xhtml": _xhtml(f"<body>{TEXT * 5}</body>"),
        "p1.jpg": b"\xff\xd8 a picture",
    }
    chosen = first_page(_facts(documents))
    assert (chosen.chapter, chosen.needs) == ("main.xhtml", ("p1.jpg",))


def test_front_matter_is_skipped_by_type_guide_name_and_text() -> None:
    documents = {
        "a.xhtml": _xhtml(f'<body epub:type="frontmatter">{TEXT}</body>'),
        "b.xhtml": _xhtml(f"<body>{TEXT}</body>"),  # the guide says: copyright page
        "licence.xhtml": _xhtml(f"<body>{TEXT}</body>"),
        "pg.xhtml": _xhtml(
            "<body><p>The Project Gutenberg eBook of X. This ebook is for the use of anyone"
            " anywhere in the United States and most other parts of the world at no cost.</p>"
            "<p>*** START OF THE PROJECT GUTENBERG EBOOK X ***</p></body>"
        ),
        "part.xhtml": _xhtml("<body><h1>Part One</h1></body>"),
        "list.xhtml": _xhtml(  # a contents page by what it holds: links to chapters
            "<body>"
            + "".join(f'<p><a href="c{i}.xhtml">Chapter {i}</a></p>' for i in range(20))
            + "</body>"
        ),
        "story.xhtml": _xhtml(f"<body>{TEXT}</body>"),
    }
    chosen = first_page(_facts(documents, guide_types={"b.xhtml": "copyright-page"}))
    assert chosen.chapter == "story.xhtml"


def test_the_table_of_contents_says_where_the_text_begins() -> None:
    documents = {
        "status.xhtml": _xhtml(f"<body>{TEXT}</body>"),
        "ch1.xhtml": _xhtml(f"<body>{TEXT}</body>"),
    }
    assert first_page(_facts(documents, toc_start="ch1.xhtml")).chapter == "ch1.xhtml"
    assert first_page(_facts(documents)).chapter == "status.xhtml"


def test_the_publishers_mark_wins_whatever_the_document() -> None:
    documents = {"ch1.xhtml": _xhtml(f"<body>{TEXT}</body>"), "tiny.xhtml": _xhtml("<body/>")}
    chosen = first_page(_facts(documents, marked_start="tiny.xhtml"))
    assert (chosen.chapter, chosen.why) == (
        "tiny.xhtml",
        "marked by the publisher (landmarks or guide)",
    )


def test_a_fixed_layout_book_opens_on_its_first_spread_with_the_cover() -> None:
    documents = {
        "p1.xhtml": _xhtml('<body><img src="1.jpg"/></body>'),
        "p2.xhtml": _xhtml('<body><img src="2.jpg"/></body>'),
        "p3.xhtml": _xhtml('<body><img src="3.jpg"/></body>'),
        "1.jpg": b"1",
        "2.jpg": b"2",
        "3.jpg": b"3",
        "cover.jpg": b"c",
    }
    spine = (
        SpineDocument("p1.xhtml", "p1", True, frozenset({"page-spread-left"})),
        SpineDocument("p2.xhtml", "p2", True, frozenset({"page-spread-right"})),
        SpineDocument("p3.xhtml", "p3", True, frozenset({"page-spread-left"})),
    )
    chosen = first_page(_facts(documents, spine=spine, fixed_layout=True, cover_image="cover.jpg"))
    assert (chosen.chapter, chosen.why) == ("p1.xhtml", "fixed layout: the first page")
    assert chosen.needs == ("1.jpg", "p2.xhtml", "2.jpg", "cover.jpg")


def test_references_follow_stylesheets_to_their_imports_and_fonts_and_skip_the_outside() -> None:
    entries = {
        "text/ch.xhtml": _xhtml(
            '<body><img src="../img/a%20b.png"/><img src="https://example.org/x.png"/>'
            '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
            '<image xlink:href="../img/c.svg"/></svg><img src="../img/missing.png"/>'
            '<video src="../media/v.mp4" poster="../img/poster.jpg"/></body>',
            head='<link rel="stylesheet" href="../css/main.css"/>',
        ),
        "css/main.css": b'@import "more.css"; @font-face { src: url(../fonts/f.woff2) }',
        "css/more.css": b"body { background: url('../img/bg.png') }",
        "fonts/f.woff2": b"f",
        "img/a b.png": b"a",
        "img/bg.png": b"bg",
        "img/c.svg": b"<svg/>",
        "img/poster.jpg": b"p",
        "media/v.mp4": b"v",
    }
    assert references("text/ch.xhtml", entries) == [
        "css/main.css",
        "css/more.css",
        "img/bg.png",
        "fonts/f.woff2",
        "img/a b.png",
        "img/c.svg",
        "media/v.mp4",
        "img/poster.jpg",
    ]


def test_references_of_html_that_is_not_xml_are_still_found() -> None:
    entries = {
        "ch.html": b'<html><body><p>caf&eacute;<br><img src="pic.jpg"></body></html>',
        "pic.jpg": b"j",
    }
    assert references("ch.html", entries) == ["pic.jpg"]


def test_reading_metadata_comes_from_the_package_document(corpus_dir: Path) -> None:
    haruko = read_epub(_book("idpf_haruko-html-jpeg.epub", corpus_dir)).reading
    assert (haruko.direction, haruko.layout, haruko.spread) == ("rtl", "pre-paginated", "landscape")
    assert haruko.spine[0].properties == ("page-spread-left",)
    assert len(haruko.page_list) == 14
    moby = read_epub(_book("idpf_moby-dick.epub", corpus_dir)).reading
    assert (moby.direction, moby.layout) == ("default", "reflowable")
    assert moby.cover == "OPS/images/9780316000000.jpg"
    assert ("bodymatter", "OPS/chapter_001.xhtml") in {(m.kind, m.href) for m in moby.landmarks}
    carol = read_epub(_book("cwa_christmas_carol.epub", corpus_dir)).reading  # EPUB 2: the guide
    assert {m.kind for m in carol.landmarks} == {"toc", "cover"}
