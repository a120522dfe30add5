"""EPUBs from outside are untrusted: entity declarations, external entities and entity expansion
in the OPF, NCX or nav refuse the book, by name and reason, with a log line."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from server_stub.catalog import PackagingSettings, import_library
from server_stub.cli import SAMPLE_LIBRARY
from server_stub.epub import UnsafeXmlError, read_epub
from server_stub.safe_xml import MalformedXml, UnsafeXml, parse_xml
from server_stub.store import Store
from tests.stub.untrusted import (
    BILLION_LAUGHS,
    PARAMETER_XXE,
    TARGETS,
    XXE,
    hostile_epub,
)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_an_external_entity_refuses_the_book_naming_file_and_entity(
    tmp_path: Path, target: str
) -> None:
    path = hostile_epub(tmp_path, target, XXE, "&xxe;")
    with pytest.raises(UnsafeXmlError) as refused:
        read_epub(path)
    _, member, _ = TARGETS[target]
    assert refused.value.path == path
    assert refused.value.member == member
    assert "'xxe'" in refused.value.reason
    assert str(refused.value).startswith(f"{path}: {member} is refused: ")
    assert "root:" not in str(refused.value)  # /etc/passwd was never read into anything


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_billion_laughs_is_refused_before_any_expansion(tmp_path: Path, target: str) -> None:
    path = hostile_epub(tmp_path, target, BILLION_LAUGHS, "&lol9;")
    with pytest.raises(UnsafeXmlError, match="declares the XML entity 'lol'"):
        read_epub(path)


def test_a_parameter_entity_reaching_for_an_external_dtd_is_refused(tmp_path: Path) -> None:
    path = hostile_epub(tmp_path, "ncx", PARAMETER_XXE, None)
    with pytest.raises(UnsafeXmlError, match="parameter entity 'remote'"):
        read_epub(path)


def test_a_doctype_naming_the_ncx_dtd_is_still_read(tmp_path: Path) -> None:
    """NCX files carry the DAISY DOCTYPE; it is not loaded, and the book reads as before."""
    doctype = (
        '<!DOCTYPE ncx PUBLIC "-//NISO//DTD ncx 2005-1//EN"'
        ' "http://www.daisy.org/z3986/2005/ncx-2005-1.dtd">'
    )
    path = hostile_epub(tmp_path, "ncx", doctype, None)
    original = read_epub(SAMPLE_LIBRARY / "cwa_christmas_carol.epub")
    assert read_epub(path).toc == original.toc
    assert original.toc


def test_hostile_books_are_refused_on_import_with_a_log_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An NCX with an external entity was the bug: skipped as 'broken', the book imported with an
    empty table of contents and no word in the log. Beside it, a billion laughs in a package
    document; the good book beside them imports."""
    library = tmp_path / "library"
    library.mkdir()
    xxe = hostile_epub(library, "ncx", XXE, "&xxe;")
    laughs = hostile_epub(library, "opf", BILLION_LAUGHS, "&lol9;")
    shutil.copy(SAMPLE_LIBRARY / "se_h-g-wells_the-time-machine.epub", library)
    caplog.set_level(logging.WARNING, logger="server_stub.catalog")
    store = Store.open(tmp_path / "data")
    try:
        report = import_library(store, library, settings=PackagingSettings(level=1))
        titles = [b.title for b in store.catalog()]
    finally:
        store.close()
    refused = dict(report.refused)
    assert sorted(refused) == sorted([xxe, laughs])
    assert "OEBPS/toc.ncx is refused: it declares the XML entity 'xxe'" in refused[xxe]
    assert "OPS/package.opf is refused: it declares the XML entity 'lol'" in refused[laughs]
    assert [b.path.name for b in report.imported] == ["se_h-g-wells_the-time-machine.epub"]
    assert titles == ["The Time Machine"]  # the hostile books are not in the catalog at all
    lines = sorted(r.getMessage() for r in caplog.records if "epub_refused" in r.getMessage())
    assert len(lines) == 2  # sorted by file name: the NCX's book first
    for needle in (xxe.name, "OEBPS/toc.ncx", "'xxe'"):
        assert needle in lines[0]
    for needle in (laughs.name, "OPS/package.opf", "'lol'"):
        assert needle in lines[1]


def test_a_broken_but_harmless_ncx_is_skipped_with_a_log_line_rather_than_refusing_the_book(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading systems skip a table of contents they cannot read; only entities refuse."""
    library = tmp_path / "library"
    library.mkdir()
    path = hostile_epub(library, "ncx", "", "&nbsp;")  # an entity no DTD here defines
    epub = read_epub(path)
    assert epub.toc == ()
    [problem] = epub.toc_problems
    assert problem.startswith("OEBPS/toc.ncx is not well-formed XML (undefined entity: line ")
    caplog.set_level(logging.WARNING, logger="server_stub.catalog")
    store = Store.open(tmp_path / "data")
    try:
        report = import_library(store, library, settings=PackagingSettings(level=1))
    finally:
        store.close()
    assert [b.path for b in report.imported] == [path]
    lines = [r.getMessage() for r in caplog.records if "epub_toc_skipped" in r.getMessage()]
    assert len(lines) == 1
    assert path.name in lines[0]
    assert "OEBPS/toc.ncx" in lines[0]


@pytest.mark.parametrize(
    ("document", "error", "message"),
    [
        (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY e "x">]><p>&e;</p>', UnsafeXml, "'e'"),
        (b'<!DOCTYPE p [<!ENTITY e SYSTEM "http://127.0.0.1:9/">]><p/>', UnsafeXml, "'e'"),
        (b'<!DOCTYPE p [<!ENTITY e SYSTEM "x" NDATA gif>]><p/>', UnsafeXml, "'e'"),
        (b"<p>&undefined;</p>", MalformedXml, "undefined entity"),
        (b"<p><", MalformedXml, "line 1"),
    ],
)
def test_the_safe_parser_refuses_every_entity_form(
    document: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        parse_xml(document)


def test_the_safe_parser_reads_what_elementtree_reads() -> None:
    root = parse_xml(
        '<?xml version="1.0" encoding="utf-16"?>'
        '<a xmlns="urn:x" xml:lang="fr"><b c="1">d&amp;&#233;<!-- e --></b></a>'.encode("utf-16")
    )
    assert root.tag == "{urn:x}a"
    assert root.attrib == {"{http://www.w3.org/XML/1998/namespace}lang": "fr"}
    assert [(e.tag, e.attrib, e.text) for e in root] == [("{urn:x}b", {"c": "1"}, "d&é")]
