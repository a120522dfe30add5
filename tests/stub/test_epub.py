"""EPUB reading and validation, on the real corpus and on synthetic books."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.protocol.manifest import TocEntry
from server_stub.epub import EpubError, read_epub
from tests.stub.helpers import EXPECTED_ORDER, OPF, epub_files, write_epub


def _walk(entries: tuple[TocEntry, ...]) -> Iterator[TocEntry]:
    for entry in entries:
        yield entry
        yield from _walk(entry.children)


def test_corpus_books_read_completely_and_in_reading_order(corpus_books: list[Path]) -> None:
    assert corpus_books
    for book in corpus_books:
        epub = read_epub(book)
        with zipfile.ZipFile(book) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir()]
            assert sorted(f.path for f in epub.files) == sorted(names), book.name
            assert all(f.data == z.read(f.path) for f in epub.files), book.name
        paths = [f.path for f in epub.files]
        assert paths[:2] == ["mimetype", "META-INF/container.xml"], book.name
        assert epub.first_chapter in paths
        assert epub.identifier
        assert epub.title
        assert epub.language
        assert epub.toc, f"{book.name} has a table of contents"
        for entry in _walk(epub.toc):
            assert entry.href.split("#", 1)[0] in paths, (book.name, entry.href)


def test_corpus_metadata_examples(corpus_dir: Path) -> None:
    moby = read_epub(corpus_dir / "idpf_moby-dick.epub")
    assert (moby.title, moby.authors, moby.language) == ("Moby-Dick", ("Herman Melville",), "en-US")
    carol = read_epub(corpus_dir / "cwa_christmas_carol.epub")  # EPUB 2: NCX, <meta name=cover>
    assert carol.identifier == "http://www.gutenberg.org/46"
    cover = next(f for f in carol.files if f.path.endswith("_cover.jpg"))
    assert carol.files.index(cover) < 10
    assert cover.media_type == "image/jpeg"
    assert carol.toc[0].href.startswith("OEBPS/")
    assert "#" in carol.toc[0].href


NOT_FIRST = "malformed/epubjs_moby-dick_mimetype-not-first.epub"
MISSING_AUDIO = "malformed/idpf_kusamakura-japanese-vertical-writing_missing-audio.epub"


def test_a_manifest_naming_files_the_zip_lacks_is_refused(corpus_dir: Path) -> None:
    with pytest.raises(EpubError, match=r"2 manifest item\(s\) missing .*fmse004b\.mp3") as e:
        read_epub(corpus_dir / MISSING_AUDIO)
    assert Path(MISSING_AUDIO).name in str(e.value)


@pytest.mark.needs_books(NOT_FIRST)
def test_a_real_world_mimetype_that_is_not_first_is_refused(corpus_dir: Path) -> None:
    with pytest.raises(EpubError, match="'mimetype' is not the first ZIP entry") as e:
        read_epub(corpus_dir / NOT_FIRST)
    assert Path(NOT_FIRST).name in str(e.value)


def test_reading_order_media_types_first_chapter_and_toc(tmp_path: Path) -> None:
    epub = read_epub(write_epub(tmp_path / "b.epub", directories=True))
    assert [f.path for f in epub.files] == EXPECTED_ORDER
    types = {f.path: f.media_type for f in epub.files}
    assert types["mimetype"] == "text/plain"
    assert types["META-INF/container.xml"] == "application/xml"
    assert types["OEBPS/content.opf"] == "application/oebps-package+xml"
    assert types["OEBPS/images/fig 1.png"] == "image/png"
    assert types["OEBPS/extra.txt"] == "text/plain"
    # title.xhtml is a title page (its name says so) and notes.xhtml is not linear.
    assert epub.first_chapter == "OEBPS/text/ch1.xhtml"
    assert epub.authors == ("Ada Author", "Bo Writer")
    assert epub.toc == (
        TocEntry(
            "Chapter One",
            "OEBPS/text/ch1.xhtml",
            (TocEntry("Part two", "OEBPS/text/ch1.xhtml#part-2"),),
        ),
        TocEntry(
            "Later", "OEBPS/text/ch2.xhtml", (TocEntry("Chapter Two", "OEBPS/text/ch2.xhtml"),)
        ),
    )


def test_ncx_is_the_toc_without_a_nav_document(tmp_path: Path) -> None:
    files = epub_files()
    files["OEBPS/content.opf"] = files["OEBPS/content.opf"].replace(b' properties="nav"', b"")
    epub = read_epub(write_epub(tmp_path / "b.epub", files))
    assert [(t.label, t.href) for t in epub.toc] == [
        ("NCX One", "OEBPS/text/ch1.xhtml"),
        ("NCX Two", "OEBPS/text/ch2.xhtml"),
    ]
    assert epub.toc[0].children == (TocEntry("NCX Deeper", "OEBPS/text/ch1.xhtml#deep"),)


def test_first_spine_item_when_no_chapter_reaches_2_kib(tmp_path: Path) -> None:
    files = epub_files()
    for name in ("OEBPS/text/ch1.xhtml", "OEBPS/text/ch2.xhtml"):
        files[name] = b"<html xmlns='http://www.w3.org/1999/xhtml'/>"
    assert read_epub(write_epub(tmp_path / "b.epub", files)).first_chapter == (
        "OEBPS/text/title.xhtml"
    )


def _opf(**fmt: str) -> bytes:
    return OPF.format(**{"identifier": "urn:x", "title": "T", "language": "en", **fmt}).encode()


def _with(name: str, data: bytes | None) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        files = epub_files()
        if data is None:
            del files[name]
        else:
            files[name] = data
        return write_epub(path, files)

    return build


def _corrupt_crc(path: Path) -> Path:
    write_epub(path)
    raw = bytearray(path.read_bytes())
    # Flip a byte inside ch1's compressed data: the CRC check catches it.
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("OEBPS/text/ch1.xhtml")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


MALFORMED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "not a zip": (lambda p: (p.write_bytes(b"PK not really"), p)[1], "not a ZIP archive"),
    "crc": (_corrupt_crc, "ZIP entry 'OEBPS/text/ch1.xhtml' is corrupt"),
    "no mimetype": (lambda p: write_epub(p, mimetype=None), "'mimetype' entry is missing"),
    "mimetype last": (
        lambda p: write_epub(p, mimetype_first=False),
        "'mimetype' is not the first ZIP entry",
    ),
    "mimetype deflated": (
        lambda p: write_epub(p, mimetype_method=zipfile.ZIP_DEFLATED),
        "'mimetype' entry is compressed",
    ),
    "mimetype wrong": (
        lambda p: write_epub(p, mimetype=b"application/epub+zip\n"),
        "not 'application/epub\\+zip'",
    ),
    "no container": (_with("META-INF/container.xml", None), "META-INF/container.xml is missing"),
    "bad container": (
        _with("META-INF/container.xml", b"<container"),
        "META-INF/container.xml is not well-formed XML",
    ),
    "no opf": (_with("OEBPS/content.opf", None), "'OEBPS/content.opf' named in .* is missing"),
    "bad opf": (_with("OEBPS/content.opf", b"<package><"), "OEBPS/content.opf is not well-formed"),
    "no unique id": (
        _with("OEBPS/content.opf", _opf().replace(b'id="uid"', b'id="other"')),
        "unique-identifier 'uid' names no <dc:identifier>",
    ),
    "missing href": (
        _with("OEBPS/images/fig 1.png", None),
        r"1 manifest item\(s\) missing from the ZIP: 'OEBPS/images/fig 1.png'",
    ),
    "empty spine": (
        _with(
            "OEBPS/content.opf",
            _opf().split(b"<spine")[0] + b'<spine toc="ncx"></spine></package>',
        ),
        "the spine is empty",
    ),
    "entity bomb": (
        _with(
            "OEBPS/content.opf",
            b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>' + _opf().split(b"?>", 1)[1],
        ),
        "declares the XML entity .a.",
    ),
    "unsafe entry": (_with("../evil.txt", b"x"), "unsafe path"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_epub_is_refused_naming_file_and_problem(tmp_path: Path, case: str) -> None:
    build, problem = MALFORMED[case]
    path = build(tmp_path / f"{case.replace(' ', '-')}.epub")
    with pytest.raises(EpubError, match=problem) as e:
        read_epub(path)
    assert str(e.value).startswith(f"{path}: ")
    assert e.value.path == path


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EpubError, match="cannot read the file"):
        read_epub(tmp_path / "absent.epub")
